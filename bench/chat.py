"""Chat throughput: the studio's streaming path against a bare `model.generate` on the same model, same run.

Greedy, same prompt, same number of new tokens (EOS ignored so both produce exactly that many). Prints tokens/s of
both, the ratio (target >= 0.95) and the time to first token of both (target: overhead <= 50 ms).

    python bench/chat.py                      # the offline starter model (SmolLM2-135M-Instruct)
    python bench/chat.py --model PATH         # any local model folder
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio.config import StudioConfig  # noqa: E402
from studio.context import build_context  # noqa: E402
from studio.engines.chat import ChatParams  # noqa: E402
from studio.models.specs import ModelSpec  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper and a storm."}]


class FirstTokenTimer:
    """A transformers streamer that only notes when the first new token arrives."""

    def __init__(self) -> None:
        self.first: float | None = None
        self._prompt = True

    def put(self, value) -> None:
        if self._prompt:
            self._prompt = False
        elif self.first is None:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def bare(lm, prompt_ids: list[int], n: int) -> tuple[float, float]:
    """tokens/s and time to first token of a plain generate call."""
    import torch

    timer = FirstTokenTimer()
    ids = torch.tensor([prompt_ids], device=next(lm.model.parameters()).device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = lm.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            streamer=timer,
            pad_token_id=lm.tokenizer.eos_token_id,
        )
    total = time.perf_counter() - t0
    new = out.shape[1] - ids.shape[1]
    ttft = (timer.first or t0) - t0
    return (new - 1) / (total - ttft), ttft


def studio(ctx, spec, n: int) -> tuple[float, float]:
    params = ChatParams(temperature=0, max_new_tokens=n, repetition_penalty=1.0, ignore_eos=True)
    *_, last = ctx.chat.stream(spec, PROMPT, params)
    return last.stats.tokens_per_s, last.stats.ttft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a local model folder (default: the starter model)")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--data-dir", help="the studio data dir (default: the studio's own; the starter model is converted there once)"
    )
    args = parser.parse_args()
    config = StudioConfig(device="cpu", **({"data_dir": Path(args.data_dir)} if args.data_dir else {}))
    ctx = build_context(config, start_monitor=False)
    if args.model:
        spec = ModelSpec("chat", str(Path(args.model).resolve()), "folder")
    else:
        from studio.models.starter import starter_spec

        spec = starter_spec(ctx.device)
    with ctx.manager.acquire(spec) as lease:
        lm = lease.model
        prompt_ids, _ = ctx.chat.build_prompt(lm, PROMPT, ChatParams(max_new_tokens=args.tokens))
        bare(lm, prompt_ids, 8)  # warm-up
        studio(ctx, spec, 8)
        s_tps, s_ttft, b_tps, b_ttft = [], [], [], []
        for i in range(args.runs):  # alternate, so drift in machine load hits both alike
            tps, ttft = studio(ctx, spec, args.tokens)
            s_tps.append(tps)
            s_ttft.append(ttft)
            tps, ttft = bare(lm, prompt_ids, args.tokens)
            b_tps.append(tps)
            b_ttft.append(ttft)
            print(
                f"run {i + 1}: studio {s_tps[-1]:.1f} tok/s (ttft {s_ttft[-1] * 1000:.0f} ms), "
                f"bare {b_tps[-1]:.1f} tok/s (ttft {b_ttft[-1] * 1000:.0f} ms)",
                flush=True,
            )
    ctx.close()
    s, b = statistics.median(s_tps), statistics.median(b_tps)
    st, bt = statistics.median(s_ttft), statistics.median(b_ttft)
    print(f"model: {spec.name}, {args.tokens} new tokens, greedy, median of {args.runs}")
    print(f"studio streaming: {s:.1f} tok/s, time to first token {st * 1000:.0f} ms")
    print(f"bare generate:    {b:.1f} tok/s, time to first token {bt * 1000:.0f} ms")
    print(f"ratio studio/bare: {s / b:.3f}  (target >= 0.95)")
    print(f"time-to-first-token overhead: {(st - bt) * 1000:.0f} ms  (target <= 50 ms)")


if __name__ == "__main__":
    main()
