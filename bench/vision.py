"""Vision chat: the studio's ChatEngine path against a bare `generate` on the same model and processor, same run.

One image question, greedy, the same number of new tokens (EOS ignored). Both sides start the clock before the
image is processed (the bare side: the processor's chat template and image processor, then `generate`), so the time
to first token covers the same work. Prints tokens/s of both, the ratio (target >= 0.95) and the first-token times.

    python bench/vision.py                      # the tiny random LLaVA (studio/models/tiny.py), built in a temp dir
    python bench/vision.py --model PATH         # any local image-text-to-text folder (Qwen2.5-VL, SmolVLM, ...)
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio.config import StudioConfig  # noqa: E402
from studio.context import build_context  # noqa: E402
from studio.engines.chat import ChatParams  # noqa: E402
from studio.models.specs import ModelSpec  # noqa: E402

QUESTION = "Describe this picture in detail."


def picture():
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (448, 336), (30, 90, 160))
    draw = ImageDraw.Draw(img)
    draw.ellipse((120, 60, 330, 270), fill=(240, 200, 40))
    draw.rectangle((0, 280, 448, 336), fill=(40, 140, 60))
    return img


def messages(img) -> list[dict]:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}],
        }
    ]


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


def bare(lm, img, n: int) -> tuple[float, float]:
    """tokens/s and time to first token of the processor + a plain generate call."""
    import torch

    processor, model = lm.processor, lm.model
    timer = FirstTokenTimer()
    t0 = time.perf_counter()
    turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[img], return_tensors="pt").to(model.device)
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            streamer=timer,
            pad_token_id=lm.tokenizer.pad_token_id or lm.tokenizer.eos_token_id,
        )
    total = time.perf_counter() - t0
    new = out.shape[1] - inputs["input_ids"].shape[1]
    ttft = (timer.first or t0) - t0
    return (new - 1) / (total - ttft), ttft


def studio(ctx, spec, msgs, n: int) -> tuple[float, float]:
    params = ChatParams(temperature=0, max_new_tokens=n, repetition_penalty=1.0, ignore_eos=True)
    *_, last = ctx.chat.stream(spec, msgs, params)
    return last.stats.tokens_per_s, last.stats.ttft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a local image-text-to-text folder (default: the tiny random LLaVA)")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-vision-") as tmp:
        if args.model:
            folder = Path(args.model).resolve()
        else:
            from studio.models.tiny import ensure_tiny_vlm

            folder = ensure_tiny_vlm(Path(tmp) / "models")
        ctx = build_context(StudioConfig(device=args.device, data_dir=Path(tmp) / "data"), start_monitor=False)
        spec = ModelSpec("chat", str(folder), "folder", device=ctx.device)
        img = picture()
        msgs = messages(img)
        held, _ = ctx.chat.runtime_spec(spec, ChatParams())
        studio(ctx, spec, msgs, 8)  # loads the model and warms up
        with ctx.manager.acquire(held) as lease:
            lm = lease.model
            bare(lm, img, 8)
            s_tps, s_ttft, b_tps, b_ttft = [], [], [], []
            for i in range(args.runs):  # alternate, so drift in machine load hits both alike
                tps, ttft = studio(ctx, spec, msgs, args.tokens)
                s_tps.append(tps)
                s_ttft.append(ttft)
                tps, ttft = bare(lm, img, args.tokens)
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
    print(f"model: {held.name} ({held.kind}), one image, {args.tokens} new tokens, greedy, median of {args.runs}")
    print(f"studio streaming: {s:.1f} tok/s, time to first token {st * 1000:.0f} ms")
    print(f"bare processor + generate: {b:.1f} tok/s, time to first token {bt * 1000:.0f} ms")
    print(f"ratio studio/bare: {s / b:.3f}  (target >= 0.95)")
    print(f"time-to-first-token overhead: {(st - bt) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
