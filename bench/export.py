"""GGUF export: seconds to export a model to each format, and what each format costs in perplexity.

Exports the model (default: the offline starter, SmolLM2-135M-Instruct) to F16, Q8_0, Q5_K_M and Q4_K_M with
`studio.export`, then measures the perplexity of every file in llama.cpp (`Llama(logits_all=True)`, the rows'
tokens evaluated as they are) on the held-out rows of the sample dataset (assets/datasets/studio-faq.jsonl, split
as a fine-tune run splits it), against the unquantized transformers model on the same tokens. Prints seconds,
size and the perplexity ratio per format (targets: Q8_0 within 1 %, Q4_K_M within 10 %).

    python bench/export.py                       # the starter
    python bench/export.py --model PATH          # any covered model folder (Llama, Mistral, SmolLM2, Qwen2)
    python bench/export.py --formats f16,q8_0    # some formats only
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from studio.export import ExportRequest, export  # noqa: E402
from studio.training import rows as rowlib  # noqa: E402
from studio.training.datasets import load_dataset, split  # noqa: E402

DATASET = ROOT / "assets" / "datasets" / "studio-faq.jsonl"
FORMATS = ("f16", "q8_0", "q5_k_m", "q4_k_m")
TARGETS = {"q8_0": 1.01, "q4_k_m": 1.10}


def pick_model(args) -> Path:
    if args.model:
        return Path(args.model).expanduser().resolve()
    from studio.models.starter import ensure_starter

    return ensure_starter(ROOT / "studio-data" / "models")


def held_out_ids(model: Path, eval_fraction: float, seed: int) -> list[list[int]]:
    """The held-out rows (as RunManager.create splits them), through the chat template, as token ids."""
    _, evals = split(load_dataset(DATASET).samples, eval_fraction, seed)
    tokenizer = rowlib.load_tokenizer(model, offline=True)
    return [row.ids for row in rowlib.tokenize(evals, tokenizer, 4096, train_on_prompt=True)]


def transformers_ppl(model: Path, rows: list[list[int]]) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in rows:
            logits = lm(torch.tensor([ids])).logits[0, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum")
            total, count = total + float(nll), count + len(ids) - 1
    return math.exp(total / count)


def llamacpp_ppl(path: Path, rows: list[list[int]], threads: int) -> float:
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=max(len(r) for r in rows) + 8,
        logits_all=True,
        n_threads=threads,
        verbose=False,
    )
    total, count = 0.0, 0
    for ids in rows:
        llm.reset()
        llm.eval(ids)
        logits = np.asarray(llm.scores[: len(ids) - 1], dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        logprobs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        total -= float(logprobs[np.arange(len(ids) - 1), ids[1:]].sum())
        count += len(ids) - 1
    llm.close()
    return math.exp(total / count)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="a model folder (default: the starter)")
    p.add_argument("--formats", default=",".join(FORMATS), help="comma-separated, from " + ", ".join(FORMATS))
    p.add_argument("--out", type=Path, help="where the files go (default: a temporary folder, deleted after)")
    p.add_argument("--eval-fraction", type=float, default=0.1, help="held-out share of the dataset (as a run's)")
    p.add_argument("--seed", type=int, default=42, help="the split's seed (as a run's default)")
    p.add_argument("--threads", type=int, default=0, help="llama.cpp threads (default: all cores)")
    args = p.parse_args(argv)
    formats = [f.strip().lower() for f in args.formats.split(",") if f.strip()]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise SystemExit(f"unknown format(s): {', '.join(unknown)}")
    import os

    threads = args.threads or len(os.sched_getaffinity(0))
    model = pick_model(args)
    rows = held_out_ids(model, args.eval_fraction, args.seed)
    print(f"model: {model}\nheld-out rows: {len(rows)} ({sum(len(r) - 1 for r in rows)} predicted tokens)")
    reference = transformers_ppl(model, rows)
    print(f"transformers fp32 perplexity: {reference:.4f}\n")
    print(f"{'format':<8} {'export s':>9} {'size MB':>9} {'ppl':>9} {'ratio':>7}  target")
    holder = tempfile.TemporaryDirectory(prefix="bench-export-") if args.out is None else None
    out = Path(holder.name) if holder else args.out
    failed = False
    try:
        for fmt in formats:
            t0 = time.perf_counter()
            result = export(ExportRequest(str(model), fmt, out_dir=out, data_dir=out))
            seconds = time.perf_counter() - t0
            ppl = llamacpp_ppl(result.path, rows, threads)
            ratio = ppl / reference
            target = TARGETS.get(fmt)
            verdict = (
                "" if target is None else (f"<= {target:.2f} ok" if ratio <= target else f"<= {target:.2f} MISSED")
            )
            failed |= target is not None and ratio > target
            print(f"{fmt:<8} {seconds:9.1f} {result.bytes / 1e6:9.1f} {ppl:9.4f} {ratio:7.4f}  {verdict}")
    finally:
        if holder:
            holder.cleanup()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
