"""Make a fine-tune run folder from a terminal, as the page's Start does, without starting it.

    python -m studio.training.new DATASET --base starter|MODEL [--runs DIR] [--set key=value ...]
    python -m studio.training.worker RUN_DIR          # then train it

The settings are the page's: a job's defaults with the cutoff, batch and max steps chosen from the dataset
(studio.training.defaults); `--set` overrides any TrainJob field (`--set learning_rate=1e-4 --set packing=false`),
and what it sets is never re-chosen. The run folder's path is the last line printed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from studio.errors import InputError, StudioError
from studio.training import defaults as dflt
from studio.training import rows as rowlib
from studio.training.job import TrainJob

# set by the run folder itself (create), never by --set
NOT_SETTABLE = {"created", "train_rows", "eval_rows", "dataset_name", "dataset_shape"}
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def settable() -> dict[str, str]:
    """TrainJob field name -> its type, as written in the dataclass ('int', 'float', 'bool', 'str', 'tuple...')."""
    return {f.name: str(f.type) for f in fields(TrainJob) if f.name not in NOT_SETTABLE}


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """`key=value` strings -> TrainJob field values of the field's type; InputError naming the bad one."""
    known = settable()
    out: dict[str, Any] = {}
    for item in items:
        key, eq, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not eq or not key:
            raise InputError(f"--set {item!r}: write it as key=value, e.g. --set learning_rate=1e-4.")
        if key not in known:
            raise InputError(f"--set {key}: no such setting.", f"The settings are: {', '.join(sorted(known))}.")
        out[key] = _value(key, known[key], text)
    return out


def _value(key: str, kind: str, text: str) -> Any:
    try:
        if kind == "bool":
            if text.lower() not in TRUE + FALSE:
                raise ValueError
            return text.lower() in TRUE
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        what = {"bool": "true or false", "int": "a whole number", "float": "a number"}[kind]
        raise InputError(f"--set {key}={text}: {key} must be {what}.") from None
    if kind.startswith("tuple"):
        return tuple(t.strip() for t in text.split(",") if t.strip())
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studio.training.new", description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="a .txt, .csv, .tsv, .json, .jsonl or .parquet file")
    parser.add_argument("--base", required=True, help="'starter', a model folder, or a Hugging Face id")
    parser.add_argument("--runs", type=Path, help="where run folders go (default: the studio's runs folder)")
    parser.add_argument("--eval-share", type=float, default=0.1, help="share of rows held out for evaluation")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="a job setting")
    args = parser.parse_args(argv)
    try:
        print(make_run(args.dataset, args.base, args.runs, parse_sets(args.sets), args.eval_share))
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def make_run(dataset_path: Path, base: str, runs: Path | None, sets: dict[str, Any], eval_share: float) -> Path:
    """The run folder, made as the page's Start makes it (not started)."""
    from studio.config import load_config
    from studio.context import build_context
    from studio.training.datasets import load_dataset
    from studio.training.pref_data import for_objective
    from studio.training.runs import RunManager

    if not Path(dataset_path).is_file():
        raise InputError(f"{dataset_path}: no such dataset file.")
    ctx = build_context(load_config([]), start_monitor=False)
    try:
        source, source_type, label, choice = resolve(ctx, base)
        training = ctx.training if runs is None else RunManager(ctx.manager, runs)
        dataset = load_dataset(dataset_path)
        job = TrainJob(
            base_model=source,
            base_label=label,
            base_choice=choice,
            source_type=source_type,
            method="qlora" if ctx.device == "cuda" else "lora",
            precision="bf16" if ctx.device == "cuda" else "fp32",
            device=ctx.device,
            offline=ctx.config.offline,
            train_rows=1,
        )
        job = replace(job, **sets)
        job.check()
        dataset = for_objective(dataset, job.objective)  # preference data needs --set objective=dpo|orpo|kto
        tokenizer = rowlib.load_tokenizer(job.base_model, offline=job.offline)
        derived = dflt.choose(training, job, dataset.samples, tokenizer, eval_share, fixed=sets)
        for reason in derived.reasons.values():
            print(f"chosen from the data: {reason}")
        print(dflt.steps_line(derived.job, derived.data).replace("**", ""))
        run = training.create(derived.job, dataset, eval_share)
        print(training.plan(derived.job).message)
        return run.path
    finally:
        ctx.close()


def resolve(ctx: Any, base: str) -> tuple[str, str, str, str]:
    """(source, source_type, label, the Chat tab's value) for --base: the starter (converted once), a folder or a
    Hub id, as the page resolves its Base model."""
    from studio.models.starter import STARTER_LABEL, STARTER_NAME, ensure_starter

    base = base.strip()
    if base == "starter":
        return str(ensure_starter(ctx.paths.models)), "folder", STARTER_LABEL, "starter:" + STARTER_NAME
    path = Path(base).expanduser()
    if path.is_dir():
        return str(path.resolve()), "folder", path.name, str(path.resolve())
    if not base or base.startswith(("/", "./", "~", "..")):
        raise InputError(f"--base {base}: no such model folder.", "Give 'starter', a model folder or a Hub id.")
    return base, "hub", base, base


if __name__ == "__main__":
    sys.exit(main())
