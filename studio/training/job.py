"""A fine-tune job is a file: `job.json` in its run folder, written before the worker starts, outputs beside it.

    RUN_DIR/job.json          what to train (TrainJob)
    RUN_DIR/data/train.jsonl  the normalised samples (and data/eval.jsonl)
    RUN_DIR/status.json       the worker's state, rewritten atomically (tmp + os.replace)
    RUN_DIR/metrics.jsonl     one line per step (loss, lr, tokens/s) and per evaluation (eval_loss)
    RUN_DIR/checkpoints/      step-N folders (adapter, optimizer, scheduler, RNG, step), capped
    RUN_DIR/adapter/          the final (or stopped) PEFT adapter
    RUN_DIR/report.json       eval loss and perplexity before and after
    RUN_DIR/STOP              created to ask the worker to stop (it saves an adapter and exits 0)

Also the job's memory and disk estimates. No torch here.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from studio.errors import BudgetError, InputError
from studio.models.estimate import weights_bytes
from studio.models.formats import WeightsInfo
from studio.text import fmt_bytes

MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,199}$")  # a LoRA target: q_proj, layers.0.mlp, all-linear

METHODS = ("lora", "qlora")
MIN_CUTOFF, MAX_CUTOFF = 16, 131072  # tokens per training sequence
SCHEDULERS = ("cosine", "linear", "constant")
OBJECTIVES = ("sft", "dpo", "orpo", "kto")  # sft: learn the answers; the others learn from preferences (TRL)
PREFERENCE_OBJECTIVES = OBJECTIVES[1:]
DPO_LOSSES = ("sigmoid", "ipo", "hinge", "robust")
# sequences the policy runs per example, with gradients: DPO / ORPO the chosen and the rejected reply, KTO the
# completion and its KL batch (a mismatched completion); SFT one
POLICY_PASSES = {"sft": 1, "dpo": 2, "orpo": 2, "kto": 2}
NEEDS_REFERENCE = ("dpo", "kto")  # ORPO and SFT compare against no reference model
ACTIVE_STATES = ("starting", "loading", "evaluating", "training", "saving", "stopping")
FINAL_STATES = ("done", "stopped", "failed", "interrupted")
# LoRA targets per architecture (config.json model_type); anything else uses peft's "all-linear".
TARGETS = {
    **dict.fromkeys(
        ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo", "granite"),
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    ),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "gpt_neox": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
    "phi": ("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"),
    "falcon": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
    "opt": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
}
# Training is refused if fewer than this many bytes would be left on the disk after the checkpoints.
DISK_MARGIN = 200 * 1024**2


def default_targets(model_type: str) -> tuple[str, ...]:
    """LoRA target modules for an architecture; ("all-linear",) when it is not one we know."""
    return TARGETS.get((model_type or "").lower(), ("all-linear",))


@dataclass(frozen=True)
class TrainJob:
    """Everything the worker needs. Written as job.json; every field has a default except the base model."""

    base_model: str  # a local folder or a Hub id (the starter is its converted folder)
    base_label: str = ""  # what the page calls the base model
    base_choice: str = ""  # the Chat tab's value for this base ("starter:..." or the source), for Try in Chat
    source_type: str = "folder"  # folder | hub
    method: str = "lora"  # lora: base at `precision`; qlora: base in 4-bit NF4 (bitsandbytes)
    precision: str = "fp32"  # base weights for lora: fp32 | bf16 | fp16 (qlora: nf4)
    device: str = "cpu"  # cuda | cpu
    rank: int = 16  # LoRA rank r
    alpha: int = 32  # LoRA alpha (scale = alpha / r)
    dropout: float = 0.05  # LoRA dropout
    target_modules: tuple[str, ...] = ()  # () = the default for the architecture
    learning_rate: float = 2e-4
    scheduler: str = "cosine"  # cosine | linear | constant (after warmup)
    warmup_ratio: float = 0.03  # share of the steps spent warming up
    epochs: float = 3.0  # passes over the data (ignored when max_steps > 0)
    max_steps: int = 0  # optimizer steps; 0 = from epochs
    batch_size: int = 4  # sequences (packed blocks) per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    cutoff_len: int = 1024  # tokens per sample (longer ones are truncated) and per packed block
    packing: bool = True  # pack samples into cutoff-length blocks (attention never crosses samples)
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    train_on_prompt: bool = False  # also learn the user/system turns (default: assistant turns only)
    eval_every: int = 50  # evaluate every N steps (0 = only before and after)
    save_every: int = 50  # checkpoint every N steps (0 = only at the end)
    max_checkpoints: int = 2  # older checkpoints are deleted
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    offline: bool = False  # never contact the Hub
    dataset_name: str = ""  # the file the samples came from
    dataset_shape: str = ""  # text | alpaca | messages | sharegpt
    train_rows: int = 0
    eval_rows: int = 0
    # what is learned: sft (the answers, as today), dpo / orpo (chosen over rejected pairs), kto (good/bad labels);
    # the preference objectives train with TRL's trainers (see worker.py)
    objective: str = "sft"
    beta: float = 0.1  # DPO / KTO: how far from the reference (the base, adapter off) the policy may move; ORPO: λ
    loss_type: str = "sigmoid"  # DPO's loss: sigmoid (the paper's), ipo, hinge, robust
    created: float = field(default_factory=time.time)

    def check(self) -> None:
        """Raise InputError naming the first setting that cannot work."""

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise InputError(message)

        need(bool(self.base_model.strip()), "Pick a base model.")
        need(self.method in METHODS, f"Method must be one of {', '.join(METHODS)}, not {self.method!r}.")
        need(
            self.objective in OBJECTIVES,
            f"Objective must be one of {', '.join(OBJECTIVES)}, not {self.objective!r}.",
        )
        need(0 < self.beta <= 10, f"Beta must be in (0, 10], not {self.beta}.")
        need(self.loss_type in DPO_LOSSES, f"DPO loss must be one of {', '.join(DPO_LOSSES)}, not {self.loss_type!r}.")
        need(self.scheduler in SCHEDULERS, f"Schedule must be one of {', '.join(SCHEDULERS)}.")
        need(self.device in ("cpu", "cuda"), f"Device must be cpu or cuda, not {self.device!r}.")
        need(1 <= self.rank <= 1024, f"LoRA rank must be between 1 and 1024, not {self.rank}.")
        need(self.alpha > 0, f"LoRA alpha must be positive, not {self.alpha}.")
        need(0 <= self.dropout < 1, f"LoRA dropout must be in [0, 1), not {self.dropout}.")
        need(0 < self.learning_rate < 1, f"Learning rate must be between 0 and 1, not {self.learning_rate}.")
        need(0 <= self.warmup_ratio < 1, f"Warmup must be a share of the steps in [0, 1), not {self.warmup_ratio}.")
        need(self.max_steps >= 0, f"Max steps must be 0 or more, not {self.max_steps}.")
        need(self.max_steps > 0 or self.epochs > 0, "Give a number of epochs above 0, or max steps.")
        need(self.batch_size >= 1, f"Batch size must be at least 1, not {self.batch_size}.")
        need(self.grad_accum >= 1, f"Gradient accumulation must be at least 1, not {self.grad_accum}.")
        need(MIN_CUTOFF <= self.cutoff_len <= MAX_CUTOFF, cutoff_message(self.cutoff_len))
        need(self.eval_every >= 0 and self.save_every >= 0, "Eval and save intervals must be 0 or more.")
        need(self.max_checkpoints >= 1, f"Keep at least 1 checkpoint, not {self.max_checkpoints}.")
        for name in self.target_modules:
            need(
                bool(MODULE_NAME.match(name)),
                f"Target module {name[:40]!r} is not a module name: use names such as q_proj, v_proj "
                "(comma-separated), or leave the field empty for the architecture's default.",
            )
        need(self.train_rows > 0, "The dataset has no training rows.")

    @property
    def load_precision(self) -> str:
        return "nf4" if self.method == "qlora" else self.precision

    def to_json(self) -> str:
        data = asdict(self)
        data["target_modules"] = list(self.target_modules)
        return json.dumps(data, indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainJob:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"job.json has unknown settings: {', '.join(unknown)}.")
        data = dict(data)
        data["target_modules"] = tuple(data.get("target_modules") or ())
        try:
            return cls(**data)
        except TypeError as exc:
            raise InputError(f"job.json is incomplete: {exc}.") from None


def cutoff_message(value: int) -> str:
    return f"Cutoff length must be between {MIN_CUTOFF} and {MAX_CUTOFF} tokens, not {value}."


# ----- the run folder -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunDir:
    """The files of one run."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def name(self) -> str:
        return self.path.name

    job_file = property(lambda self: self.path / "job.json")
    status_file = property(lambda self: self.path / "status.json")
    metrics_file = property(lambda self: self.path / "metrics.jsonl")
    stop_file = property(lambda self: self.path / "STOP")
    checkpoints = property(lambda self: self.path / "checkpoints")
    adapter = property(lambda self: self.path / "adapter")
    merged = property(lambda self: self.path / "merged")
    report_file = property(lambda self: self.path / "report.json")
    log_file = property(lambda self: self.path / "worker.log")
    train_file = property(lambda self: self.path / "data" / "train.jsonl")
    eval_file = property(lambda self: self.path / "data" / "eval.jsonl")

    def job(self) -> TrainJob:
        try:
            data = json.loads(self.job_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"{self.path}: no job.json (not a run folder).") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"{self.job_file}: not valid JSON ({exc.msg}, line {exc.lineno}).") from None
        return TrainJob.from_dict(data)

    def write_job(self, job: TrainJob) -> None:
        write_atomic(self.job_file, job.to_json())

    def status(self) -> dict[str, Any]:
        return read_json(self.status_file) or {}

    def write_status(self, **status: Any) -> None:
        status["updated"] = time.time()
        write_atomic(self.status_file, json.dumps(status))

    def metrics(self) -> list[dict[str, Any]]:
        """The metrics log; a line being written (no newline yet, or cut by a kill) is ignored."""
        try:
            text = self.metrics_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def report(self) -> dict[str, Any] | None:
        return read_json(self.report_file)

    def checkpoint_steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        steps = []
        for p in self.checkpoints.iterdir():
            if p.name.startswith("step-") and (p / "state.json").is_file():
                try:
                    steps.append(int(p.name[5:]))
                except ValueError:
                    continue
        return sorted(steps)


