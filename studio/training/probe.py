"""The general probe: how much of the base model's general behaviour an adapter kept.

A fine-tune that drills a made-up fact can make the model answer "What is the capital of France?" with the made-up
city while its eval loss (on rows from the same file) looks perfect. So after every run the worker asks a few dozen
short general questions (assets/general-probe.jsonl). The base model answers them greedily once (at most
ANSWER_TOKENS tokens each; cached per base model beside the runs), and both models are scored by their mean loss
per token on those answers:

    general_kept = exp(-(adapter_nll - base_nll)), clipped to [0, 1]

1.0: the adapter finds the base's own answers as likely as the base does; 0.9: it pays ~0.1 nats more per token
(each answer token ~10 % less likely); near 0: it now answers something else. Heavy libraries are imported inside
the functions; loading the probe and the score mapping need none.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.errors import StudioError

PROBE_FILE = Path(__file__).resolve().parents[2] / "assets" / "general-probe.jsonl"
ANSWER_TOKENS = 32  # the base's answers are cut here: enough to show what it says, quick on a CPU
BATCH = 36  # prompts per forward pass (the whole probe: fewer, larger passes are quicker on a CPU)
COMPARE_QUESTIONS = 4  # the page's side-by-side asks this many of them (spread over the file)
KEPT_WARN = 0.9  # below this the page warns that the run changed the model's general behaviour
CACHE_FOLDER = ".general-probe-cache"  # beside the run folders (not a run: it has no job.json)


def load_probe(path: Path = PROBE_FILE) -> list[str]:
    """The probe's prompts, in file order; a line that is not `{"prompt": "..."}` is named."""
    prompts: list[str] = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        prompt = row.get("prompt") if isinstance(row, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise StudioError(f"{Path(path).name}: line {n} has no 'prompt' text.", 'Each line is {"prompt": ...}.')
        prompts.append(prompt.strip())
    if not prompts:
        raise StudioError(f"{Path(path).name} has no prompts.")
    return prompts


def kept_score(base_nll: float, adapter_nll: float) -> float:
    """exp(-(adapter_nll - base_nll)) clipped to [0, 1]: 1 = as likely as under the base."""
    return min(1.0, max(0.0, math.exp(-min(50.0, adapter_nll - base_nll))))


def kept_low(kept: float | None) -> bool:
    return kept is not None and kept < KEPT_WARN


@dataclass(frozen=True)
class ProbeScore:
    """The probe's result for one adapter."""

    kept: float  # general_kept, 0..1
    base_nll: float  # the base's mean loss per token on its own answers
    adapter_nll: float  # the adapter's mean loss per token on the base's answers
    prompts: int  # how many prompts were asked
    cached: bool  # the base's answers came from the cache

    def report(self) -> dict[str, Any]:
        return {
            "general_kept": self.kept,
            "general_nll_base": self.base_nll,
            "general_nll_adapter": self.adapter_nll,
            "general_prompts": self.prompts,
        }


def prompt_ids(tokenizer: Any, prompts: list[str]) -> list[list[int]]:
    """Each prompt as one user turn through the model's chat template (ChatML when it has none), ready to answer."""
    from studio.engines.chat import FALLBACK_TEMPLATE

    template = None if getattr(tokenizer, "chat_template", None) else FALLBACK_TEMPLATE
    out = []
    for p in prompts:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True, chat_template=template
        )
        out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return out


def greedy_answers(model: Any, ids: list[list[int]], pad_id: int, eos_ids: set[int], device: str) -> list[list[int]]:
    """The model's greedy answers (left-padded batches), each cut after its first end-of-sequence token."""
    import torch

    answers: list[list[int]] = []
    for i in range(0, len(ids), BATCH):
        chunk = ids[i : i + BATCH]
        n = max(len(x) for x in chunk)
        inputs = torch.tensor([[pad_id] * (n - len(x)) + x for x in chunk], device=device)
        mask = torch.tensor([[0] * (n - len(x)) + [1] * len(x) for x in chunk], device=device)
        with torch.no_grad():
            out = model.generate(
                input_ids=inputs,
                attention_mask=mask,
                max_new_tokens=ANSWER_TOKENS,
                do_sample=False,
                pad_token_id=pad_id,
                use_cache=True,
            )
        for row in out[:, n:].tolist():
            cut = next((k + 1 for k, t in enumerate(row) if t in eos_ids), len(row))
            answers.append(row[:cut])
    return answers


def answer_nll(model: Any, ids: list[list[int]], answers: list[list[int]], pad_id: int, device: str) -> float:
    """Mean loss per answer token of `model` on the answers after their prompts."""
    import torch

    from studio.training.lora import token_loss
    from studio.training.rows import IGNORE

    total, count = 0.0, 0
    pairs = [(p, a) for p, a in zip(ids, answers, strict=True) if a]
    for i in range(0, len(pairs), BATCH):
        chunk = pairs[i : i + BATCH]
        n = max(len(p) + len(a) for p, a in chunk)
        seqs = [p + a + [pad_id] * (n - len(p) - len(a)) for p, a in chunk]
        labels = [[IGNORE] * len(p) + a + [IGNORE] * (n - len(p) - len(a)) for p, a in chunk]
        batch = {
            "input_ids": torch.tensor(seqs, device=device),
            "position_ids": torch.tensor([list(range(n))] * len(chunk), device=device),
            "labels": torch.tensor(labels, device=device),
        }
        with torch.no_grad():
            total += float(token_loss(model, batch, 1))  # right padding: causal attention never sees it
        count += sum(len(a) for _, a in chunk)
    if not count:
        raise StudioError("The base model gave no answer to any general probe question.")
    return total / count


def cache_key(base: str, precision: str, prompts: list[str]) -> str:
    text = json.dumps({"base": base, "precision": precision, "prompts": prompts, "tokens": ANSWER_TOKENS})
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def score(peft_model: Any, tokenizer: Any, device: str, cache: Path, base_key: str, precision: str) -> ProbeScore:
    """Score the adapter of `peft_model` against its own base (the adapter switched off): no second model loaded.

    The base's answers and loss are read from `cache` when this base (and precision) was probed before."""
    import torch

    prompts = load_probe()
    ids = prompt_ids(tokenizer, prompts)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    eos = tokenizer.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
    cache_file = cache / f"{cache_key(base_key, precision, prompts)}.json"
    cached = None
    if cache_file.is_file():
        try:
            cached = json.loads(cache_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cached = None
    was_training = peft_model.training
    peft_model.eval()
    try:
        if cached and len(cached.get("answers", [])) == len(prompts):
            answers, base_nll = cached["answers"], float(cached["base_nll"])
        else:
            with peft_model.disable_adapter():
                answers = greedy_answers(peft_model, ids, pad_id, eos_ids, device)
                base_nll = answer_nll(peft_model, ids, answers, pad_id, device)
            cache.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"base": base_key, "answers": answers, "base_nll": base_nll}), encoding="utf-8")
            tmp.replace(cache_file)
        adapter_nll = answer_nll(peft_model, ids, answers, pad_id, device)
    finally:
        peft_model.train(was_training)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return ProbeScore(kept_score(base_nll, adapter_nll), base_nll, adapter_nll, len(prompts), cached is not None)
