"""Export from the page: a fine-tune run (Fine-tune tab) or a chat model (Models tab) as GGUF with an Ollama
Modelfile, or a run's adapter as a GGUF LoRA file; then *Try the export in Chat*.

The export runs as a child process (`python -m studio.export ... --progress-lines --json`): the merged weights
and llama.cpp's quantizer live and die there, a crash in them leaves the studio serving, and Stop interrupts it
(the child removes its half-written file). Its `progress STAGE FRACTION` lines drive the page's progress bar.
No torch here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from studio.context import AppContext
from studio.errors import InputError, StudioError
from studio.export.request import FORMAT_LABELS, QUANTIZED, ExportResult
from studio.text import fmt_bytes
from studio.ui import messages as msg
from studio.ui.session import session_key

MERGED = "merged"  # the Fine-tune tab's extra format: a full safetensors folder (RunManager.merge)
STAGES = {"merge": "Merging the adapter into the base", "convert": "Converting to GGUF", "quantize": "Quantizing"}
PROBE = "What is the capital of France?"  # what Try the export in Chat asks a model that was not fine-tuned
STOP_GRACE_S = 20.0  # after Stop: how long the child may take to remove its partial file before it is killed


def format_choices(for_run: bool) -> list[tuple[str, str]]:
    """The picker: (label, value); a quantization this llama.cpp build does not offer says so in its label."""
    from studio.export import offered

    choices = [("Merged safetensors (a full model folder)", MERGED)] if for_run else []
    for fmt in ("f16", "q8_0", "q4_k_m", "q5_k_m"):
        reason = offered(fmt) if fmt in QUANTIZED else ""
        label = f"GGUF {FORMAT_LABELS[fmt]}" + (f" — not offered: {reason}" if reason else "")
        choices.append((label, fmt))
    if for_run:
        choices.append(("GGUF LoRA (the adapter alone, for llama.cpp --lora)", "lora"))
    return choices


def result_text(result: ExportResult) -> str:
    """What the page shows after an export: the file, the sizes before and after, the Modelfile and the import."""
    took = time.strftime("%M:%S", time.gmtime(result.seconds))
    lines = [
        f"**Exported** `{result.path}`: {fmt_bytes(result.bytes)} from {fmt_bytes(result.source_bytes)} "
        f"({result.ratio:.2f}× the size) in {took}.",
    ]
    if result.modelfile is not None:
        lines += [
            f"Ollama Modelfile beside it: `{result.modelfile}`. Import it into Ollama with:",
            f"```\n{result.ollama_command}\n```",
            "LM Studio and llama.cpp open the `.gguf` file as it is.",
        ]
    else:
        lines.append(f"Attach it to the base model's GGUF in llama.cpp: `llama-cli -m BASE.gguf --lora {result.path}`")
    lines += [f"Note: {w}" for w in result.warnings]
    return "\n\n".join(lines)


def exported_models(ctx: AppContext) -> list[tuple[str, str]]:
    """Whole-model GGUF exports (a `.gguf` with its Modelfile beside it; a GGUF LoRA file has none), newest first:
    DATA_DIR/outputs/exports/ and every run's export/ folder. The Chat picker offers them."""
    found: list[Path] = []
    for folder in (ctx.paths.outputs / "exports", *sorted(ctx.training.root.glob("*/export"))):
        if folder.is_dir():
            found += [p for p in folder.glob("*.gguf") if p.with_suffix(".Modelfile").is_file()]
    found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [(f"{p.name} (export of {_where(ctx, p)})", str(p)) for p in found]


def _where(ctx: AppContext, path: Path) -> str:
    return path.parent.parent.name if path.parent.name == "export" else "a model"


# ----- the child process ----------------------------------------------------------------------------------------


@dataclass
class _Child:
    proc: subprocess.Popen
    stopped: bool = False