def write_atomic(path: Path, text: str) -> None:
    """Write a file so readers see the old or the new content, never half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves the old file, not a stray partial one beside it
        raise


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def new_run_dir(runs: Path, label: str) -> RunDir:
    """A fresh, uniquely named run folder under `runs`."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in label)[:40].strip("-.") or "run"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = runs / (f"{stamp}-{safe}" + (f"-{n}" if n else ""))
        try:
            path.mkdir(parents=True)
            (path / "data").mkdir()
            return RunDir(path)
        except FileExistsError:
            continue
    raise InputError(f"Could not make a run folder under {runs}.")


# ----- estimates ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobEstimate:
    """Memory and disk a job needs, with the parts that make them up."""

    weights: int  # base weights at their precision
    adapter: int  # LoRA weights (fp32)
    optimizer: int  # AdamW state + gradients of the adapter
    activations: int  # at batch x cutoff, with or without checkpointing
    lora_params: int
    checkpoint_bytes: int  # one checkpoint on disk (adapter + optimizer + rest)
    disk_bytes: int  # every checkpoint the cap keeps, plus the final adapter
    objective: str = "sft"  # what the activations were counted for (see POLICY_PASSES)
    reference: int = 0  # DPO / KTO: the reference pass's logits (the base with the adapter off, no gradients)

    @property
    def total(self) -> int:
        return self.weights + self.adapter + self.optimizer + self.activations + self.reference

    def breakdown(self) -> str:
        passes = POLICY_PASSES.get(self.objective, 1)
        what = {"dpo": "chosen + rejected", "orpo": "chosen + rejected", "kto": "completion + KL batch"}
        acts = f"activations {fmt_bytes(self.activations)}"
        if passes > 1:
            acts += f" ({what.get(self.objective, '')}: {passes}x SFT's at this cutoff)"
        line = (
            f"weights {fmt_bytes(self.weights)} + adapter {fmt_bytes(self.adapter)} "
            f"({self.lora_params / 1e6:.2f} M params) + optimizer {fmt_bytes(self.optimizer)} + {acts}"
        )
        if self.objective in NEEDS_REFERENCE:
            line += f" + reference pass {fmt_bytes(self.reference)}"
        line += f" = {fmt_bytes(self.total)}"
        if self.objective in NEEDS_REFERENCE:
            line += (
                ". The reference model is the base with the adapter off (LoRA): no second copy of the model is loaded"
            )
        elif self.objective == "orpo":
            line += ". ORPO needs no reference model"
        return line


