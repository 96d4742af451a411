"""SFT throughput: the studio's own training loop against TRL's `SFTTrainer`, same run, interleaved repeats.

Both sides train the same base with the same LoRA settings (rank, alpha, dropout, targets, through peft), the same
rows, the same cutoff, the same optimizer (torch AdamW), learning-rate schedule and number of optimizer steps, the
same number of packed blocks per step, at the base's own precision (no autocast), no gradient checkpointing:

- studio: `studio.training.worker.Trainer` — samples packed first-fit into cutoff-length blocks whose position ids
  restart at each sample (no attention across samples, no padding), assistant turns only learned, its per-step
  bookkeeping (metrics line, status file) included;
- TRL: `SFTTrainer` with `packing=True` (best-fit decreasing, which turns on TRL's padding-free, position-id based
  packing), assistant-only loss (single-turn chats as conversational prompt/completion rows with
  `completion_only_loss`; multi-turn ones with `assistant_only_loss`, which needs a template TRL can mark), LoRA
  through `peft_config`, `report_to=[]`, no eval, no saving.

Each run of each side is its own process (so peak memory is its own), alternating which side goes first. Prints
trained tokens/s (real tokens, not padding; from the end of step 1 to the end of the last step, so one-off warm-up
is left out of both), learned (assistant) tokens, first-step losses (equal up to tokenization when both see the same
rows), peak memory of each, and the median ratio TRL / studio (the issue's bar: >= 0.95, else the studio keeps its
loop for SFT).

    python bench/sft_trl.py                                   # the tiny random LM (a quick run)
    python bench/sft_trl.py --model starter --steps 12 --runs 3   # the offline starter (SmolLM2-135M-Instruct)
    python bench/sft_trl.py --model PATH --device cuda --batch 4 --cutoff 1024   # any local causal LM folder
"""

from __future__ import annotations

import argparse
import json
import math
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
from studio.training import rows as rowlib  # noqa: E402
from studio.training.datasets import load_dataset, write_jsonl  # noqa: E402
from studio.training.job import TrainJob, new_run_dir  # noqa: E402
from studio.training.lora import lora_config  # noqa: E402

SAMPLE = ROOT / "assets" / "datasets" / "studio-faq.jsonl"
TARGET = 0.95  # TRL / studio tokens/s below this: the studio keeps its own loop for SFT


@dataclass
class Side:
    """What one side measured in one run."""

    name: str
    tokens: list[int] = field(default_factory=list)  # real (non-padding) tokens per optimizer step
    learned: list[int] = field(default_factory=list)  # of which have a label (the assistant turns)
    losses: list[float] = field(default_factory=list)  # mean loss per learned token, per step
    ends: list[float] = field(default_factory=list)  # perf_counter at the end of each step
    cpu: list[float] = field(default_factory=list)  # process CPU seconds (all threads) at the end of each step
    rss_start: int = 0  # host RSS when training starts (model loaded, data prepared)
    rss_peak: int = 0  # host RSS high-water mark of the process
    cuda_peak: int | None = None  # torch.cuda.max_memory_allocated during training

    @property
    def rate(self) -> float:
        """Tokens per second from the end of step 1 to the end of the last step."""
        if len(self.ends) < 2:
            return math.nan
        return sum(self.tokens[1:]) / (self.ends[-1] - self.ends[0])

    @property
    def cpu_rate(self) -> float:
        """Tokens per CPU-second over the same steps: less sensitive to other jobs on a shared machine."""
        if len(self.cpu) < 2:
            return math.nan
        return sum(self.tokens[1:]) / (self.cpu[-1] - self.cpu[0])

    def mark(self) -> None:
        self.ends.append(time.perf_counter())
        self.cpu.append(time.process_time())


def make_job(model: Path, samples: list[dict], args: argparse.Namespace) -> TrainJob:
    """The studio job both sides follow (the TRL side takes its settings from it)."""
    return TrainJob(
        base_model=str(model),
        base_label=model.name,
        precision="bf16" if args.device == "cuda" else "fp32",
        device=args.device,
        max_steps=args.steps,
        batch_size=args.batch,
        cutoff_len=args.cutoff,
        packing=True,
        train_on_prompt=False,
        gradient_checkpointing=False,
        eval_every=0,
        save_every=0,
        train_rows=len(samples),
        offline=True,
    )


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _finish(side: Side, device: str) -> Side:
    import resource

    side.rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    if device == "cuda":
        import torch

        side.cuda_peak = int(torch.cuda.max_memory_allocated())
    return side


