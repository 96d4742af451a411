"""Known dimensions of catalog models, for sizing a model before it is downloaded.

The catalog (`studio.models.specs`) lists parameters, layers and KV heads; this adds what the runtime formulas
also need: the hidden, intermediate and vocabulary sizes of catalog chat models, openai-whisper's published
dimensions, and the native image size of catalog diffusion models.
"""

from __future__ import annotations

from typing import Any

from studio.models.formats import WeightsInfo
from studio.models.specs import catalog_entry

# Dimensions of catalog chat models that the catalog does not carry: (hub id, hidden, intermediate, vocab, tied)
KNOWN_CHAT_DIMS = (
    ("Qwen/Qwen2.5-7B-Instruct", 3584, 18944, 152064, False),
    ("meta-llama/Llama-3.1-8B-Instruct", 4096, 14336, 128256, False),
    ("mistralai/Mistral-7B-Instruct-v0.3", 4096, 14336, 32768, False),
    ("HuggingFaceTB/SmolLM2-1.7B-Instruct", 2048, 8192, 49152, True),
)
# openai-whisper model dimensions: name, n_mels, audio (layers, state, heads), text (layers, state, heads), vocab
WHISPER_DIMS = (
    ("tiny", 80, 4, 384, 6, 4, 384, 6, 51865),
    ("base", 80, 6, 512, 8, 6, 512, 8, 51865),
    ("small", 80, 12, 768, 12, 12, 768, 12, 51865),
    ("medium", 80, 24, 1024, 16, 24, 1024, 16, 51865),
    ("large-v1", 80, 32, 1280, 20, 32, 1280, 20, 51865),
    ("large-v2", 80, 32, 1280, 20, 32, 1280, 20, 51865),
    ("large-v3", 128, 32, 1280, 20, 32, 1280, 20, 51866),
    ("large", 128, 32, 1280, 20, 32, 1280, 20, 51866),
    ("turbo", 128, 32, 1280, 20, 4, 1280, 20, 51866),
    ("large-v3-turbo", 128, 32, 1280, 20, 4, 1280, 20, 51866),
)
# Native image size of catalog diffusion models (SDXL-Turbo was trained at 512 despite its SDXL UNet)
KNOWN_IMAGE_SIZES = (
    ("stable-diffusion-v1-5/stable-diffusion-v1-5", 512),
    ("stabilityai/sd-turbo", 512),
    ("stabilityai/sdxl-turbo", 512),
    ("stabilityai/stable-diffusion-xl-base-1.0", 1024),
)


def catalog_info(source: str) -> WeightsInfo | None:
    """What the catalog and the known dimensions say about `source`; None when they do not know it."""
    entry = catalog_entry(source)
    whisper = _whisper_dims(source)
    if entry is None and whisper is None:
        return None
    config: dict[str, Any] = {}
    params = entry.params if entry else 0
    quantizable = int(params * 0.9)
    if entry is not None and entry.kind == "chat":
        config = {"num_hidden_layers": entry.layers, "num_key_value_heads": entry.kv_heads, "head_dim": entry.head_dim}
        for hub_id, hidden, intermediate, vocab, tied in KNOWN_CHAT_DIMS:
            if hub_id == source:
                config.update(hidden_size=hidden, intermediate_size=intermediate, vocab_size=vocab)
                quantizable = params - vocab * hidden * (1 if tied else 2)
    elif entry is not None and entry.kind == "image":
        config = {"native_size": dict(KNOWN_IMAGE_SIZES).get(source, 1024 if params > 2_000_000_000 else 512)}
    if whisper is not None:
        config = whisper
        params = params or _whisper_params(whisper)
        quantizable = params - whisper["n_vocab"] * whisper["n_text_state"]
    return WeightsInfo(params, params * 2, {"F16": params}, "known dimensions", config, max(0, quantizable))


def _whisper_dims(name: str) -> dict[str, int] | None:
    """openai-whisper dims for a model name ("small", "small.en", "turbo", ...)."""
    english = name.endswith(".en")
    base = name[:-3] if english else name
    for row in WHISPER_DIMS:
        if row[0] == base:
            n_mels, a_layer, a_state, a_head, t_layer, t_state, t_head, vocab = row[1:]
            return {
                "n_mels": n_mels,
                "n_audio_ctx": 1500,
                "n_audio_state": a_state,
                "n_audio_head": a_head,
                "n_audio_layer": a_layer,
                "n_vocab": vocab - 1 if english else vocab,
                "n_text_ctx": 448,
                "n_text_state": t_state,
                "n_text_head": t_head,
                "n_text_layer": t_layer,
            }
    return None


def _whisper_params(d: dict[str, int]) -> int:
    """Parameter count from whisper dims (stored buffers included), for names the catalog does not list."""
    a, t = d["n_audio_state"], d["n_text_state"]
    encoder = d["n_mels"] * a * 3 + a * a * 3 + 2 * a + d["n_audio_layer"] * (12 * a * a + 13 * a)
    decoder = d["n_text_layer"] * (16 * t * t + 19 * t)
    embeddings = d["n_vocab"] * t + d["n_text_ctx"] * t + d["n_audio_ctx"] * a
    return encoder + decoder + embeddings + 2 * a + 2 * t