def lora_params(config: dict, rank: int, targets: tuple[str, ...]) -> int:
    """LoRA parameters for a transformer of this shape: r x (in + out) for every targeted projection."""
    h = int(config.get("hidden_size") or 0)
    layers = int(config.get("num_hidden_layers") or 0)
    if not h or not layers:
        return 0
    inter = int(config.get("intermediate_size") or 4 * h)
    heads = int(config.get("num_attention_heads") or 1)
    head_dim = int(config.get("head_dim") or h // max(1, heads))
    kv = int(config.get("num_key_value_heads") or heads) * head_dim
    shapes = {
        "q_proj": (h, heads * head_dim),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (heads * head_dim, h),
        "gate_proj": (h, inter),
        "up_proj": (h, inter),
        "down_proj": (inter, h),
    }
    chosen = list(shapes.values()) if "all-linear" in targets else [shapes.get(t, (h, h)) for t in targets]
    return layers * sum(rank * (i + o) for i, o in chosen)


def estimate_job(job: TrainJob, info: WeightsInfo, model_type: str = "") -> JobEstimate:
    """Bytes the worker will need: weights at precision + adapter + optimizer state + activations."""
    config = info.config
    targets = job.target_modules or default_targets(model_type or str(config.get("model_type", "")))
    n_lora = lora_params(config, job.rank, targets) or int(info.params * 0.01)
    weights = weights_bytes(info, job.load_precision)
    adapter = n_lora * 4  # fp32 LoRA weights
    optimizer = n_lora * 4 * 3  # AdamW exp_avg + exp_avg_sq + gradients
    h = int(config.get("hidden_size") or 1024)
    layers = int(config.get("num_hidden_layers") or 12)
    heads = int(config.get("num_attention_heads") or 16)
    vocab = int(config.get("vocab_size") or 32000)
    inter = int(config.get("intermediate_size") or 4 * h)
    element = 4 if job.load_precision == "fp32" else 2
    passes = POLICY_PASSES.get(job.objective, 1)
    tokens = job.batch_size * job.cutoff_len * passes  # a preference example is `passes` sequences
    # per layer, per token (Korthikanti et al. 2022, adapted): attention + MLP intermediates and the scores
    per_layer = tokens * (10 * h + 3 * inter) * element + passes * job.batch_size * heads * job.cutoff_len**2 * element
    # with checkpointing: the layer inputs, plus one layer's intermediates while it is recomputed
    activations = layers * tokens * h * element + per_layer if job.gradient_checkpointing else layers * per_layer
    activations += tokens * vocab * 4 * 2  # fp32 logits and their gradient
    # the reference log-probs: the same sequences through the base with the adapter off, without gradients, so
    # only one layer's intermediates and the fp32 logits are held at a time
    reference = tokens * vocab * 4 + tokens * (10 * h + 3 * inter) * element if job.objective in NEEDS_REFERENCE else 0
    checkpoint = adapter * 3 + 64 * 1024  # adapter + optimizer moments + scheduler/RNG/state
    disk = checkpoint * (job.max_checkpoints + 1) + adapter
    return JobEstimate(
        weights, adapter, optimizer, int(activations), n_lora, checkpoint, disk, job.objective, int(reference)
    )


def check_disk(folder: Path, need: int) -> int:
    """Free bytes on the disk of `folder`; BudgetError when `need` (plus a margin) does not fit."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < need + DISK_MARGIN:
        raise BudgetError(
            f"Not enough disk space in {folder}: the checkpoints need {fmt_bytes(need)} "
            f"(plus {fmt_bytes(DISK_MARGIN)} spare) and {fmt_bytes(free)} is free.",
            "Free some disk space, keep fewer checkpoints, or use a smaller rank.",
        )
    return free


def steps_for(job: TrainJob, blocks: int, world: int = 1) -> tuple[int, int]:
    """(steps per epoch, total steps) for `blocks` packed sequences over `world` processes."""
    micro = max(1, math.ceil(blocks / (job.batch_size * world)))
    per_epoch = max(1, math.ceil(micro / job.grad_accum))
    total = job.max_steps or max(1, math.ceil(job.epochs * per_epoch))
    return per_epoch, total