class ExportRunner:
    """Runs one export at a time per browser session, as a child process; Stop interrupts it."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self._children: dict[str, _Child] = {}
        self._lock = threading.Lock()

    def command(self, source: str, fmt: str) -> list[str]:
        data_dir = str(self.ctx.config.data_dir)
        return [sys.executable, "-m", "studio.export", source, "--to", fmt, "--data-dir", data_dir, "--quiet"] + [
            "--progress-lines",
            "--json",
        ]

    def run(self, session: str, source: str, fmt: str, progress: Callable[[str, float], None]) -> ExportResult:
        """The export's result; its progress as (stage, fraction) calls; a failure as the child's one-line error."""
        with self._lock:
            if session in self._children:
                raise InputError(msg.EXPORT_RUNNING)
            env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
            proc = subprocess.Popen(
                self.command(source, fmt),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                encoding="utf-8",
                errors="replace",
                env=env,
                cwd=str(Path(__file__).resolve().parents[2]),
            )
            child = self._children[session] = _Child(proc)
        out: list[str] = []
        reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)  # never blocks the child
        reader.start()
        errors: list[str] = []
        try:
            for line in proc.stderr:
                line = line.rstrip("\n")
                if line.startswith("progress "):
                    _, stage, fraction = line.split(" ", 2)
                    progress(stage, float(fraction))
                elif line.startswith("error: "):
                    errors.append(line.removeprefix("error: "))
            code = proc.wait()
            reader.join(timeout=10)
        finally:
            with self._lock:
                self._children.pop(session, None)
            if proc.poll() is None:
                proc.kill()
        if child.stopped:
            raise InputError(msg.EXPORT_STOPPED)
        if code != 0:
            if errors:  # the child's own one-line message, made for the user
                raise StudioError(errors[-1])
            raise StudioError(f"The export process ended with exit code {code}; see the studio's console.")
        for line in reversed(out):
            if line.startswith("{"):
                return ExportResult.from_json(json.loads(line))
        raise StudioError("The export process wrote no result; see the studio's console.")

    def stop(self, session: str) -> bool:
        """Interrupt this session's export (the child removes its partial file); False when none runs."""
        with self._lock:
            child = self._children.get(session)
        if child is None:
            return False
        child.stopped = True
        child.proc.send_signal(signal.SIGINT)
        threading.Thread(target=self._reap, args=(child.proc,), daemon=True).start()
        return True

    @staticmethod
    def _reap(proc: subprocess.Popen) -> None:
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()  # a partial file it leaves is removed by the next export into that folder


# ----- the handlers ---------------------------------------------------------------------------------------------


class ExportPanel:
    """The handlers of one export panel; `source_of(value)` turns the panel's source widget into what
    `python -m studio.export` takes (a run folder, a model folder, a Hub id, or `starter`)."""

    def __init__(
        self, ctx: AppContext, runner: ExportRunner, source_of: Callable[[str | None], str], for_run: bool
    ) -> None:
        self.ctx, self.runner, self.source_of, self.for_run = ctx, runner, source_of, for_run

    def export(
        self,
        source: str | None,
        to: str | None,
        request: gr.Request = None,
        progress=gr.Progress(),  # noqa: B008 - Gradio's way of asking for the progress bar
    ) -> Iterator:
        """Generator: (result Markdown, the exported model's path, the Try button). `source` is the panel's source
        widget's value (a run name, or a chat model), `to` the format (API names: /ft_export, /models_export). Owner
        only."""
        from studio.security import require_owner

        require_owner(self.ctx.security, request, "export models")
        fmt = (to or "").strip()
        if fmt == MERGED:  # the Fine-tune tab's: any architecture transformers loads, no GGUF checks
            yield from self._merge(source, progress)
            return
        source = self.source_of(source)
        if fmt not in FORMAT_LABELS:
            raise InputError(msg.EXPORT_PICK_FORMAT)
        if fmt in QUANTIZED:
            from studio.export.quantize import check_offered

            check_offered(fmt)

        def report(stage: str, fraction: float) -> None:
            if progress is not None:
                progress(fraction, desc=STAGES.get(stage, stage))

        yield msg.EXPORT_STARTED.format(format=FORMAT_LABELS[fmt]), gr.skip(), gr.Button(visible=False)
        result = self.runner.run(session_key(request), source, fmt, report)
        model = str(result.path) if result.modelfile is not None else ""
        yield result_text(result), model, gr.Button(visible=bool(model))

    def _merge(self, name: str | None, progress: Any) -> Iterator:
        if not (name or "").strip():
            raise InputError(msg.PICK_RUN)
        run = self.ctx.training.get(name)
        if progress is not None:
            progress(0, desc="Merging the adapter into the base model")
        t0 = time.perf_counter()
        out = self.ctx.training.merge(run)
        took = time.perf_counter() - t0
        yield msg.EXPORT_MERGED.format(seconds=took, path=out), gr.skip(), gr.Button(visible=False)

    def stop(self, request: gr.Request = None) -> str:
        return msg.EXPORT_STOPPING if self.runner.stop(session_key(request)) else msg.EXPORT_NOTHING_TO_STOP

    def try_in_chat(self, path: str | None, value: str | None, request: gr.Request = None) -> tuple:
        """Outputs: the Chat picker (with the export in it, chosen), its precision (auto: llama.cpp), the Chat
        input (a question from the run's own data, or the probe), the tabs (Chat), this panel's line."""
        from studio.security import require_owner
        from studio.ui.chat_tab import model_choices

        require_owner(self.ctx.security, request, "load models by path")
        if not path or not Path(path).is_file():
            raise InputError(msg.EXPORT_NOTHING_TO_TRY)
        question = self.question(value)
        return (
            gr.Dropdown(choices=model_choices(self.ctx), value=path),
            "auto",
            question,
            gr.Tabs(selected="chat"),
            msg.EXPORT_TRYING.format(name=Path(path).name),
        )

    def question(self, value: str | None) -> str:
        """The first user message the run was trained on (the fine-tune should show in the answer), else PROBE."""
        if not self.for_run:
            return PROBE
        try:
            run = self.ctx.training.get(value)
        except StudioError:
            return PROBE
        from studio.training.datasets import read_jsonl

        for data in (run.eval_file, run.train_file):
            try:
                rows = read_jsonl(data) if data.is_file() else []
            except (OSError, ValueError):
                continue
            for row in rows:
                for m in row.get("messages") or []:
                    if m.get("role") == "user" and str(m.get("content") or "").strip():
                        return str(m["content"])
        return PROBE


