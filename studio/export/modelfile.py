"""The Ollama Modelfile written beside an exported GGUF file, and a reader for it.

    FROM ./model.gguf
    TEMPLATE \"\"\"...\"\"\"        # ChatML and Llama 3 chat templates, in Ollama's Go template language
    SYSTEM \"\"\"...\"\"\"          # the template's built-in default system prompt, when it has one
    PARAMETER stop "<|im_end|>"
    PARAMETER temperature 0.7    # the model's generation_config.json sampling defaults, when it has them

Other chat templates get no TEMPLATE line: Ollama then reads the Jinja template from the GGUF metadata itself.
`ollama create NAME -f PATH` imports it.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

# Ollama's own templates for the two families (its template/chatml.gotmpl and llama3-instruct.gotmpl, as Go
# templates over .Messages; Ollama puts SYSTEM in front of the messages when the user sends no system message).
CHATML = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
LLAMA3 = (
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>\n{{- end }}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
# a literal default system prompt inside a ChatML Jinja template (no expressions in it)
CHATML_SYSTEM = re.compile(r"<\|im_start\|>system\n([^'\"{}<]+?)<\|im_end\|>")
SAMPLING = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "repetition_penalty": "repeat_penalty"}
NAME_CHARS = re.compile(r"[^a-z0-9._-]+")


@dataclass(frozen=True)
class Modelfile:
    """A Modelfile's instructions (what `parse` reads back)."""

    model: str  # FROM: the GGUF file, relative to the Modelfile's folder
    template: str | None = None  # TEMPLATE, a Go template
    system: str | None = None  # SYSTEM
    parameters: tuple[tuple[str, str], ...] = ()  # PARAMETER name value, in order (stop may repeat)
    adapters: tuple[str, ...] = ()  # ADAPTER lines

    @property
    def stops(self) -> list[str]:
        return [value for name, value in self.parameters if name == "stop"]


@dataclass(frozen=True)
class ChatFormat:
    """What the Modelfile needs from the chat template and the tokenizer."""

    template: str | None  # a Go template, or None to let Ollama read the GGUF's
    system: str | None  # a default system prompt
    stops: tuple[str, ...] = field(default_factory=tuple)


def chat_format(chat_template: str | None, special: dict[str, str]) -> ChatFormat:
    """The Ollama template and stop tokens for a Jinja chat template (and the tokenizer's special tokens)."""
    jinja = chat_template or ""
    eos = special.get("eos")
    if "<|im_start|>" in jinja and "<|im_end|>" in jinja:
        found = CHATML_SYSTEM.search(jinja)
        stops = ["<|im_end|>"] + ([eos] if eos and eos not in ("<|im_end|>", "<|im_start|>") else [])
        return ChatFormat(CHATML, found.group(1).strip() if found else None, tuple(stops))
    if "<|start_header_id|>" in jinja and "<|eot_id|>" in jinja:
        return ChatFormat(LLAMA3, None, tuple(dict.fromkeys(["<|eot_id|>", *([eos] if eos else [])])))
    if "<end_of_turn>" in jinja:  # Gemma: Ollama knows the template; the turn's end must stop a reply
        return ChatFormat(None, None, tuple(dict.fromkeys(["<end_of_turn>", *([eos] if eos else [])])))
    return ChatFormat(None, None, tuple(s for s in [special.get("eot"), eos] if s))


def sampling_defaults(model_folder: Path) -> list[tuple[str, str]]:
    """PARAMETER lines from the model's generation_config.json (only the values it sets for sampling)."""
    try:
        config = json.loads((Path(model_folder) / "generation_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(config, dict) or config.get("do_sample") is False:
        return []
    out = []
    for key, name in SAMPLING.items():
        value = config.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append((name, f"{value:g}" if isinstance(value, float) else str(value)))
    return out


def render(gguf_name: str, fmt: ChatFormat, parameters: list[tuple[str, str]] = ()) -> str:
    """The Modelfile text for a GGUF file in the same folder."""
    lines = [f"# Import into Ollama: ollama create NAME -f {gguf_name.rsplit('.', 1)[0]}.Modelfile", ""]
    lines.append(f"FROM ./{gguf_name}")
    if fmt.template is not None:
        lines.append(f'TEMPLATE """{fmt.template}"""')
    else:
        lines.append("# TEMPLATE: Ollama reads the chat template from the GGUF file's metadata.")
    if fmt.system:
        lines.append(f'SYSTEM """{fmt.system}"""')
    for stop in fmt.stops:
        lines.append(f"PARAMETER stop {json.dumps(stop)}")
    for name, value in parameters:
        lines.append(f"PARAMETER {name} {value}")
    return "\n".join(lines) + "\n"


def parse(text: str) -> Modelfile:
    """Read a Modelfile (the instructions this module writes, in Ollama's syntax: triple-quoted or quoted
    values, # comments)."""
    values: dict[str, str] = {}
    parameters: list[tuple[str, str]] = []
    adapters: list[str] = []
    rest = text
    while rest:
        line, _, after = rest.partition("\n")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            rest = after
            continue
        command, _, value = stripped.partition(" ")
        command, value = command.upper(), value.strip()
        if value.startswith('"""'):
            body = rest[rest.index('"""') + 3 :]
            end = body.find('"""')
            if end < 0:
                raise ValueError(f"{command}: a triple-quoted value that never ends")
            value, rest = body[:end], body[end + 3 :].partition("\n")[2]
        else:
            rest = after
        if command == "PARAMETER":
            name, _, raw = value.partition(" ")
            raw = raw.strip()
            parameters.append((name, json.loads(raw) if raw.startswith('"') else raw))
        elif command == "ADAPTER":
            adapters.append(value)
        elif command in ("FROM", "TEMPLATE", "SYSTEM", "LICENSE", "MESSAGE"):
            values[command] = value
        else:
            raise ValueError(f"unknown Modelfile instruction {command!r}")
    if "FROM" not in values:
        raise ValueError("the Modelfile has no FROM line")
    return Modelfile(values["FROM"], values.get("TEMPLATE"), values.get("SYSTEM"), tuple(parameters), tuple(adapters))


def ollama_name(stem: str) -> str:
    """A model name Ollama accepts (lowercase letters, digits, . _ -) from a file stem."""
    return NAME_CHARS.sub("-", stem.lower()).strip("-.") or "model"


def ollama_command(stem: str, modelfile: Path) -> str:
    return f"ollama create {ollama_name(stem)} -f {shlex.quote(str(modelfile))}"
