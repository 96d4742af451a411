"""Preference datasets: detect, validate row by row and normalise the shapes TRL documents.

Shapes (column names are matched case-insensitively):

- `preference`: `prompt` / `chosen` / `rejected`, each plain text or a conversational message list (a prompt may
  hold several turns); or `chosen` / `rejected` alone as full conversations sharing a prefix (Anthropic HH style:
  message lists, or HH text "\\n\\nHuman: ...\\n\\nAssistant: ..."), whose shared prefix becomes the prompt.
- `kto`: `prompt` / `completion` / `label` (the label a boolean, or the text true / false).

Every row ends as TRL's conversational form (the shared contract of preference tuning):

    pairs:    {"prompt": [{"role", "content"}, ..., {"role": "user", ...}],
               "chosen": [{"role": "assistant", ...}], "rejected": [{"role": "assistant", ...}]}
    unpaired: {"prompt": [...], "completion": [{"role": "assistant", ...}], "label": bool}

Other keys (the vote files' "meta") are dropped. No torch here.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studio.errors import InputError

if TYPE_CHECKING:
    from studio.training.datasets import ColumnMap, Dataset, Table

PAIR_SHAPE, KTO_SHAPE = "preference", "kto"
PREFERENCE_SHAPES = (PAIR_SHAPE, KTO_SHAPE)
PROMPT_NAMES = ("prompt", "question", "instruction", "query")
CHOSEN_NAMES = ("chosen", "chosen_response", "accepted")
REJECTED_NAMES = ("rejected", "rejected_response")
COMPLETION_NAMES = ("completion", "response", "output", "answer")
LABEL_NAMES = ("label", "desirable", "is_good")
ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}
HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")  # Anthropic HH's "\n\nHuman: ...\n\nAssistant: ..."
PAIR_TIP = "Fix the row, or tick 'Skip bad rows' to train without it."
LABEL_TIP = "A KTO label says whether the completion is good: true or false (JSON booleans, or the text true/false)."
SPLIT_TIP = (
    "Without a prompt column, 'chosen' and 'rejected' must be the same conversation up to their last reply "
    "(message lists, or HH text '\\n\\nHuman: ...\\n\\nAssistant: ...'); or add a 'prompt' column."
)
OBJECTIVE_LABELS = {"sft": "SFT", "dpo": "DPO", "orpo": "ORPO", "kto": "KTO"}


def _error(message: str, tip: str = PAIR_TIP, skippable: bool = True) -> Exception:
    from studio.training.datasets import DatasetError

    return DatasetError(message, tip, skippable=skippable)


def _pick(columns: list[str], names: tuple[str, ...]) -> str:
    lower = {c.lower(): c for c in columns}
    return next((lower[n] for n in names if n in lower), "")


# ----- detection ------------------------------------------------------------------------------------------------


def detect(table: Table) -> ColumnMap | None:
    """The preference shape of a table from its column names, None when it is not preference data. A file with
    'chosen' but no 'rejected' (or the other way round) is an error naming the missing column."""
    from studio.training.datasets import ColumnMap, DatasetError

    columns = table.columns
    chosen, rejected = _pick(columns, CHOSEN_NAMES), _pick(columns, REJECTED_NAMES)
    if chosen or rejected:
        if not (chosen and rejected):
            have, missing = ("chosen", "rejected") if chosen else ("rejected", "chosen")
            raise DatasetError(
                f"{table.name} has a '{chosen or rejected}' column but no '{missing}' column "
                f"(columns: {', '.join(columns)}).",
                f"Preference pairs need both a 'chosen' and a 'rejected' reply per row (and a 'prompt', unless "
                f"the {have} replies are whole conversations).",
            )
        return ColumnMap(PAIR_SHAPE, prompt=_pick(columns, PROMPT_NAMES), chosen=chosen, rejected=rejected)
    label, completion = _pick(columns, LABEL_NAMES), _pick(columns, COMPLETION_NAMES)
    if label and completion:
        prompt = _pick(columns, PROMPT_NAMES)
        if not prompt:
            raise DatasetError(
                f"{table.name} has '{completion}' and '{label}' columns (KTO) but no 'prompt' column.",
                "KTO rows need a prompt, the completion, and a label saying whether the completion is good.",
            )
        return ColumnMap(KTO_SHAPE, prompt=prompt, completion=completion, label=label)
    return None


# ----- one row --------------------------------------------------------------------------------------------------


def _blank(value: Any) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, list) and not value


def _as_list(value: Any) -> Any:
    """A CSV cell or parquet string holding a JSON list of turns is that list; any other text stays text."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            return value
        if isinstance(parsed, list) and parsed and all(isinstance(t, dict) for t in parsed):
            return parsed
    return value