def layout(w: dict[str, Any], prefix: str, for_run: bool) -> None:
    """The panel's widgets into `w` (names `export_*`), element ids `{prefix}-export-*`."""
    choices = format_choices(for_run)
    default = "q8_0" if any(v == "q8_0" and "not offered" not in label for label, v in choices) else "f16"
    with gr.Row():
        w["export_format"] = gr.Dropdown(
            choices=choices, value=default, label="Export as", elem_id=f"{prefix}-export-format", scale=3
        )
        w["export"] = gr.Button("Export", elem_id=f"{prefix}-export", scale=1)
        w["export_stop"] = gr.Button("Stop export", elem_id=f"{prefix}-export-stop", scale=1)
    w["export_result"] = gr.Markdown(elem_id=f"{prefix}-export-result")
    w["export_try"] = gr.Button("Try the export in Chat", visible=False, elem_id=f"{prefix}-export-try")
    w["export_path"] = gr.State("")


def _failed(panel: Any, last: Any, text: str, line: str) -> tuple:
    """The page after a failed export: the reason where the result would be (and as a toast)."""
    return msg.EXPORT_FAILED.format(error=text), gr.skip(), gr.Button(visible=False)


def wire(panel: ExportPanel, w: dict[str, Any], source: Any, api_prefix: str) -> None:
    """The panel's own events (Try the export in Chat is wired by `connect_chat`, which sees the Chat tab)."""
    export = msg.user_errors(panel.export, final=_failed)
    outputs = [w["export_result"], w["export_path"], w["export_try"]]
    w["export"].click(
        export,
        [source, w["export_format"]],
        outputs,
        api_name=f"{api_prefix}_export",
        concurrency_id="export",
        concurrency_limit=1,
        show_progress_on=[w["export_result"]],
    )
    stop = msg.user_errors(panel.stop)
    w["export_stop"].click(
        stop,
        None,
        [w["export_result"]],
        api_name=f"{api_prefix}_export_stop",
        concurrency_id="ui",
        show_progress="hidden",
    )


def connect_chat(panel: ExportPanel, w: dict[str, Any], source: Any, chat: dict[str, Any], tabs: Any) -> None:
    """Try the export in Chat: pick the export in the Chat tab, open it, and ask the question there."""
    ask, reply = chat["ask"], chat["reply"]
    w["export_try"].click(
        msg.user_errors(panel.try_in_chat),
        [w["export_path"], source],
        [chat["model"], chat["precision"], chat["input"], tabs, w["export_result"]],
        api_visibility="private",
        concurrency_id="ui",
        show_progress="hidden",
    ).success(**ask, api_visibility="private").success(**reply, api_visibility="private")
