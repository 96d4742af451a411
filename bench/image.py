"""Image generation: the studio's path against a bare call of the same diffusers pipeline, same settings, same run.

The studio's path is `ctx.image.generate()`: input checks, the memory plan, the manager's lease, the scheduler swap,
the step callback (progress and stop), the OOM guard, and writing each PNG with its parameters. The bare call is
`pipe(...)` on the very same pipeline object with the same scheduler, seed, steps and size, keeping the images in
memory. Runs alternate so drift in machine load hits both alike. Prints the best and median times and the ratio of
the best times (as timeit advises: other processes only ever add time), target <= 1.05.

    python bench/image.py                                   # the tiny test pipeline on the CPU, 256x256, 20 steps
    python bench/image.py --model stabilityai/sd-turbo --size 512 --steps 4     # a real model (GPU)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio.config import StudioConfig  # noqa: E402
from studio.context import build_context  # noqa: E402
from studio.engines.image_params import ImageParams, sampler_named  # noqa: E402
from studio.models.specs import spec_from_form  # noqa: E402

PROMPT = "a lighthouse on a cliff at dusk, oil painting"


def bare(pipe, params: ImageParams) -> float:
    import diffusers
    import torch

    s = sampler_named(params.sampler)
    old = pipe.scheduler
    pipe.scheduler = getattr(diffusers, s.scheduler).from_config(old.config, **dict(s.options))
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator("cpu").manual_seed(params.seed + i) for i in range(params.batch_size)]
    t0 = time.perf_counter()
    with torch.inference_mode():
        pipe(
            prompt=params.prompt,
            num_inference_steps=params.steps,
            guidance_scale=params.cfg_scale,
            width=params.width,
            height=params.height,
            num_images_per_prompt=params.batch_size,
            generator=generators,
        )
    _sync()
    seconds = time.perf_counter() - t0
    pipe.scheduler = old
    return seconds


def studio(ctx, spec, params: ImageParams) -> float:
    t0 = time.perf_counter()
    *_, last = ctx.image.generate(spec, params)
    _sync()
    assert last.report is not None and len(last.images) == params.batch_size
    return time.perf_counter() - t0


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a Hub id, diffusers folder or .safetensors file (default: the test pipeline)")
    parser.add_argument("--size", type=int, default=256, help="width and height in pixels (default 256)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--sampler", default="Euler a")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--data-dir", help="the studio data dir (default: a temporary folder)")
    args = parser.parse_args()
    data_dir = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="bench-image-"))
    ctx = build_context(StudioConfig(device=args.device, data_dir=data_dir), start_monitor=False)
    precision = "fp16" if ctx.device == "cuda" else "fp32"
    if args.model:
        spec = spec_from_form(ctx.device, "image", args.model, precision)
    else:
        ctx.image.ensure_tiny()
        spec = ctx.image.tiny_spec(precision)
    params = ImageParams(
        prompt=PROMPT,
        sampler=args.sampler,
        steps=args.steps,
        cfg_scale=args.cfg,
        width=args.size,
        height=args.size,
        seed=1234,
        batch_size=args.batch,
    )
    studio(ctx, spec, params)  # load, and warm up both paths at the measured size
    with ctx.manager.acquire(spec) as lease:
        bare(lease.model, params)
    s_times, b_times = [], []
    for i in range(args.runs):
        s_times.append(studio(ctx, spec, params))
        with ctx.manager.acquire(spec) as lease:
            b_times.append(bare(lease.model, params))
        print(f"run {i + 1}: studio {s_times[-1]:.3f} s, bare {b_times[-1]:.3f} s", flush=True)
    ctx.close()
    s, b = min(s_times), min(b_times)
    sm, bm = statistics.median(s_times), statistics.median(b_times)
    print(
        f"model: {spec.name} on {ctx.device} ({precision}), {args.size}x{args.size}, {args.steps} steps, "
        f"{args.sampler}, CFG {args.cfg:g}, batch {args.batch}, {args.runs} runs each"
    )
    print(f"studio generate (PNG + parameters written): best {s:.3f} s, median {sm:.3f} s")
    print(f"bare pipeline call:                         best {b:.3f} s, median {bm:.3f} s")
    print(f"ratio studio/bare (best of {args.runs}): {s / b:.3f}  (target <= 1.05); medians: {sm / bm:.3f}")


if __name__ == "__main__":
    main()
