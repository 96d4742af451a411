"""DPO throughput: the studio's DPO run (the worker, a real run folder) against a bare TRL `DPOTrainer`, same run.

Both sides train the same base with the same LoRA settings (rank, alpha, dropout, targets, through peft), the same
normalised pairs (TRL's conversational prompt/chosen/rejected rows), the same steps, batch, max_length, beta, loss
type, learning rate and schedule, seed and data order, and no reference model (`ref_model=None`: the base with the
adapter off is the reference on both sides):

- studio: `python -m studio.training.worker RUN_DIR` on a run folder with objective "dpo" (PreferenceTrainer: TRL's
  DPOTrainer behind the studio's callback writing status, metrics and the report; its after-training probe is not
  timed);
- bare: `trl.DPOTrainer` with a DPOConfig of the same settings, `report_to=[]`, no eval, no saving, in a process of
  its own.

Each side is timed the same way: the sum of its optimizer steps, from `on_step_begin` to `on_step_end` (step 1
included on both), over the tokens TRL counts (`num_tokens`: chosen + rejected, prompt included). Prints tokens/s and
pairs/s of both, first losses (equal: LoRA starts as the identity, so both begin at log 2 for the sigmoid loss) and
the ratio studio / bare (target >= 0.95). The runs alternate which side goes first.

One DPO step of the starter (batch 2, cutoff 128) takes about 3.5 s on a quiet 2-core CPU (8-52 s on a loaded one),
so the default is 6 steps and 2 runs of each side after one untimed warm-up run (about 5 minutes with the model
loads): on a machine that sat idle the first process was about 30 % slower whichever side it was.

    python bench/finetune.py --method dpo                 # the offline starter (SmolLM2-135M-Instruct)
    python bench/finetune.py --method dpo --tiny          # the tiny random LM: a quick smoke run
    python bench/dpo_trl.py --model PATH --steps 6 --runs 2   # this module alone, any local causal LM folder
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import alternate  # noqa: E402
from studio.training.datasets import load_dataset, write_jsonl  # noqa: E402
from studio.training.job import TrainJob, new_run_dir  # noqa: E402

TARGET = 0.95  # studio / bare tokens/s at or above this: the studio's bridge costs nothing measurable
PAIRS = ROOT / "assets" / "datasets" / "signature-pairs.jsonl"  # the shipped sample: chosen ends with a signature


def make_pairs(n: int = 32) -> list[dict]:
    """`n` normalised pairs from the sample (cycled): the chosen answer ends with a signature phrase, the rejected
    one does not."""
    rows = load_dataset(PAIRS).samples
    return [rows[i % len(rows)] for i in range(n)]


@dataclass
class Side:
    """What one side measured in one run."""

    name: str
    steps: int = 0
    pairs: int = 0  # pairs trained on (steps x batch x grad_accum)
    tokens: int = 0  # TRL's num_tokens at the last step (chosen + rejected, prompts included)
    seconds: float = 0.0  # the sum of the optimizer steps
    losses: list[float] = field(default_factory=list)  # per step

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds else float("nan")

    @property
    def pair_rate(self) -> float:
        return self.pairs / self.seconds if self.seconds else float("nan")


def make_job(model: Path, pairs: list[dict], args: argparse.Namespace) -> TrainJob:
    """The studio job both sides follow (the bare side takes its settings from it)."""
    job = TrainJob(
        base_model=str(model),
        base_label=model.name,
        objective="dpo",
        precision="bf16" if args.device == "cuda" else "fp32",
        device=args.device,
        max_steps=args.steps,
        batch_size=args.batch,
        cutoff_len=args.cutoff,
        learning_rate=args.dpo_lr,
        scheduler="constant",
        warmup_ratio=0.0,
        beta=args.beta,
        loss_type="sigmoid",
        eval_every=0,
        save_every=0,
        seed=0,
        train_rows=len(pairs),
        eval_rows=0,
        offline=True,
    )
    job.check()
    return job


def run_studio(job: TrainJob, pairs: list[dict], workdir: Path) -> Side:
    """The studio's DPO through the worker process on a real run folder, as the Fine-tune tab starts it."""
    run = new_run_dir(workdir, "studio")
    write_jsonl(run.train_file, pairs)
    write_jsonl(run.eval_file, [])
    run.write_job(job)
    done = subprocess.run(
        [sys.executable, "-m", "studio.training.worker", str(run.path)], cwd=ROOT, capture_output=True, text=True
    )
    if done.returncode != 0:
        log = run.log_file.read_text()[-3000:] if run.log_file.exists() else ""
        raise SystemExit(f"the studio's DPO worker failed:\n{done.stderr[-3000:]}\n{log}")
    report = json.loads(run.report_file.read_text())
    losses = [m["loss"] for m in run.metrics() if "loss" in m]
    return Side(
        name="studio",
        steps=int(report["steps"]),
        pairs=int(report["steps"]) * job.batch_size * job.grad_accum,
        tokens=int(report["train_tokens"]),
        seconds=float(report["train_seconds"]),
        losses=losses,
    )


