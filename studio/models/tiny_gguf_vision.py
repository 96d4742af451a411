"""A tiny random GGUF vision model for tests and smoke runs, built offline: the tiny Llama of studio.models.tiny
exported to GGUF by the studio's own converter, and beside it a tiny projector (`mmproj-*.gguf`) in llama.cpp's
CLIP layout with a LLaVA-style MLP projector (the keys and tensor names of llama.cpp's tools/mtmd/clip.cpp).

The projector's encoder: a 28x28 image cut into 14x14 patches (4 image tokens), one transformer block of width 32,
then mm.0 -> GELU -> mm.2 up to the language model's embedding length. Random weights: different images give
different image embeddings, so the model's logits show whether the image reached it.
"""

from __future__ import annotations

from pathlib import Path

IMAGE_SIZE = 28
PATCH_SIZE = 14
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # what one image costs in the context (no CLS token for "mlp")


def build_tiny_mmproj(
    path: Path, *, projection_dim: int, seed: int = 0, hidden: int = 32, ffn: int = 64, heads: int = 2, blocks: int = 1
) -> Path:
    """A projector GGUF whose image tokens have `projection_dim` numbers (the language model's embedding length)."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_bool(gguf.Keys.Clip.HAS_VISION_ENCODER, True)
    writer.add_bool(gguf.Keys.Clip.HAS_LLAVA_PROJECTOR, True)
    writer.add_string(gguf.Keys.Clip.PROJECTOR_TYPE, "mlp")
    v = gguf.Keys.ClipVision
    for key, value in (
        (v.IMAGE_SIZE, IMAGE_SIZE),
        (v.PATCH_SIZE, PATCH_SIZE),
        (v.EMBEDDING_LENGTH, hidden),
        (v.FEED_FORWARD_LENGTH, ffn),
        (v.PROJECTION_DIM, projection_dim),
        (v.BLOCK_COUNT, blocks),
        (v.Attention.HEAD_COUNT, heads),
    ):
        writer.add_uint32(key, value)
    writer.add_float32(v.Attention.LAYERNORM_EPS, 1e-5)
    writer.add_array(v.IMAGE_MEAN, [0.5, 0.5, 0.5])
    writer.add_array(v.IMAGE_STD, [0.5, 0.5, 0.5])
    writer.add_bool(v.USE_GELU, True)

    def tensor(name: str, *shape: int, norm: bool = False) -> None:
        values = 1.0 + rng.normal(0, 0.1, shape) if norm else rng.normal(0, 0.2, shape)
        writer.add_tensor(name, values.astype(np.float32))

    # shapes as PyTorch has them (out, in); the writer stores them reversed, as ggml expects
    tensor("v.patch_embd.weight", hidden, 3, PATCH_SIZE, PATCH_SIZE)
    tensor("v.class_embd", hidden)
    tensor("v.position_embd.weight", IMAGE_TOKENS + 1, hidden)
    tensor("v.pre_ln.weight", hidden, norm=True)
    tensor("v.pre_ln.bias", hidden)
    for i in range(blocks):
        for part in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensor(f"v.blk.{i}.{part}.weight", hidden, hidden)
            tensor(f"v.blk.{i}.{part}.bias", hidden)
        for part in ("ln1", "ln2"):
            tensor(f"v.blk.{i}.{part}.weight", hidden, norm=True)
            tensor(f"v.blk.{i}.{part}.bias", hidden)
        tensor(f"v.blk.{i}.ffn_up.weight", ffn, hidden)
        tensor(f"v.blk.{i}.ffn_up.bias", ffn)
        tensor(f"v.blk.{i}.ffn_down.weight", hidden, ffn)
        tensor(f"v.blk.{i}.ffn_down.bias", hidden)
    tensor("mm.0.weight", projection_dim, hidden)
    tensor("mm.0.bias", projection_dim)
    tensor("mm.2.weight", projection_dim, projection_dim)
    tensor("mm.2.bias", projection_dim)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def build_tiny_gguf_vlm(folder: Path, *, seed: int = 0) -> Path:
    """`folder`/tiny-vlm.gguf (the tiny Llama at F16, hidden size 64) and `folder`/mmproj-tiny-vlm.gguf beside it;
    returns the model file."""
    from studio.export import ExportRequest, export
    from studio.models.tiny import build_tiny_causal_lm

    folder = Path(folder)
    lm = build_tiny_causal_lm(folder / "hf", seed=seed, hidden_size=64)
    result = export(ExportRequest(str(lm), "f16", out_dir=folder, name="tiny-vlm", data_dir=folder / "data"))
    build_tiny_mmproj(folder / "mmproj-tiny-vlm.gguf", projection_dim=64, seed=seed)
    return result.path
