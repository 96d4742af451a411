"""python -m studio.export SOURCE --to FORMAT [--out DIR] [--name NAME] [--data-dir DIR] [--quiet] [--progress-lines]
                         [--json]

SOURCE is a fine-tune run folder (its adapter is merged into its base), a transformers model folder (or a Hub id
already downloaded), or the word `starter`. FORMAT is f16, q8_0, q4_k_m, q5_k_m, or lora (the run's adapter alone,
as a llama.cpp GGUF LoRA file). Progress goes to stderr; the last line on stdout is the path of the file written.
A bad input exits 1 with one `error: ...` line. With --json, what was written is one JSON line before the path.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from studio.errors import StudioError
from studio.export.request import FORMATS


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 1, as for every other bad input
        self.exit(1, f"error: {message} (python -m studio.export --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m studio.export",
        description="Export a chat model (a fine-tune run, a model folder, the starter) as GGUF for llama.cpp, "
        "Ollama and LM Studio, with an Ollama Modelfile beside it.",
    )
    p.add_argument("source", metavar="SOURCE", help="a run folder, a model folder, a downloaded Hub id, or starter")
    p.add_argument("--to", dest="format", required=True, metavar="FORMAT", help=" | ".join(FORMATS))
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="folder for the files (default RUN_DIR/export/ or DATA_DIR/outputs/exports/)",
    )
    p.add_argument("--name", default="", help="file name stem (default: the run's or model's name and the format)")
    p.add_argument("--data-dir", metavar="DIR", help="the studio's data folder (default as the studio's settings)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument(
        "--progress-lines",
        action="store_true",
        help="progress as 'progress STAGE FRACTION' lines on stderr, for a program that runs this one",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="what was written (path, sizes, Modelfile, ollama command) as one JSON line, before the path",
    )
    return p


class _Bar:
    """Progress on stderr: a line per stage, updated in place on a terminal, every 10 % otherwise; or with
    `lines`, 'progress STAGE FRACTION' at every whole percent."""

    def __init__(self, quiet: bool, lines: bool = False) -> None:
        self.quiet, self.lines, self.stage, self.shown, self.tty = quiet, lines, "", -1, sys.stderr.isatty()

    def __call__(self, stage: str, fraction: float) -> None:
        if self.lines:
            if (stage, int(fraction * 100)) != (self.stage, self.shown):
                self.stage, self.shown = stage, int(fraction * 100)
                print(f"progress {stage} {fraction:.3f}", file=sys.stderr, flush=True)
            return
        if self.quiet:
            return
        if stage != self.stage:
            if self.stage and self.tty:
                sys.stderr.write("\n")
            self.stage, self.shown = stage, -1
        step = int(fraction * 100) if self.tty else int(fraction * 10) * 10
        if step != self.shown:
            self.shown = step
            end = "\r" if self.tty and step < 100 else "\n"
            sys.stderr.write(f"{stage:>8} {step:3d}%{end}")
            sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quiet:  # the libraries' own progress bars and deprecation notes too (read when they are imported)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        warnings.filterwarnings("ignore", category=FutureWarning)
    from studio.config import load_config
    from studio.export.pipeline import export
    from studio.export.request import ExportRequest
    from studio.text import fmt_bytes

    try:
        config = load_config(["--data-dir", args.data_dir] if args.data_dir else [])
        request = ExportRequest(args.source, args.format, args.out, config.data_dir, args.name)
        result = export(request, progress=_Bar(args.quiet, args.progress_lines))
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: stopped; nothing was left half-written.", file=sys.stderr)
        return 130
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        import json

        print(json.dumps(result.to_json(), ensure_ascii=False))
        print(result.path)
        return 0
    print(
        f"Wrote {result.path.name}: {fmt_bytes(result.bytes)} from {fmt_bytes(result.source_bytes)} "
        f"in {time.strftime('%M:%S', time.gmtime(result.seconds))}."
    )
    if result.modelfile is not None:
        print(f"Ollama Modelfile: {result.modelfile}")
        print(f"Import into Ollama: {result.ollama_command}")
    else:
        print(f"Attach it to the base model's GGUF: llama-cli -m BASE.gguf --lora {result.path}")
    print(result.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