def _start_memory(side: Side, device: str) -> None:
    side.rss_start = _rss()
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def run_studio(job: TrainJob, samples: list[dict], workdir: Path) -> Side:
    """The studio's loop as the worker runs it (studio.training.worker.Trainer.run_job's step loop), no eval."""
    from studio.training.dist import Dist
    from studio.training.worker import Trainer

    run = new_run_dir(workdir, "studio")
    write_jsonl(run.train_file, samples)
    run.write_job(job)
    trainer = Trainer(run, job, Dist())
    trainer.tokenizer = rowlib.load_tokenizer(job.base_model, offline=True)
    trainer.prepare_data(trainer.tokenizer)
    trainer.build_model()
    trainer._start_step = 0
    side = Side("studio")
    _start_memory(side, job.device)
    while trainer.step < trainer.total:
        if trainer.should_stop():
            break
        blocks = [trainer.micro_blocks(trainer.step * job.grad_accum + j) for j in range(job.grad_accum)]
        learned = sum(sum(1 for label in b.labels[1:] if label != rowlib.IGNORE) for bs in blocks for b in bs)
        t0 = time.perf_counter()
        loss, tokens = trainer.train_step()
        seconds = time.perf_counter() - t0
        trainer.step += 1
        trainer.tokens += tokens
        trainer.train_seconds += seconds
        trainer.last_loss = loss
        trainer.metric(step=trainer.step, loss=loss, tokens=tokens, tokens_per_s=tokens / seconds)
        trainer.status("training", force=False, message=f"Step {trainer.step} of {trainer.total}")
        side.mark()
        side.tokens.append(tokens)
        side.learned.append(learned)
        side.losses.append(loss)
    return _finish(side, job.device)


def trl_rows(samples: list[dict]) -> tuple[list[dict], str]:
    """The samples in the dataset format TRL documents, and which loss option keeps only the assistant turns."""
    if all("text" in s for s in samples):
        return [{"text": s["text"]} for s in samples], "text"
    chats = [s["messages"] for s in samples if "messages" in s]
    if len(chats) != len(samples):
        raise SystemExit("The dataset mixes plain-text and chat samples; the TRL side takes one kind at a time.")
    if all(sum(m["role"] == "assistant" for m in c) == 1 and c[-1]["role"] == "assistant" for c in chats):
        return [{"prompt": c[:-1], "completion": c[-1:]} for c in chats], "completion_only_loss"
    return [{"messages": c} for c in chats], "assistant_only_loss"


def run_trl(job: TrainJob, samples: list[dict], workdir: Path) -> Side:
    """A bare TRL SFTTrainer on the same base, LoRA settings, rows, cutoff, steps and optimizer."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from studio.training.lora import load_base

    side = Side("trl")
    rows, loss_option = trl_rows(samples)
    tokenizer = rowlib.load_tokenizer(job.base_model, offline=True)
    base = load_base(job)
    base.config.use_cache = False

    class Measured(SFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            labels = inputs["labels"]
            if "attention_mask" in inputs:
                real = int(inputs["attention_mask"].sum())
            else:  # padding-free: one flat row of real tokens
                real = int(inputs["position_ids"].numel())
            side.tokens[-1] += real
            side.learned[-1] += int((labels[:, 1:] != -100).sum())
            return super().training_step(model, inputs, num_items_in_batch)

    class Steps(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            _start_memory(side, job.device)

        def on_step_begin(self, args, state, control, **kwargs):
            side.tokens.append(0)
            side.learned.append(0)

        def on_step_end(self, args, state, control, **kwargs):
            side.mark()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                side.losses.append(float(logs["loss"]))

    config = SFTConfig(
        output_dir=str(workdir / "trl"),
        max_steps=job.max_steps,
        per_device_train_batch_size=job.batch_size,
        gradient_accumulation_steps=job.grad_accum,
        learning_rate=job.learning_rate,
        lr_scheduler_type="constant_with_warmup" if job.scheduler == "constant" else job.scheduler,
        warmup_steps=job.warmup_ratio,  # a float below 1 is a share of the steps (transformers 5)
        weight_decay=job.weight_decay,
        max_grad_norm=job.max_grad_norm,
        optim="adamw_torch",  # torch.optim.AdamW, as the studio
        max_length=job.cutoff_len,
        packing=True,
        packing_strategy="bfd",  # best-fit decreasing; turns on padding-free (position ids restart per sample)
        padding_free=True,
        completion_only_loss=loss_option == "completion_only_loss" or None,
        assistant_only_loss=loss_option == "assistant_only_loss",
        gradient_checkpointing=job.gradient_checkpointing,
        bf16=False,  # the base is already at its precision, as the studio trains it: no autocast on either side
        fp16=False,
        use_cpu=job.device == "cpu",
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        seed=job.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    torch.manual_seed(job.seed)  # the LoRA initialisation, as the studio
    trainer = Measured(
        model=base,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora_config(job, base),
        callbacks=[Steps()],
    )
    trainer.train()
    return _finish(side, job.device)


SIDES = {"studio": run_studio, "trl": run_trl}


def one_side(name: str, job: TrainJob, samples: list[dict]) -> Side:
    with tempfile.TemporaryDirectory(prefix=f"bench-sft-{name}-") as tmp:
        return SIDES[name](job, samples, Path(tmp))


def pick_model(args: argparse.Namespace, tmp: Path) -> Path:
    if args.model == "tiny":
        from studio.models.tiny import build_tiny_causal_lm

        return build_tiny_causal_lm(tmp / "tiny-lm")
    if args.model == "starter":
        from studio.models.starter import ensure_starter

        return ensure_starter(Path(args.models_dir).expanduser())
    return Path(args.model).expanduser().resolve()


def in_child(name: str, model: Path, args: argparse.Namespace) -> Side:
    """One side in a process of its own, so its peak memory is its own."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    try:
        cmd = [sys.executable, __file__, "--side", name, "--side-out", str(out), "--model", str(model)]
        for flag in ("steps", "batch", "cutoff", "device", "data", "threads"):
            cmd += [f"--{flag}", str(getattr(args, flag))]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the {name} side failed:\n{done.stderr[-4000:]}")
        return Side(**json.loads(out.read_text()))
    finally:
        out.unlink(missing_ok=True)


def mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.0f} MiB"


def compare(model: Path, samples: list[dict], args: argparse.Namespace) -> dict[str, list[Side]]:
    """`args.runs` runs of each side, each in its own process, alternating which side goes first."""
    print(
        f"model {model.name} on {args.device}; {len(samples)} rows of {Path(args.data).name}, cutoff {args.cutoff}, "
        f"{args.batch} packed block(s) a step, {args.steps} steps, {args.runs} runs of each side; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
        flush=True,
    )
    return alternate(
        ("studio", "trl"),
        args.runs,
        lambda name: in_child(name, model, args),
        lambda side: (
            f"{side.rate:8.1f} tokens/s, {side.cpu_rate:8.1f} per CPU-second; {sum(side.tokens)} tokens "
            f"({sum(side.learned)} learned) in {len(side.tokens)} steps, first loss {side.losses[0]:.4f}, peak RSS "
            f"{mib(side.rss_peak)}" + (f", CUDA peak {mib(side.cuda_peak)}" if side.cuda_peak else "")
        ),
    )


def report(found: dict[str, list[Side]]) -> float:
    """Print each side's rates and peak memory, and the ratio TRL / studio: the median of the runs' ratios (paired
    by run), and beside it the ratio of the best runs and of the CPU-time rates, steadier on a shared machine."""
    ratios = [t.rate / s.rate for s, t in zip(found["studio"], found["trl"], strict=True)]
    best = {name: max(s.rate for s in sides) for name, sides in found.items()}
    cpu = {name: statistics.median(s.cpu_rate for s in sides) for name, sides in found.items()}
    for name, label in (("studio", "studio loop"), ("trl", "TRL SFTTrainer")):
        sides = found[name]
        grew = statistics.median(max(0, s.rss_peak - s.rss_start) for s in sides)
        memory = (
            f"peak RSS {mib(max(s.rss_peak for s in sides))} "
            f"({mib(max(s.rss_start for s in sides))} when training starts, +{mib(int(grew))} while training)"
        )
        if sides[0].cuda_peak is not None:
            memory += f", CUDA peak {mib(max(s.cuda_peak or 0 for s in sides))}"
        print(
            f"{label:15s} {statistics.median(s.rate for s in sides):8.1f} trained tokens/s (median; best "
            f"{best[name]:.1f}), {cpu[name]:.1f} per CPU-second, "
            f"{statistics.mean(sum(s.tokens) / len(s.tokens) for s in sides):.0f} tokens a step; {memory}"
        )
    ratio = statistics.median(ratios)
    verdict = "below the bar: TRL slower than the studio's loop" if ratio < TARGET else "TRL is not slower"
    print(
        f"ratio TRL / studio: {ratio:.3f} (median of runs {', '.join(f'{x:.3f}' for x in ratios)}; "
        f"best runs {best['trl'] / best['studio']:.3f}; per CPU-second {cpu['trl'] / cpu['studio']:.3f}; "
        f"bar >= {TARGET}): {verdict}"
    )
    return ratio


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny (default), starter, or a local causal LM folder")
    parser.add_argument("--models-dir", default=str(ROOT / "studio-data" / "models"), help="where the starter lives")
    parser.add_argument("--data", default=str(SAMPLE), help="a dataset file (default: the Fine-tune tab's sample)")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per run (at least 3)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each side, alternating which goes first")
    parser.add_argument("--batch", type=int, default=1, help="packed blocks per optimizer step")
    parser.add_argument("--cutoff", type=int, default=512, help="tokens per sample and per packed block")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads on both sides (0: torch's default)")
    parser.add_argument("--side", choices=tuple(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--side-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    samples = load_dataset(args.data).samples
    if args.side:  # a child: one side, one run
        if args.threads > 0:
            import torch

            torch.set_num_threads(args.threads)
        job = make_job(Path(args.model), samples, args)
        Path(args.side_out).write_text(json.dumps(asdict(one_side(args.side, job, samples))))
        return 0
    if args.steps < 3:
        parser.error(f"--steps must be at least 3 (the rate is measured after step 1), not {args.steps}")
    with tempfile.TemporaryDirectory(prefix="bench-sft-trl-") as tmp:
        model = pick_model(args, Path(tmp))
        found = compare(model, samples, args)
    report(found)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
