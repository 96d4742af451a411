"""Chat throughput: the studio's streaming path against a bare call on the same model, same run, alternating.

Greedy, same prompt, same number of new tokens (EOS ignored so both produce exactly that many). Prints tokens/s of
both, the ratio (target >= 0.95) and the time to first token of both (target: overhead <= 50 ms).

- transformers: the studio against a bare `model.generate`;
- llama.cpp: the studio against a bare `llama_cpp.Llama.generate` loop on the same GGUF file (the model the
  studio loaded), and the studio's llama.cpp path against its transformers path on the starter (the speed-up);
  on a GPU also decode tokens/s against the memory-bandwidth bound (model bytes read per token / the card's
  bandwidth from NVML; target >= 0.8 of it).

    python bench/chat.py                          # both backends on the offline starter model
    python bench/chat.py --backend llamacpp       # llama.cpp only (the starter's GGUF, or --model FILE.gguf)
    python bench/chat.py --backend transformers --model PATH   # any local model folder
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


def bare_llama(lm, prompt_ids: list[int], n: int) -> tuple[float, float]:
    """tokens/s and time to first token of a plain llama-cpp-python generate loop (decoding each token's text,
    as any streaming client does)."""
    llm = lm.llm
    count, first = 0, None
    t0 = time.perf_counter()
    for token in llm.generate(prompt_ids, top_k=50, top_p=0.9, min_p=0.0, temp=0.0, repeat_penalty=1.0):
        count += 1
        if first is None:
            first = time.perf_counter()
        llm.detokenize([token])
        if count >= n:
            break
    total = time.perf_counter() - t0
    ttft = (first or t0) - t0
    return (count - 1) / (total - ttft), ttft


def studio(ctx, spec, n: int) -> tuple[float, float]:
    params = ChatParams(temperature=0, max_new_tokens=n, repetition_penalty=1.0, ignore_eos=True)
    *_, last = ctx.chat.stream(spec, PROMPT, params)
    return last.stats.tokens_per_s, last.stats.ttft


def compare(ctx, spec, bare_fn, args) -> tuple[float, float]:
    """Alternating runs of the studio and the bare call; prints the figures; the studio's median tok/s, ttft."""
    from studio.engines.llamacpp import LlamaCppLM

    runtime, _ = ctx.chat.runtime_spec(spec, ChatParams(max_new_tokens=args.tokens))
    studio(ctx, spec, 8)  # loads the model and warms up
    with ctx.manager.acquire(runtime) as lease:
        lm = lease.model
        engine = "llama.cpp" if isinstance(lm, LlamaCppLM) else "transformers"
        prompt_ids, _ = ctx.chat.build_prompt(lm, PROMPT, ChatParams(max_new_tokens=args.tokens))
        bare_fn(lm, prompt_ids, 8)
        s_tps, s_ttft, b_tps, b_ttft = [], [], [], []
        for i in range(args.runs):  # alternate, so drift in machine load hits both alike
            tps, ttft = studio(ctx, spec, args.tokens)
            s_tps.append(tps)
            s_ttft.append(ttft)
            tps, ttft = bare_fn(lm, prompt_ids, args.tokens)
            b_tps.append(tps)
            b_ttft.append(ttft)
            print(
                f"[{engine}] run {i + 1}: studio {s_tps[-1]:.1f} tok/s (ttft {s_ttft[-1] * 1000:.0f} ms), "
                f"bare {b_tps[-1]:.1f} tok/s (ttft {b_ttft[-1] * 1000:.0f} ms)",
                flush=True,
            )
        weights = lm.layout.weights_bytes if isinstance(lm, LlamaCppLM) else None
    s, b = statistics.median(s_tps), statistics.median(b_tps)
    st, bt = statistics.median(s_ttft), statistics.median(b_ttft)
    bare_name = "bare Llama.generate" if engine == "llama.cpp" else "bare generate"
    print(f"[{engine}] model: {spec.name}, {args.tokens} new tokens, greedy, median of {args.runs}")
    print(f"[{engine}] studio streaming: {s:.1f} tok/s, time to first token {st * 1000:.0f} ms")
    print(f"[{engine}] {bare_name}: {b:.1f} tok/s, time to first token {bt * 1000:.0f} ms")
    print(f"[{engine}] ratio studio/bare: {s / b:.3f}  (target >= 0.95)")
    print(f"[{engine}] time-to-first-token overhead: {(st - bt) * 1000:.0f} ms  (target <= 50 ms)")
    if weights and ctx.device == "cuda":
        bandwidth = card_bandwidth()
        if bandwidth:
            bound = bandwidth / weights
            print(
                f"[{engine}] bandwidth bound: {bound:.1f} tok/s ({weights / 1e9:.2f} GB per token at "
                f"{bandwidth / 1e9:.0f} GB/s); studio reaches {s / bound:.2f} of it  (target >= 0.8)"
            )
    return s, st


def card_bandwidth() -> float | None:
    """The GPU's memory bandwidth in bytes/s from NVML: 2 transfers per memory clock times the bus width."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        clock = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM) * 1e6
        width = pynvml.nvmlDeviceGetMemoryBusWidth(handle)
        return 2 * clock * width / 8
    except Exception:  # noqa: BLE001 - no NVML, or a field this driver does not report
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a local model folder, or a .gguf file (default: the starter model)")
    parser.add_argument("--backend", choices=("both", "llamacpp", "transformers"), default="both")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    parser.add_argument(
        "--data-dir", help="the studio data dir (default: the studio's own; the starter model is converted there once)"
    )
    args = parser.parse_args()
    config = StudioConfig(device=args.device, **({"data_dir": Path(args.data_dir)} if args.data_dir else {}))
    ctx = build_context(config, start_monitor=False)
    from studio.engines import llamacpp
    from studio.models.starter import starter_llamacpp_spec, starter_spec

    results = {}
    if args.backend in ("both", "transformers"):
        if args.model and not args.model.endswith(".gguf"):
            spec = ModelSpec("chat", str(Path(args.model).resolve()), "folder", device=ctx.device)
        else:
            spec = starter_spec(ctx.device)
        results["transformers"] = compare(ctx, spec, bare, args)
        ctx.manager.unload_all()
    if args.backend in ("both", "llamacpp"):
        if not llamacpp.available():
            sys.exit(f"llama.cpp is not installed ({llamacpp.unavailable_reason()}); run bash scripts/setup.sh")
        if args.model and args.model.endswith(".gguf"):
            spec = ModelSpec("chat", str(Path(args.model).resolve()), "file", device=ctx.device, backend="llama.cpp")
        else:
            spec = starter_llamacpp_spec(ctx.device)
        results["llama.cpp"] = compare(ctx, spec, bare_llama, args)
    ctx.close()
    if len(results) == 2 and not args.model:
        (t_tps, t_ttft), (l_tps, l_ttft) = results["transformers"], results["llama.cpp"]
        print(
            f"studio llama.cpp vs studio transformers on the starter: {l_tps:.1f} vs {t_tps:.1f} tok/s, "
            f"speed-up {l_tps / t_tps:.2f}x; time to first token {l_ttft * 1000:.0f} vs {t_ttft * 1000:.0f} ms"
        )


if __name__ == "__main__":
    main()
