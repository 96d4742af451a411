"""The fine-tune worker: a child process that trains the job in RUN_DIR and writes its outputs beside it.

    python -m studio.training.worker RUN_DIR              # train (resumes from the last checkpoint if there is one)
    python -m studio.training.worker RUN_DIR --fresh      # ignore existing checkpoints
    python -m studio.training.worker RUN_DIR --merge      # merge the adapter into the base -> RUN_DIR/merged
    python -m studio.training.worker RUN_DIR --orphan-training stop   # stop (adapter saved) if the parent dies
    torchrun --nproc_per_node=2 -m studio.training.worker RUN_DIR
    accelerate launch -m studio.training.worker RUN_DIR   # several GPUs: DDP, rank 0 writes the files

Packs samples into cutoff-length blocks (position ids restart at each sample, so attention never crosses samples
and no compute goes to padding), trains LoRA/QLoRA with peft, logs every step to metrics.jsonl, evaluates every
N steps, checkpoints (adapter, optimizer, scheduler, RNG, step) with a cap, stops gracefully on the STOP file or
SIGTERM (saving a usable adapter, exit 0) or, with `--orphan-training stop`, when the process that started it dies
(the studio, killed or crashed; with `keep` it trains on for the next studio to re-adopt), and resumes from the last checkpoint after a crash or a kill.
The base model, the loss and `--merge` are in `studio.training.lora`; the launch group is `studio.training.dist`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from studio.config import ORPHAN_TRAINING
from studio.errors import BudgetError, DiskFullError, StudioError, is_disk_full, is_oom
from studio.text import fmt_bytes
from studio.training import rows as rowlib
from studio.training.datasets import read_jsonl
from studio.training.dist import Dist, accelerate_cpu_processes, relaunch
from studio.training.job import RunDir, TrainJob, check_disk, steps_for, write_atomic
from studio.training.lora import load_base, lora_config, merge, token_loss

log = logging.getLogger("studio.training.worker")
STATUS_EVERY = 0.5  # seconds between status writes while training


def memory_now(device: str) -> dict[str, int]:
    import psutil

    out = {"rss": psutil.Process().memory_info().rss}
    if device == "cuda":
        import torch

        out["cuda_peak"] = int(torch.cuda.max_memory_allocated())
        out["cuda_reserved"] = int(torch.cuda.memory_reserved())
    return out


class Trainer:
    """One training run of a job: the loop, evaluation, checkpoints, stop and resume."""

    def __init__(
        self, run: RunDir, job: TrainJob, dist: Dist, *, fresh: bool = False, orphan_training: str = "keep"
    ) -> None:
        self.run, self.job, self.dist, self.fresh = run, job, dist, fresh
        self.device = f"cuda:{dist.local_rank}" if job.device == "cuda" else "cpu"
        self.stop_requested = False
        self.orphan_training = orphan_training  # "stop": stop when the process that started us dies
        self.parent = os.getppid()  # a dead parent shows as a new one: we are re-parented to init or a subreaper
        self.orphaned = False
        self.step = 0
        self.total = 0
        self.tokens = 0
        self.train_seconds = 0.0
        self.eval_before: float | None = None
        self.eval_last: float | None = None
        self.last_loss: float | None = None
        self._last_status = 0.0
        self._status: dict[str, Any] = {}
        self.started = time.time()

    # ----- files (rank 0 only) ------------------------------------------------------------------------------

    def status(self, state: str, force: bool = True, **extra: Any) -> None:
        if not self.dist.main:
            return
        now = time.time()
        shown = self._status.get("state")
        if not force and shown == state and now - self._last_status < STATUS_EVERY:
            return  # throttled only while the state stays the same: "saving" must not outlive the save
        self._last_status = now
        rate = self.tokens / self.train_seconds if self.train_seconds > 0 else None
        done = self.step - self._start_step if hasattr(self, "_start_step") else 0
        per_step = self.train_seconds / done if done > 0 else None
        self._status = {
            "state": state,
            "pid": os.getpid(),
            "world": self.dist.world,
            "step": self.step,
            "total_steps": self.total,
            "epoch": round(self.epoch_at(self.step), 3) if self.total else 0,
            "loss": self.last_loss,
            "eval_loss": self.eval_last,
            "eval_loss_before": self.eval_before,
            "tokens": self.tokens,
            "tokens_per_s": rate,
            "eta_s": per_step * (self.total - self.step) if per_step else None,
            "elapsed_s": now - self.started,
            "memory": memory_now(self.job.device),
            "message": extra.pop("message", ""),
            **extra,
        }
        self.run.write_status(**self._status)

    def metric(self, **record: Any) -> None:
        if self.dist.main:
            record["time"] = time.time()
            with open(self.run.metrics_file, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    # ----- data ---------------------------------------------------------------------------------------------

    def prepare_data(self, tokenizer) -> None:
        job = self.job
        train = read_jsonl(self.run.train_file)
        evals = read_jsonl(self.run.eval_file) if self.run.eval_file.is_file() else []
        train_rows = rowlib.tokenize(train, tokenizer, job.cutoff_len, train_on_prompt=job.train_on_prompt)
        eval_rows = rowlib.tokenize(evals, tokenizer, job.cutoff_len, train_on_prompt=job.train_on_prompt)
        if not train_rows:
            raise StudioError(
                "No training row has anything to learn within the cutoff length.",
                "Raise the cutoff length, or check that the rows have responses.",
            )
        packer = rowlib.pack if job.packing else rowlib.single_blocks
        self.blocks = packer(train_rows, job.cutoff_len) if job.packing else packer(train_rows)
        self.eval_blocks = rowlib.pack(eval_rows, job.cutoff_len)  # packing never changes the eval loss
        self.micro_per_epoch = max(1, math.ceil(len(self.blocks) / (job.batch_size * self.dist.world)))
        self.steps_per_epoch, self.total = steps_for(job, len(self.blocks), self.dist.world)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self._orders: dict[int, list[int]] = {}

    def epoch_at(self, step: int) -> float:
        return step * self.job.grad_accum / self.micro_per_epoch

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            order = list(range(len(self.blocks)))
            random.Random(self.job.seed * 1000 + epoch).shuffle(order)
            self._orders = {epoch: order}
        return self._orders[epoch]

    def micro_blocks(self, m: int) -> list[rowlib.Block]:
        """The blocks of global micro-batch `m` for this rank: a pure function of m, so resume is exact."""
        epoch, i = divmod(m, self.micro_per_epoch)
        order, n, b = self._order(epoch), len(self.blocks), self.job.batch_size
        start = (i * self.dist.world + self.dist.rank) * b
        picked = [order[k] for k in range(start, min(start + b, n))] or [order[start % n]]
        return [self.blocks[k] for k in picked]

    def collate(self, blocks: list[rowlib.Block]) -> dict[str, Any]:
        import torch

        n = max(len(b) for b in blocks)
        ids, labels, positions = [], [], []
        for b in blocks:
            pad = n - len(b)
            ids.append(b.ids + [self.pad_id] * pad)
            labels.append(b.labels + [rowlib.IGNORE] * pad)
            positions.append(b.positions + list(range(pad)))  # padding is a sequence of its own, never learned
        return {
            "input_ids": torch.tensor(ids, device=self.device),
            "position_ids": torch.tensor(positions, device=self.device),
            "labels": torch.tensor(labels, device=self.device),
        }

    # ----- model --------------------------------------------------------------------------------------------

    def build_model(self):
        import torch
        from peft import get_peft_model

        job = self.job
        base = load_base(job, self.dist.local_rank)
        base.config.use_cache = False
        ckpt_kwargs = {"use_reentrant": False}
        if job.method == "qlora":
            from peft import prepare_model_for_kbit_training

            base = prepare_model_for_kbit_training(
                base,
                use_gradient_checkpointing=job.gradient_checkpointing,
                gradient_checkpointing_kwargs=ckpt_kwargs,
            )
        elif job.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
        config = lora_config(job, base)
        torch.manual_seed(job.seed)  # the LoRA initialisation
        try:
            self.peft_model = get_peft_model(base, config)
        except ValueError as exc:
            raise StudioError(
                f"LoRA target modules {', '.join(_names(config.target_modules))} do not fit this model ({str(exc).splitlines()[0][:160]}).",
                "Leave target modules empty for the default of its architecture.",
            ) from None
        self.peft_model.train()
        self.model = self.peft_model
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.dist.local_rank] if job.device == "cuda" else None
            self.model = DistributedDataParallel(self.peft_model, device_ids=ids)
        self.params = [p for p in self.peft_model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=job.learning_rate, weight_decay=job.weight_decay)
        from transformers import get_scheduler

        self.scheduler = get_scheduler(
            "constant_with_warmup" if job.scheduler == "constant" else job.scheduler,
            self.optimizer,
            num_warmup_steps=int(job.warmup_ratio * self.total),
            num_training_steps=self.total,
        )

    def evaluate(self) -> float | None:
        """Mean loss per learned token over the eval rows (all ranks share the work)."""
        import torch

        if not self.eval_blocks:
            return None
        model = self.peft_model
        model.eval()
        total, count = 0.0, 0
        b = self.job.batch_size
        mine = self.eval_blocks[self.dist.rank :: self.dist.world]
        with torch.no_grad():
            for i in range(0, len(mine), b):
                batch = self.collate(mine[i : i + b])
                n = int((batch["labels"][:, 1:] != rowlib.IGNORE).sum())
                if n:
                    total += float(token_loss(model, batch, 1))
                    count += n
        model.train()
        total, count = self.dist.sum([total, float(count)], self.device)
        return total / count if count else None

    # ----- checkpoints --------------------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        import torch

        if not self.dist.main:
            return
        self.status("saving", message=f"Saving the checkpoint at step {self.step}")

        def write(tmp: Path) -> None:
            self.peft_model.save_pretrained(tmp / "adapter")
            _torch_save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            _torch_save(self.scheduler.state_dict(), tmp / "scheduler.pt")
            rng = {"torch": torch.get_rng_state()}
            if self.job.device == "cuda":
                rng["cuda"] = torch.cuda.get_rng_state()
            _torch_save(rng, tmp / "rng.pt")
            state = {
                "step": self.step,
                "tokens": self.tokens,
                "train_seconds": self.train_seconds,
                "eval_before": self.eval_before,
                "eval_last": self.eval_last,
                "world": self.dist.world,
            }
            write_atomic(tmp / "state.json", json.dumps(state))  # written last: its presence means complete

        self._save_folder(self.run.checkpoints / f"step-{self.step}", f"the checkpoint at step {self.step}", write)
        for old in self.run.checkpoint_steps()[: -self.job.max_checkpoints]:
            shutil.rmtree(self.run.checkpoints / f"step-{old}", ignore_errors=True)

    def load_checkpoint(self, step: int) -> None:
        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        folder = self.run.checkpoints / f"step-{step}"
        weights = load_file(str(folder / "adapter" / "adapter_model.safetensors"), device=self.device)
        set_peft_model_state_dict(self.peft_model, weights)
        load = lambda name: torch.load(folder / name, map_location=self.device, weights_only=True)  # noqa: E731
        self.optimizer.load_state_dict(load("optimizer.pt"))
        self.scheduler.load_state_dict(load("scheduler.pt"))
        rng = torch.load(folder / "rng.pt", map_location="cpu", weights_only=True)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.job.device == "cuda":
            torch.cuda.set_rng_state(rng["cuda"])
        state = json.loads((folder / "state.json").read_text())
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.eval_before, self.eval_last = state.get("eval_before"), state.get("eval_last")

    def save_adapter(self) -> None:
        if not self.dist.main:
            return
        self._save_folder(self.run.adapter, "the adapter", self.peft_model.save_pretrained)

    def _save_folder(self, folder: Path, what: str, write: Callable[[Path], Any]) -> None:
        """`write` into a hidden folder beside `folder`, then swap it in: a save that fails (a full disk) or is
        killed leaves the previous checkpoints and adapter as they were, and no partial folder behind."""
        tmp = folder.with_name(f".{folder.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            write(tmp)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if not is_disk_full(exc):
                raise
            steps = self.run.checkpoint_steps()
            resume = f"to continue from step {steps[-1]}" if steps else "to start again (no checkpoint was saved yet)"
            raise DiskFullError(
                f"The disk is full: {what} could not be saved in {folder.parent} "
                f"({fmt_bytes(shutil.disk_usage(folder.parent).free)} free).",
                f"Free some space on that disk (or keep fewer checkpoints), then press Resume {resume}; "
                "what was saved before is intact.",
            ) from None
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)

    # ----- the loop -----------------------------------------------------------------------------------------

    def should_stop(self) -> bool:
        if self.orphan_training == "stop" and not self.orphaned and os.getppid() != self.parent:
            log.warning("The process that started this worker (%s) has ended: stopping", self.parent)
            self.orphaned = self.stop_requested = True
        asked = self.stop_requested or (self.dist.main and self.run.stop_file.exists())
        return self.dist.any(asked, self.device)

    def train_step(self) -> tuple[float, int]:
        """One optimizer step over grad_accum micro-batches; returns (mean loss per learned token, real tokens)."""
        import torch

        accum = self.job.grad_accum
        batches = [self.collate(self.micro_blocks((self.step) * accum + j)) for j in range(accum)]
        n_items = sum(int((b["labels"][:, 1:] != rowlib.IGNORE).sum()) for b in batches)
        real = sum(sum(len(blk) for blk in self.micro_blocks(self.step * accum + j)) for j in range(accum))
        total = 0.0
        for j, batch in enumerate(batches):
            sync = self.dist.world == 1 or j == accum - 1
            ctx = contextlib.nullcontext() if sync else self.model.no_sync()
            with ctx:
                loss = token_loss(self.model, batch, max(1, n_items))
                loss.backward()
            total += float(loss.detach())
        if self.job.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.job.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, tokens = self.dist.sum([total, float(real)], self.device)
        return loss_sum / self.dist.world, int(tokens)

    def run_job(self) -> int:
        job = self.job
        self.status("loading", message=f"Loading {job.base_label or job.base_model}")
        tokenizer = self.tokenizer = rowlib.load_tokenizer(job.base_model, offline=job.offline)
        self.prepare_data(tokenizer)
        self.build_model()
        n_lora = sum(p.numel() for p in self.params)
        if self.dist.main:
            check_disk(self.run.path, n_lora * 4 * 3 * (job.max_checkpoints + 1) + n_lora * 4)
        steps = [] if self.fresh else self.run.checkpoint_steps()
        self._start_step = 0
        if steps:
            self.load_checkpoint(steps[-1])
            self._start_step = self.step
            if self.dist.main:
                self._trim_metrics(self.step)
                self.metric(event="resume", step=self.step)
        else:
            if self.dist.main and self.run.metrics_file.exists():
                self.run.metrics_file.unlink()
            self.status("evaluating", message="Measuring the eval loss before training")
            self.eval_before = self.evaluate()
            self.eval_last = self.eval_before
            if self.eval_before is not None:
                self.metric(step=0, eval_loss=self.eval_before)
        self.metric(
            event="start",
            step=self.step,
            total_steps=self.total,
            blocks=len(self.blocks),
            lora_params=n_lora,
            world=self.dist.world,
        )
        while self.step < self.total:
            if self.should_stop():
                return self.finish_stopped()
            t0 = time.perf_counter()
            loss, tokens = self.train_step()
            seconds = time.perf_counter() - t0
            self.step += 1
            self.tokens += tokens
            self.train_seconds += seconds
            self.last_loss = loss
            self.metric(
                step=self.step,
                epoch=round(self.epoch_at(self.step), 4),
                loss=loss,
                lr=self.scheduler.get_last_lr()[0],
                tokens=tokens,
                tokens_per_s=tokens / seconds if seconds > 0 else None,
            )
            if job.eval_every and self.step % job.eval_every == 0 and self.step < self.total:
                self.status("evaluating", message=f"Evaluating at step {self.step}")
                self.eval_last = self.evaluate()
                if self.eval_last is not None:
                    self.metric(step=self.step, eval_loss=self.eval_last)
            if job.save_every and self.step % job.save_every == 0 and self.step < self.total:
                self.save_checkpoint()
            self.status("training", force=False, message=f"Step {self.step} of {self.total}")
        return self.finish_done()

    def _trim_metrics(self, step: int) -> None:
        """After a crash the log may run past the checkpoint; keep what the resumed run continues from."""
        kept = [m for m in self.run.metrics() if m.get("step", 0) <= step]
        write_atomic(self.run.metrics_file, "".join(json.dumps(m) + "\n" for m in kept))

    def finish_stopped(self) -> int:
        self.status("stopping", message=f"Stopping at step {self.step}: saving the adapter")
        if self.step > 0 and self.step not in self.run.checkpoint_steps():
            self.save_checkpoint()
        self.save_adapter()
        if self.dist.main:
            self.run.stop_file.unlink(missing_ok=True)
            self.metric(event="stopped", step=self.step)
        why = "The studio that started it ended. " if self.orphaned else ""
        self.status(
            "stopped",
            message=f"{why}Stopped at step {self.step} of {self.total}. The adapter is saved; Resume continues from "
            "here.",
        )
        return 0

    def finish_done(self) -> int:
        self.status("saving", message="Saving the adapter")
        self.save_adapter()
        self.status("evaluating", message="Measuring the eval loss after training")
        after = self.evaluate()
        self.eval_last = after
        if self.dist.main:
            if after is not None:
                self.metric(step=self.step, eval_loss=after)
            report = {
                "eval_loss_before": self.eval_before,
                "eval_loss_after": after,
                "perplexity_before": _ppl(self.eval_before),
                "perplexity_after": _ppl(after),
                "steps": self.step,
                "train_tokens": self.tokens,
                "train_seconds": self.train_seconds,
                "tokens_per_s": self.tokens / self.train_seconds if self.train_seconds else None,
                "adapter": str(self.run.adapter),
                "world": self.dist.world,
                **self.general_probe(),
            }
            write_atomic(self.run.report_file, json.dumps(report, indent=2))
            self.run.stop_file.unlink(missing_ok=True)
        self.status("done", message=f"Done: {self.step} steps. The adapter is in {self.run.adapter}.")
        return 0

    def general_probe(self) -> dict[str, Any]:
        """The general probe's score (studio.training.probe) for the report; run after the adapter is saved, so a
        failure here loses nothing: it is recorded as a message and the run still ends done."""
        from studio.training import probe

        self.status("evaluating", message="Scoring general knowledge kept (the general probe)")
        try:
            cache = self.run.path.parent / probe.CACHE_FOLDER
            found = probe.score(
                self.peft_model,
                self.tokenizer,
                self.device,
                cache,
                self.job.base_model,
                f"{self.job.method}-{self.job.load_precision}",
            )
        except Exception as exc:  # noqa: BLE001 - the report says why; worker.log gets the traceback
            log.exception("The general probe failed")
            text = str(exc).splitlines()[0][:200] if str(exc) else ""
            return {"general_kept": None, "general_probe_error": f"{type(exc).__name__}: {text}"}
        return found.report()


def _torch_save(obj: Any, path: Path) -> None:
    """torch.save through a Python file, so that a full disk surfaces as the OSError behind torch's RuntimeError."""
    import torch

    with open(path, "wb") as f:
        torch.save(obj, f)