def run_bare(job: TrainJob, pairs: list[dict], workdir: Path) -> Side:
    """A bare TRL DPOTrainer on the same base, LoRA settings, pairs and settings; ref_model=None."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from studio.engines.chat import FALLBACK_TEMPLATE
    from studio.training import rows as rowlib
    from studio.training.lora import load_base, lora_config

    side = Side("bare")
    tokenizer = rowlib.load_tokenizer(job.base_model, offline=True)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_TEMPLATE  # as the studio does for a base without one (the tiny LM)
    base = load_base(job)
    base.config.use_cache = False
    lora = lora_config(job, base)

    class Timed(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            side.seconds += time.perf_counter() - self.t0
            side.steps = state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                side.losses.append(float(logs["loss"]))
                side.tokens = int(logs.get("num_tokens", side.tokens))

    config = DPOConfig(
        output_dir=str(workdir / "bare"),
        learning_rate=job.learning_rate,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=0,
        max_steps=job.max_steps,
        per_device_train_batch_size=job.batch_size,
        gradient_accumulation_steps=job.grad_accum,
        gradient_checkpointing=job.gradient_checkpointing,
        weight_decay=job.weight_decay,
        max_grad_norm=job.max_grad_norm,
        seed=job.seed,
        data_seed=job.seed,
        max_length=job.cutoff_len,
        beta=job.beta,
        loss_type=job.loss_type,
        logging_steps=1,
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=job.device == "cpu",
        bf16=job.device == "cuda" and job.load_precision == "bf16",
        dataloader_num_workers=0,
    )
    torch.manual_seed(job.seed)
    trainer = DPOTrainer(
        model=base,
        ref_model=None,
        args=config,
        train_dataset=Dataset.from_list(pairs),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[Timed()],
    )
    trainer.train()
    side.pairs = side.steps * job.batch_size * job.grad_accum
    return side


SIDES = {"studio": run_studio, "bare": run_bare}


def one_side(name: str, job: TrainJob, pairs: list[dict]) -> Side:
    with tempfile.TemporaryDirectory(prefix=f"bench-dpo-{name}-") as tmp:
        return SIDES[name](job, pairs, Path(tmp))


def in_child(name: str, model: Path, args: argparse.Namespace) -> Side:
    """The bare side in a process of its own, as the studio's worker is (the studio side starts its worker itself)."""
    if name == "studio":
        return one_side(name, make_job(model, load_pairs(args), args), load_pairs(args))
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    try:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--side", name, "--side-out", str(out)]
        cmd += ["--model", str(model)]
        for flag in ("steps", "batch", "cutoff", "dpo_lr", "beta", "device", "data"):
            value = getattr(args, flag)
            if value is not None:
                cmd += [f"--{flag.replace('_', '-')}", str(value)]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the {name} side failed:\n{done.stderr[-4000:]}")
        return Side(**json.loads(out.read_text()))
    finally:
        out.unlink(missing_ok=True)


