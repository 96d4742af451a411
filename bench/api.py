"""API overhead: /v1/chat/completions and /v1/completions (and /v1/embeddings when an embedding model is given)
against calling the engine directly, on the same loaded model, in the same process, alternating.

The studio's server runs in this process (the same `serve()` as `python launch.py`); the official `openai` client
calls it over HTTP on 127.0.0.1, and the direct call is `ctx.chat.stream(...)` / `ctx.chat.stream_prompt(...)` on
the same ChatEngine, so both answer with the one model the manager holds. Greedy, the same prompt and the same
number of new tokens (128 by default). Prints tokens/s both ways and the ratio (target: API/direct >= 1/1.05, i.e.
the API takes at most 5 % longer), and the first-token overhead of streaming chat (target <= 20 ms).

    python bench/api.py                          # the offline starter, through llama.cpp
    python bench/api.py --model PATH             # a model folder (transformers) or a .gguf file (llama.cpp)
    python bench/api.py --embedding PATH         # also /v1/embeddings against the engine, with that model
    python bench/api.py --embedding minilm       # ... with a random encoder of all-MiniLM-L6-v2's size
    python bench/api.py --cpu-threads 1          # llama.cpp on one thread: a core left for the server and client
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio.config import StudioConfig  # noqa: E402
from studio.context import build_context  # noqa: E402
from studio.engines.chat import ChatParams  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]
TEXT = "Once upon a time, on a rocky island far out at sea, there lived a lighthouse keeper who"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(ctx, port: int):
    from studio.api import serve
    from studio.ui.layout import build_app

    app = build_app(ctx)
    serve(app, ctx, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return app


def chat_api(client, model: str, n: int) -> tuple[int, float, float]:
    """(new tokens, seconds, seconds to the first token) of a streamed chat reply."""
    t0 = time.perf_counter()
    first, tokens = None, 0
    stream = client.chat.completions.create(
        model=model,
        messages=PROMPT,
        max_tokens=n,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"repetition_penalty": 1.0},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter()
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    total = time.perf_counter() - t0
    return tokens, total, (first or t0) - t0


def chat_direct(ctx, spec, n: int) -> tuple[int, float, float]:
    params = ChatParams(temperature=0, max_new_tokens=n, repetition_penalty=1.0)
    t0 = time.perf_counter()
    first = None
    for chunk in ctx.chat.stream(spec, PROMPT, params):
        if chunk.delta and first is None:
            first = time.perf_counter()
        last = chunk
    return last.stats.new_tokens, time.perf_counter() - t0, (first or t0) - t0


def completion_api(client, model: str, n: int) -> tuple[int, float]:
    t0 = time.perf_counter()
    r = client.completions.create(
        model=model, prompt=TEXT, max_tokens=n, temperature=0, extra_body={"repetition_penalty": 1.0}
    )
    return r.usage.completion_tokens, time.perf_counter() - t0


def completion_direct(ctx, spec, n: int) -> tuple[int, float]:
    params = ChatParams(temperature=0, max_new_tokens=n, repetition_penalty=1.0)
    t0 = time.perf_counter()
    *_, last = ctx.chat.stream_prompt(spec, TEXT, params)
    return last.stats.new_tokens, time.perf_counter() - t0


def report(name: str, api: list[tuple], direct: list[tuple]) -> None:
    a_rate = statistics.median(t / s for t, s, *_ in api)
    d_rate = statistics.median(t / s for t, s, *_ in direct)
    print(f"[{name}] API {a_rate:.1f}/s, direct {d_rate:.1f}/s (wall time, request to last token or vector)")
    print(f"[{name}] ratio API/direct: {a_rate / d_rate:.3f}  (target >= {1 / 1.05:.3f}: at most 5 % slower)")
    if len(api[0]) > 2:
        overhead = statistics.median(x[2] for x in api) - statistics.median(x[2] for x in direct)
        print(f"[{name}] first-token overhead: {overhead * 1000:.1f} ms  (target <= 20 ms)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="a model folder or a .gguf file (default: the starter on llama.cpp)")
    p.add_argument(
        "--embedding",
        help="an embedding model folder, or 'minilm' for a random encoder of all-MiniLM-L6-v2's size built here: "
        "also measure /v1/embeddings",
    )
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--data-dir", help="the studio data dir (default: the studio's own)")
    p.add_argument(
        "--cpu-threads", type=int, default=0, help="llama.cpp's CPU threads, as launch.py's flag (0: one per core)"
    )
    args = p.parse_args()
    from openai import OpenAI

    from studio.engines import llamacpp
    from studio.models.starter import starter_llamacpp_spec

    config = StudioConfig(
        device=args.device,
        cpu_threads=args.cpu_threads,
        **({"data_dir": Path(args.data_dir)} if args.data_dir else {}),
    )
    ctx = build_context(config, start_monitor=False)
    port = free_port()
    app = start(ctx, port)
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)
    if args.model:
        spec = llamacpp.chat_spec(ctx.device, str(Path(args.model).resolve()), llamacpp.AUTO)
    else:
        spec = starter_llamacpp_spec(ctx.device)
    from studio.api.openai import api_id, resolve_model

    model = api_id(spec)  # the id /v1/models lists it under
    threads = args.cpu_threads or llamacpp.cpu_cores()
    print(
        f"model {spec.name} ({llamacpp.engine_label(spec)}), {args.tokens} new tokens, greedy, {args.runs} runs, "
        f"{threads} llama.cpp threads of {llamacpp.cpu_cores()} cores"
    )
    chat_api(client, model, 8)  # loads and warms up
    spec = resolve_model(ctx, model).spec  # the very model the API answers with (a variant would reload)
    chat_direct(ctx, spec, 8)
    api, direct = [], []
    for i in range(args.runs):
        api.append(chat_api(client, model, args.tokens))
        direct.append(chat_direct(ctx, spec, args.tokens))
        print(
            f"chat run {i + 1}: API {api[-1][0]} tokens in {api[-1][1]:.2f} s, direct {direct[-1][0]} in {direct[-1][1]:.2f} s"
        )
    report("chat", api, direct)
    api, direct = [], []
    for _ in range(args.runs):
        api.append(completion_api(client, model, args.tokens))
        direct.append(completion_direct(ctx, spec, args.tokens))
    report("completions", api, direct)
    if args.embedding:
        embeddings(ctx, client, args)
    app.close()
    ctx.close()


def embeddings(ctx, client, args) -> None:
    """/v1/embeddings against the engine's own call on the same loaded model, 32 texts a request."""
    from studio.models.specs import spec_from_form

    texts = [f"{TEXT} ({i})" for i in range(32)]
    folder = Path(args.embedding)
    if args.embedding == "minilm":  # all-MiniLM-L6-v2's shape (6 layers of 384, 12 heads), random weights
        from studio.models.tiny import build_tiny_encoder

        folder = ctx.paths.models / "bench-minilm-sized"
        if not (folder / "config.json").exists():
            build_tiny_encoder(folder, hidden_size=384, num_layers=6, num_heads=12, max_position_embeddings=512)
    spec = spec_from_form(ctx.device, "embedding", str(folder.resolve()), "fp32")
    ctx.embedding.embed(spec, texts)  # loads it under the manager; the API then names it
    for _ in range(2):
        client.embeddings.create(model=spec.source, input=texts)
    api, direct = [], []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        client.embeddings.create(model=spec.source, input=texts)
        api.append((len(texts), time.perf_counter() - t0))
        t0 = time.perf_counter()
        ctx.embedding.embed(spec, texts)
        direct.append((len(texts), time.perf_counter() - t0))
    report("embeddings, texts/s", api, direct)


if __name__ == "__main__":
    main()