def _ppl(loss: float | None) -> float | None:
    return math.exp(min(loss, 50)) if loss is not None else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studio.training.worker", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="the run folder with job.json and data/")
    parser.add_argument("--fresh", action="store_true", help="ignore existing checkpoints and start from step 0")
    parser.add_argument("--merge", action="store_true", help="merge the adapter into the base model -> merged/")
    parser.add_argument(
        "--orphan-training",
        choices=ORPHAN_TRAINING,
        default="keep",
        help="when the process that started this worker dies: keep training, or stop with the adapter saved",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    run = RunDir(args.run_dir.expanduser().resolve())
    dist = Dist.from_env()
    try:
        job = run.job()
        job.check()
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.merge:
        try:
            print(merge(run))
            return 0
        except StudioError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    if job.device == "cpu" and (processes := accelerate_cpu_processes()) > 1:  # accelerate launch --cpu -n N
        return relaunch(processes, list(sys.argv[1:] if argv is None else argv))
    trainer_class = Trainer
    if job.objective != "sft":  # DPO, ORPO, KTO: TRL's trainers behind the same run folder (preference.py)
        from studio.training.preference import PreferenceTrainer as trainer_class
    trainer = trainer_class(run, job, dist, fresh=args.fresh, orphan_training=args.orphan_training)

    def ask_stop(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
        trainer.stop_requested = True

    signal.signal(signal.SIGTERM, ask_stop)
    signal.signal(signal.SIGINT, ask_stop)
    try:
        dist.init(job.device)
        import torch

        torch.manual_seed(job.seed + dist.rank)
        return trainer.run_job()
    except (StudioError, BudgetError) as exc:
        trainer.status("failed", message=str(exc))
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the page gets one line; worker.log gets the traceback
        traceback.print_exc()
        text = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        if is_disk_full(exc):
            text = f"The disk is full ({text}). Free some space on the disk of {run.path}, then press Resume."
        elif is_oom(exc):
            text = f"Out of memory while training ({text}). Lower the batch size or cutoff, or turn on checkpointing."
        trainer.status("failed", message=text)
        return 1
    finally:
        dist.close()


if __name__ == "__main__":
    sys.exit(main())


def _names(targets: Any) -> list[str]:
    """peft's target_modules (a set of names, or one string such as "all-linear") as a list to print."""
    return [targets] if isinstance(targets, str) else sorted(targets)