def load_pairs(args: argparse.Namespace) -> list[dict]:
    if args.data:
        from studio.training.preference import rows_for

        return rows_for("dpo", Path(args.data))
    return make_pairs()


def compare(model: Path, args: argparse.Namespace) -> dict[str, list[Side]]:
    """`args.runs` runs of each side, alternating which side goes first."""
    pairs = load_pairs(args)
    print(
        f"DPO: model {model.name} on {args.device}; {len(pairs)} pairs, batch {args.batch}, max_length "
        f"{args.cutoff}, {args.steps} steps, beta {args.beta}, lr {args.dpo_lr:g}, {args.runs} run(s) of each side; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
        flush=True,
    )
    return alternate(
        ("studio", "bare"),
        args.runs,
        lambda name: in_child(name, model, args),
        lambda side: (
            f"{side.rate:8.1f} tokens/s, {side.pair_rate:6.3f} pairs/s; {side.tokens} tokens, {side.pairs} pairs in "
            f"{side.steps} steps, {side.seconds:.1f} s; first loss {side.losses[0]:.4f}, last {side.losses[-1]:.4f}"
        ),
        warmup=args.warmup,
    )


def report(found: dict[str, list[Side]]) -> float:
    """Print both sides' rates and the ratio studio / bare (the median of the runs' ratios, paired by run)."""
    ratios = [s.rate / b.rate for s, b in zip(found["studio"], found["bare"], strict=True)]
    for name, label in (("studio", "studio DPO"), ("bare", "bare DPOTrainer")):
        sides = found[name]
        print(
            f"{label:16s} {statistics.median(s.rate for s in sides):8.1f} trained tokens/s, "
            f"{statistics.median(s.pair_rate for s in sides):.3f} pairs/s (median of {len(sides)})"
        )
    ratio = statistics.median(ratios)
    print(
        f"ratio studio / bare DPOTrainer: {ratio:.3f} (runs {', '.join(f'{x:.3f}' for x in ratios)}; "
        f"target >= {TARGET}): {'met' if ratio >= TARGET else 'BELOW the target'}"
    )
    return ratio


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=6, help="DPO: optimizer steps per side (default 6)")
    parser.add_argument(
        "--runs", type=int, default=2, help="DPO: runs of each side, alternating which goes first (default 2)"
    )
    parser.add_argument("--batch", type=int, default=2, help="DPO: pairs per step")
    parser.add_argument("--cutoff", type=int, default=128, help="DPO: max_length of prompt + answer")
    parser.add_argument("--beta", type=float, default=0.1, help="DPO: beta")
    parser.add_argument("--dpo-lr", dest="dpo_lr", type=float, default=5e-5, help="DPO: learning rate")
    parser.add_argument(
        "--warmup", type=int, default=1, help="DPO: untimed runs before the timed ones (0: none; default 1)"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="starter", help="starter (default), tiny, or a local causal LM folder")
    parser.add_argument("--data", help="a JSONL of normalised prompt/chosen/rejected pairs (default: made-up pairs)")
    parser.add_argument("--side", choices=tuple(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--side-out", help=argparse.SUPPRESS)
    add_arguments(parser)
    args = parser.parse_args(argv)
    resolve_device(args)
    if args.side:  # a child: one side, one run
        pairs = load_pairs(args)
        side = one_side(args.side, make_job(Path(args.model), pairs, args), pairs)
        Path(args.side_out).write_text(json.dumps(asdict(side)))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-dpo-") as tmp:
        model = pick_model(args.model, Path(tmp))
        found = compare(model, args)
    report(found)
    return 0


def resolve_device(args: argparse.Namespace) -> None:
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"


def pick_model(name: str, tmp: Path) -> Path:
    if name == "tiny":
        from studio.models.tiny import build_tiny_causal_lm

        return build_tiny_causal_lm(tmp / "tiny-lm")
    if name == "starter":
        from studio.models.starter import ensure_starter

        return ensure_starter(ROOT / "studio-data" / "models")
    return Path(name).expanduser().resolve()


if __name__ == "__main__":
    raise SystemExit(main())