def _turns(value: list, column: str, where: str) -> list[dict[str, str]]:
    """A message list (openai role/content, or sharegpt from/value) as role/content turns."""
    out = []
    for index, turn in enumerate(value, 1):
        if not isinstance(turn, dict):
            raise _error(f"{where}: '{column}' turn {index} is {type(turn).__name__}, not a message object.")
        role = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        if role is None or content is None:
            raise _error(f"{where}: '{column}' turn {index} needs 'role' and 'content'.")
        mapped = ROLES.get(str(role).lower())
        if mapped is None:
            raise _error(f"{where}: '{column}' turn {index} has role '{role}' (expected system, user or assistant).")
        if isinstance(content, list):  # openai content parts
            texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type", "text") == "text"]
            content = "".join(t for t in texts if isinstance(t, str))
        if not isinstance(content, str):
            raise _error(f"{where}: '{column}' turn {index} has no text content.")
        out.append({"role": mapped, "content": content})
    return out


def hh_turns(text: str, prompt: bool = False) -> list[dict[str, str]] | None:
    """Anthropic HH text as turns ("\\n\\nHuman: ...\\n\\nAssistant: ..."), None when it has no such markers.
    Text before the first marker is a system turn; for a `prompt`, a trailing empty "Assistant:" is dropped."""
    parts = HH_TURN.split(text.strip("\n"))
    if len(parts) < 3:
        return None
    turns = [{"role": "system", "content": parts[0].strip()}] if parts[0].strip() else []
    for speaker, content in zip(parts[1::2], parts[2::2], strict=True):
        turns.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    if prompt and turns and turns[-1]["role"] == "assistant" and not turns[-1]["content"]:
        turns.pop()
    return turns


def _prompt(value: Any, column: str, where: str) -> list[dict[str, str]]:
    value = _as_list(value)
    if _blank(value):
        raise _error(f"{where} has an empty '{column}' (the prompt).")
    if isinstance(value, list):
        turns = _turns(value, column, where)
    elif isinstance(value, str):
        turns = hh_turns(value, prompt=True) or [{"role": "user", "content": value.strip()}]
    else:
        raise _error(f"{where}: '{column}' must be text or a list of messages, not {type(value).__name__}.")
    if turns[-1]["role"] != "user":
        raise _error(
            f"{where}: the prompt in '{column}' ends with a {turns[-1]['role']} turn; it must end with the user's.",
            "The reply to learn goes in the completion columns, not in the prompt.",
        )
    return turns


def _reply(value: Any, column: str, where: str) -> str:
    """One assistant reply: text, or a message list holding one assistant turn."""
    value = _as_list(value)
    if _blank(value):
        raise _error(f"{where} has an empty '{column}' reply: there is nothing to learn from it.")
    if isinstance(value, list):
        turns = _turns(value, column, where)
        if len(turns) != 1 or turns[0]["role"] != "assistant":
            raise _error(
                f"{where}: '{column}' must be one assistant reply; it has {len(turns)} turns "
                f"({', '.join(t['role'] for t in turns) or 'none'}).",
                "Put the conversation before the reply in the prompt column.",
            )
        value = turns[0]["content"]
    elif not isinstance(value, str):
        raise _error(f"{where}: '{column}' must be text or a list of messages, not {type(value).__name__}.")
    text = value.strip()
    if not text:
        raise _error(f"{where} has an empty '{column}' reply: there is nothing to learn from it.")
    return text


