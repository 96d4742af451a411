"""Preference tuning in the fine-tune worker: DPO, ORPO and KTO with TRL's trainers, behind the run folder contract.

The job's base is loaded like SFT's (studio.training.lora.load_base, LoRA or QLoRA) and handed to TRL with a peft
LoraConfig and no reference model: TRL then scores the reference with the adapter switched off, so no second copy
of the model is loaded. A TrainerCallback (`StudioBridge`) writes what the SFT loop writes: status.json,
metrics.jsonl (TRL's own figures under TRL's names: rewards/chosen, rewards/margins, ...), checkpoints as
checkpoints/step-N (TRL's checkpoint folder, completed by state.json, capped), STOP and SIGTERM (a usable adapter,
state "stopped"), and resume from the newest complete checkpoint after a kill. The adapter (PEFT format) goes to
RUN_DIR/adapter like SFT's, and report.json adds the final reward accuracy and margin to the SFT report.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from studio.engines.chat import FALLBACK_TEMPLATE
from studio.errors import StudioError
from studio.training import rows as rowlib
from studio.training.datasets import read_jsonl
from studio.training.job import check_disk, steps_for, write_atomic
from studio.training.worker import Trainer

log = logging.getLogger("studio.training.preference")
PAIR_KEYS = ("prompt", "chosen", "rejected")  # dpo, orpo
UNPAIRED_KEYS = ("prompt", "completion", "label")  # kto
NAMES = {"dpo": "DPO", "orpo": "ORPO", "kto": "KTO"}
STAGING = ".trainer"  # TRL writes its checkpoints here; each complete one is moved to checkpoints/step-N
# the figures of the last step that report.json keeps, per objective (TRL's names)
REPORTED = ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "kl", "log_odds_ratio")


def rows_for(objective: str, path: Path) -> list[dict[str, Any]]:
    """The normalised preference rows of one data file (the shared contract), "meta" dropped; a row of the
    other shape is named."""
    keys = UNPAIRED_KEYS if objective == "kto" else PAIR_KEYS
    out = []
    for n, row in enumerate(read_jsonl(path) if path.is_file() else [], 1):
        missing = [k for k in keys if k not in row]
        if missing:
            want = "prompt/completion/label rows" if objective == "kto" else "prompt/chosen/rejected pairs"
            raise StudioError(
                f"{path.name}: row {n} has no {', '.join(missing)}: {NAMES[objective]} trains on {want}.",
                "Pick a preference dataset of that shape for this objective (KTO: thumbs up/down; DPO, ORPO: pairs).",
            )
        out.append({k: row[k] for k in keys})
    return out


def check_template(tokenizer: Any, rows: list[dict[str, Any]], objective: str, base: str) -> None:
    """Render the first row as TRL will (the base's chat template, ChatML when it has none); say why if it can't."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_TEMPLATE  # the template the studio's chat uses for such a base
    row = rows[0]
    answer = row["completion"] if objective == "kto" else row["chosen"]
    try:
        tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        tokenizer.apply_chat_template(row["prompt"] + answer, tokenize=False)
    except Exception as exc:  # noqa: BLE001 - a template raises anything (jinja's TemplateError, its own exceptions)
        text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise StudioError(
            f"{base}: its chat template cannot render the preference prompts ({text}), so {NAMES[objective]} "
            "cannot score the answers.",
            "Pick a base whose chat template takes these turns (for instance without a system turn), or an "
            "instruct model.",
        ) from None


class StudioBridge:
    """The TrainerCallback between TRL and the run folder: status, metrics, stop, checkpoints (built lazily so that
    this module imports no transformers at import time)."""

    def __new__(cls, owner: PreferenceTrainer):
        from transformers import TrainerCallback

        class Bridge(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                owner.total = state.max_steps
                owner.status("training", message=f"Step {state.global_step} of {owner.total}")

            def on_step_begin(self, args, state, control, **kwargs):
                owner._t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                owner.train_seconds += time.perf_counter() - owner._t0
                owner.step = state.global_step
                if owner.step < owner.total and owner.should_stop():
                    owner.stopping = True
                    control.should_training_stop = True
                    control.should_save = True  # a checkpoint at this step: Resume continues from exactly here
                    control.should_evaluate = False

            def on_log(self, args, state, control, logs=None, **kwargs):
                owner.log_figures(state.global_step, dict(logs or {}))

            def on_save(self, args, state, control, **kwargs):
                owner.keep_checkpoint(Path(args.output_dir) / f"checkpoint-{state.global_step}", state.global_step)

        return Bridge()


class PreferenceTrainer(Trainer):
    """A preference run: the worker's status, metrics, stop and probe, with TRL's trainer doing the steps."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stopping = False
        self.figures: dict[str, float] = {}  # the last train step's figures (TRL's names)
        self.eval_figures: dict[str, float] = {}  # the last evaluation's
        self.eval_step = -1  # the step of the last evaluation
        self._t0 = time.perf_counter()

    # ----- the bridge's work ------------------------------------------------------------------------------------

    def log_figures(self, step: int, logs: dict[str, Any]) -> None:
        numbers = {k: v for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if "eval_loss" in numbers:
            skip = ("_runtime", "_per_second", "_preparation_time")
            figures = {k: v for k, v in numbers.items() if k.startswith("eval_") and not k.endswith(skip)}
            self.eval_last = figures["eval_loss"]
            self.eval_figures, self.eval_step = figures, step
            self.metric(step=step, **figures)
            return
        if "loss" not in numbers:
            return  # the end-of-training summary (train_runtime, ...): report.json has its own
        self.last_loss = numbers.pop("loss")
        lr = numbers.pop("learning_rate", None)
        numbers.pop("epoch", None)
        if "num_tokens" in numbers:
            self.tokens = int(numbers["num_tokens"])
        self.figures = numbers
        self.metric(step=step, epoch=round(self.epoch_at(step), 4), loss=self.last_loss, lr=lr, **numbers)
        self.status("training", force=False, message=f"Step {step} of {self.total}")

    def keep_checkpoint(self, folder: Path, step: int) -> None:
        """Move TRL's finished checkpoint to checkpoints/step-N and complete it with state.json (written last: its
        presence means complete), then keep the newest `max_checkpoints`; an older state is never touched before.
        Every rank writes its RNG state into the folder first, so rank 0 waits for all of them before moving it."""
        self.dist.wait_all(self.device)
        if not self.dist.main or not folder.is_dir():
            return
        self.status("saving", message=f"Saving the checkpoint at step {step}")
        state = {
            "step": step,
            "tokens": self.tokens,
            "train_seconds": self.train_seconds,
            "eval_before": self.eval_before,
            "eval_last": self.eval_last,
            "world": self.dist.world,
            "trainer": NAMES[self.job.objective],
        }
        write_atomic(folder / "state.json", json.dumps(state))
        target = self.run.checkpoints / f"step-{step}"
        self.run.checkpoints.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(folder, target)
        for old in self.run.checkpoint_steps()[: -self.job.max_checkpoints]:
            shutil.rmtree(self.run.checkpoints / f"step-{old}", ignore_errors=True)

    def epoch_at(self, step: int) -> float:
        return step / self.steps_per_epoch if getattr(self, "steps_per_epoch", 0) else 0.0

    # ----- the run ----------------------------------------------------------------------------------------------

    def build_trainer(self, train: list[dict[str, Any]], evals: list[dict[str, Any]]):
        from datasets import Dataset

        from studio.training.lora import lora_config

        job = self.job
        base = load_for_training(job, self.dist.local_rank)
        lora = lora_config(job, base)
        config_class, trainer_class = trl_classes(job.objective)
        config = config_class(**self.trl_settings(bool(evals)))
        try:
            return trainer_class(
                model=base,
                args=config,
                train_dataset=Dataset.from_list(train),
                eval_dataset=Dataset.from_list(evals) if evals else None,
                processing_class=self.tokenizer,
                peft_config=lora,
                callbacks=[StudioBridge(self)],
            )
        except (ValueError, TypeError, NotImplementedError, KeyError) as exc:
            text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise StudioError(
                f"{NAMES[job.objective]} cannot train {job.base_label or job.base_model} with these settings: "
                f"TRL refuses ({text}).",
                "Change the setting it names, or pick another base model or objective.",
            ) from None

    def trl_settings(self, has_eval: bool) -> dict[str, Any]:
        """The job's settings under TRL's (and transformers') names."""
        job = self.job
        on_cuda = job.device == "cuda"
        settings: dict[str, Any] = dict(
            output_dir=str(self.run.path / STAGING),
            learning_rate=job.learning_rate,
            lr_scheduler_type="constant_with_warmup" if job.scheduler == "constant" else job.scheduler,
            warmup_steps=int(job.warmup_ratio * self.total),
            max_steps=self.total,
            per_device_train_batch_size=job.batch_size,
            per_device_eval_batch_size=job.batch_size,
            gradient_accumulation_steps=job.grad_accum,
            gradient_checkpointing=job.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
            weight_decay=job.weight_decay,
            max_grad_norm=job.max_grad_norm if job.max_grad_norm > 0 else 1e9,
            seed=job.seed,
            data_seed=job.seed,
            max_length=job.cutoff_len,
            beta=job.beta,
            logging_steps=1,
            eval_strategy="steps" if has_eval and job.eval_every else "no",
            eval_steps=job.eval_every or None,
            save_strategy="steps" if job.save_every else "no",
            save_steps=job.save_every or 500,
            save_total_limit=None,  # the studio keeps the cap on checkpoints/step-N
            report_to=[],
            disable_tqdm=True,
            use_cpu=not on_cuda,
            bf16=on_cuda and job.load_precision in ("bf16", "nf4"),
            fp16=on_cuda and job.load_precision == "fp16",
            dataloader_num_workers=0,
        )
        if job.objective == "dpo":
            settings["loss_type"] = job.loss_type
        return settings

    def run_job(self) -> int:
        job = self.job
        self.status("loading", message=f"Loading {job.base_label or job.base_model}")
        self.tokenizer = rowlib.load_tokenizer(job.base_model, offline=job.offline)
        train = rows_for(job.objective, self.run.train_file)
        evals = rows_for(job.objective, self.run.eval_file)
        if not train:
            raise StudioError("The run has no training rows.", "Create the run again from a preference dataset.")
        if job.objective == "kto" and job.batch_size < 2:
            raise StudioError(
                f"KTO needs a batch size of at least 2, not {job.batch_size}: it estimates its KL term from the "
                "other rows of the batch.",
                "Set the batch size to 2 or more.",
            )
        check_template(self.tokenizer, train, job.objective, job.base_label or job.base_model)
        self.steps_per_epoch, self.total = steps_for(job, len(train), self.dist.world)
        trainer = self.build_trainer(train, evals)
        self.peft_model = trainer.model
        n_lora = sum(p.numel() for p in self.peft_model.parameters() if p.requires_grad)
        if self.dist.main:
            check_disk(self.run.path, n_lora * 4 * 3 * (job.max_checkpoints + 1) + n_lora * 4)
        shutil.rmtree(self.run.path / STAGING, ignore_errors=True)  # a checkpoint a kill left half-written
        steps = [] if self.fresh else self.run.checkpoint_steps()
        resume = None
        if steps:
            resume = str(self.run.checkpoints / f"step-{steps[-1]}")
            state = json.loads((Path(resume) / "state.json").read_text())
            self.step = self._start_step = int(state["step"])
            self.tokens, self.train_seconds = int(state.get("tokens", 0)), float(state.get("train_seconds", 0.0))
            self.eval_before, self.eval_last = state.get("eval_before"), state.get("eval_last")
            if self.dist.main:
                self._trim_metrics(self.step)
                self.metric(event="resume", step=self.step)
        else:
            self._start_step = 0
            if self.dist.main and self.run.metrics_file.exists():
                self.run.metrics_file.unlink()
            if evals:
                self.status("evaluating", message="Measuring the eval loss before training")
                trainer.evaluate()  # the bridge's on_log writes it (step 0)
                self.eval_before = self.eval_last
        self.metric(
            event="start",
            step=self.step,
            total_steps=self.total,
            rows=len(train),
            lora_params=n_lora,
            world=self.dist.world,
            objective=job.objective,
        )
        if self.step < self.total and self.should_stop():
            return self.finish_stopped()
        trainer.train(resume_from_checkpoint=resume)
        self.step = trainer.state.global_step
        shutil.rmtree(self.run.path / STAGING, ignore_errors=True)
        if self.stopping:
            return self.finish_stopped()
        self.trl = trainer
        return self.finish_done()

    # ----- the end ----------------------------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """TRL saves the checkpoints (the bridge asks it for one at a stop); nothing is left to save here."""

    def finish_done(self) -> int:
        self.status("saving", message="Saving the adapter")
        self.save_adapter()
        if self.trl.eval_dataset is not None and self.eval_step != self.step:  # not evaluated at this step yet
            self.status("evaluating", message="Measuring the eval loss after training")
            self.trl.evaluate()  # the bridge's on_log writes it
        after = dict(self.eval_figures)
        if self.dist.main:
            report = {
                "objective": self.job.objective,
                "eval_loss_before": self.eval_before,
                "eval_loss_after": after.get("eval_loss"),
                "perplexity_before": None,  # a preference loss is not a per-token loss: no perplexity
                "perplexity_after": None,
                "steps": self.step,
                "train_tokens": self.tokens,
                "train_seconds": self.train_seconds,
                "tokens_per_s": self.tokens / self.train_seconds if self.train_seconds and self.tokens else None,
                "adapter": str(self.run.adapter),
                "world": self.dist.world,
                "reward_accuracy": self.figures.get("rewards/accuracies"),
                "reward_margin": self.figures.get("rewards/margins"),
                "eval_reward_accuracy": after.get("eval_rewards/accuracies"),
                "eval_reward_margin": after.get("eval_rewards/margins"),
                "preference": {k: self.figures[k] for k in REPORTED if k in self.figures},
                **self.general_probe(),
            }
            write_atomic(self.run.report_file, json.dumps(report, indent=2))
            self.run.stop_file.unlink(missing_ok=True)
        self.status("done", message=f"Done: {self.step} steps. The adapter is in {self.run.adapter}.")
        return 0


def trl_classes(objective: str):
    """(config class, trainer class) of TRL 1.16 for an objective."""
    if objective == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOConfig, DPOTrainer
    if objective == "kto":
        from trl import KTOConfig, KTOTrainer

        return KTOConfig, KTOTrainer
    if objective == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOConfig, ORPOTrainer
    raise StudioError(f"{objective!r} is not a preference objective.")


def load_for_training(job, device_index: int):
    """The base as SFT loads it, made ready for LoRA (QLoRA: peft's k-bit preparation)."""
    from studio.training.lora import load_base

    base = load_base(job, device_index)
    base.config.use_cache = False
    if job.method == "qlora":
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(
            base,
            use_gradient_checkpointing=job.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    return base