def _conversation(value: Any, column: str, where: str) -> list[dict[str, str]]:
    """A whole conversation (HH style, no prompt column): a message list or HH text."""
    value = _as_list(value)
    if isinstance(value, list):
        return _turns(value, column, where)
    if isinstance(value, str):
        turns = hh_turns(value)
        if turns is not None:
            return turns
    raise _error(f"{where}: '{column}' is not a conversation.", SPLIT_TIP)


def _split_shared(row: dict, mapping: ColumnMap, where: str) -> tuple[list[dict], str, str]:
    """(prompt, chosen, rejected) from two full conversations: their shared prefix is the prompt."""
    chosen = _conversation(row.get(mapping.chosen), mapping.chosen, where)
    rejected = _conversation(row.get(mapping.rejected), mapping.rejected, where)
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == len(chosen) == len(rejected):
        raise _error(f"{where}: 'chosen' and 'rejected' are the same conversation; a pair must differ to teach.")
    rest_c, rest_r = chosen[shared:], rejected[shared:]
    for rest, column in ((rest_c, mapping.chosen), (rest_r, mapping.rejected)):
        if len(rest) != 1 or rest[0]["role"] != "assistant":
            raise _error(
                f"{where}: '{mapping.chosen}' and '{mapping.rejected}' differ from turn {shared + 1} on, "
                f"and '{column}' has {len(rest)} turns there, not one assistant reply.",
                SPLIT_TIP,
            )
    prompt = chosen[:shared]
    if not prompt or prompt[-1]["role"] != "user":
        raise _error(f"{where}: the conversations share no prompt ending with a user turn.", SPLIT_TIP)
    for rest, column in ((rest_c, mapping.chosen), (rest_r, mapping.rejected)):
        if not rest[0]["content"].strip():
            raise _error(f"{where} has an empty '{column}' reply: there is nothing to learn from it.")
    return prompt, rest_c[0]["content"].strip(), rest_r[0]["content"].strip()


def label_value(value: Any, column: str, where: str) -> bool:
    """A KTO label: a boolean, or the text true / false (any case). Anything else names the row."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    shown = json.dumps(value, default=str)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    raise _error(f"{where}: '{column}' must be true or false, not {shown}.", LABEL_TIP)


def shape_row(row: dict[str, Any], mapping: ColumnMap, where: str) -> dict[str, Any] | None:
    """One row of a preference shape in the shared contract's form, or None when it holds nothing."""
    assistant = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    if mapping.shape == KTO_SHAPE:
        if all(_blank(row.get(c)) for c in (mapping.prompt, mapping.completion)):
            return None
        prompt = _prompt(row.get(mapping.prompt), mapping.prompt, where)
        completion = _reply(row.get(mapping.completion), mapping.completion, where)
        label = label_value(row.get(mapping.label), mapping.label, where)
        return {"prompt": prompt, "completion": assistant(completion), "label": label}
    columns = [c for c in (mapping.prompt, mapping.chosen, mapping.rejected) if c]
    if all(_blank(row.get(c)) for c in columns):
        return None
    if mapping.prompt:
        prompt = _prompt(row.get(mapping.prompt), mapping.prompt, where)
        chosen = _reply(row.get(mapping.chosen), mapping.chosen, where)
        rejected = _reply(row.get(mapping.rejected), mapping.rejected, where)
    else:
        prompt, chosen, rejected = _split_shared(row, mapping, where)
    if chosen == rejected:
        raise _error(
            f"{where}: '{mapping.chosen}' and '{mapping.rejected}' are the same reply; a pair must differ to teach "
            "a preference."
        )
    return {"prompt": prompt, "chosen": assistant(chosen), "rejected": assistant(rejected)}


# ----- what a dataset is for ------------------------------------------------------------------------------------


def kind(samples: list[dict]) -> str:
    """'pairs', 'unpaired' (KTO) or 'sft', from the first normalised sample."""
    first = samples[0] if samples else {}
    if "chosen" in first:
        return "pairs"
    if "completion" in first:
        return "unpaired"
    return "sft"


def unpair(samples: list[dict]) -> list[dict]:
    """Pairs as KTO rows, as TRL does: the chosen reply labelled true, the rejected one false."""
    out = []
    for s in samples:
        out.append({"prompt": s["prompt"], "completion": s["chosen"], "label": True})
        out.append({"prompt": s["prompt"], "completion": s["rejected"], "label": False})
    return out


def objective_problem(samples: list[dict], objective: str, name: str) -> str:
    """Why a dataset cannot train with an objective ('' when it can), saying which objective or data to pick."""
    have = kind(samples)
    label = OBJECTIVE_LABELS.get(objective, objective)
    if objective == "sft" and have == "pairs":
        return (
            f"{name} holds preference pairs (prompt, chosen, rejected): pick the DPO, ORPO or KTO objective to "
            "train on them, or drop an SFT dataset (text, instruction/output or chat messages)."
        )
    if objective == "sft" and have == "unpaired":
        return (
            f"{name} holds rated completions (prompt, completion, label): pick the KTO objective to train on them, "
            "or drop an SFT dataset (text, instruction/output or chat messages)."
        )
    if objective in ("dpo", "orpo") and have == "unpaired":
        return (
            f"{name} holds single rated completions (prompt, completion, label), not pairs: {label} needs a "
            "chosen and a rejected reply per prompt. Pick the KTO objective, or drop a file of pairs."
        )
    if objective != "sft" and have == "sft":
        need = "prompt, completion and label (true/false)" if objective == "kto" else "prompt, chosen and rejected"
        return (
            f"{name} holds SFT samples (one answer per prompt): {label} learns from preferences and needs columns "
            f"{need}. Pick the SFT objective, or drop a preference dataset."
        )
    return ""


def for_objective(dataset: Dataset, objective: str) -> Dataset:
    """The dataset as `objective` trains on it: pairs are unpaired for KTO; a mismatch is a DatasetError saying
    which objective or data to pick."""
    from studio.training.datasets import DatasetError

    problem = objective_problem(dataset.samples, objective, dataset.name)
    if problem:
        raise DatasetError(problem)
    if objective == "kto" and kind(dataset.samples) == "pairs":
        return replace(dataset, samples=unpair(dataset.samples), mapping=replace(dataset.mapping, shape=KTO_SHAPE))
    return dataset


# ----- the collected vote files ---------------------------------------------------------------------------------


def collected(folder: Path) -> list[tuple[str, str]]:
    """(label, file name) for each vote file in `folder` (data_dir/preferences/*.jsonl), with its row count:
    "chat-votes.jsonl — 12 pairs"."""
    out = []
    for path in sorted(Path(folder).glob("*.jsonl")) if Path(folder).is_dir() else []:
        pairs = rated = 0
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(row, dict) and "chosen" in row:
                        pairs += 1
                    elif isinstance(row, dict) and "completion" in row:
                        rated += 1
        except (OSError, UnicodeDecodeError):
            continue
        counts = [f"{pairs} pair{'s' * (pairs != 1)}"] if pairs or not rated else []
        counts += [f"{rated} rated repl{'ies' if rated != 1 else 'y'}"] if rated else []
        out.append((f"{path.name} — {', '.join(counts)}", path.name))
    return out


def vote_file(folder: Path, name: str) -> Path:
    """The vote file `name` in `folder`; InputError for anything that is not one of its files."""
    name = (name or "").strip()
    path = Path(folder) / name
    if not name or "/" in name or "\\" in name or name.startswith(".") or not path.is_file():
        raise InputError(f"No collected vote file named {name!r}.", "Pick one from the list of collected votes.")
    return path
