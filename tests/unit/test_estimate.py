"""Sizes before loading: headers, metadata and archive entries are read; the weights never are."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from studio.errors import ModelLoadError
from studio.models import estimate as est
from studio.models.estimate import (
    Estimate,
    Workload,
    estimate,
    load_precision,
    runtime_bytes,
    tensor_bytes,
    weights_bytes,
    weights_info,
)
from studio.models.formats import WeightsInfo
from studio.models.specs import BYTES_PER_PARAM, ModelSpec

GB = 10**9
LLAMA_CONFIG = {
    "model_type": "llama",
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "hidden_size": 64,
    "intermediate_size": 128,
    "vocab_size": 100,
    "max_position_embeddings": 512,
}


def folder_spec(path: Path, kind: str = "chat", **kw) -> ModelSpec:
    return ModelSpec(kind, str(path), "folder", **kw)


def file_spec(path: Path, kind: str = "chat", **kw) -> ModelSpec:
    return ModelSpec(kind, str(path), "file", **kw)


def write_config(folder: Path, config: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")


# ----- safetensors ----------------------------------------------------------------------------------------


def test_safetensors_file_counts_elements_bytes_and_dtypes_exactly(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file(
        {
            "layer.weight": torch.zeros(3, 4),
            "layer.bias": torch.zeros(5, dtype=torch.float16),
            "position_ids": torch.arange(7),
        },
        path,
        metadata={"format": "pt"},
    )
    info = weights_info(file_spec(path))
    assert (info.params, info.stored_bytes) == (12 + 5 + 7, 48 + 10 + 56)
    assert info.dtypes == {"F32": 12, "F16": 5, "I64": 7}
    assert info.method == "safetensors header"
    assert info.quantizable_params == 12  # only the 2-D weight
    assert weights_bytes(info, "fp16") == (12 + 5) * 2 + 56  # integer tensors keep their stored size
    assert weights_bytes(info, "fp32") == (12 + 5) * 4 + 56


def test_sharded_folder_reads_the_index_and_config(tmp_path):
    folder = tmp_path / "lm"
    write_config(folder, {**LLAMA_CONFIG, "text_config": {"vocab_size": 321}})
    save_file({"a.weight": torch.zeros(10, 10)}, folder / "model-00001-of-00002.safetensors")
    save_file({"b.weight": torch.zeros(2, 10, dtype=torch.bfloat16)}, folder / "model-00002-of-00002.safetensors")
    save_file({"stray.weight": torch.zeros(1000)}, folder / "not-in-the-index.safetensors")
    index = {
        "metadata": {"total_size": 440},
        "weight_map": {"a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"},
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    info = weights_info(folder_spec(folder))
    assert info.params == 120 and info.stored_bytes == 400 + 40
    assert info.dtypes == {"F32": 100, "BF16": 20}
    assert info.config["num_hidden_layers"] == 2 and info.config["vocab_size"] == 321  # text_config lifted


def test_sharded_folder_with_a_missing_shard_says_so(tmp_path):
    folder = tmp_path / "lm"
    folder.mkdir()
    save_file({"a.weight": torch.zeros(2)}, folder / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    with pytest.raises(ModelLoadError, match="missing"):
        weights_info(folder_spec(folder))


def test_folder_counts_one_set_of_variant_files(tmp_path):
    both = tmp_path / "both"
    both.mkdir()
    save_file({"w": torch.zeros(8, 8)}, both / "model.safetensors")
    save_file({"w": torch.zeros(8, 8, dtype=torch.float16)}, both / "model.fp16.safetensors")
    info = weights_info(folder_spec(both))
    assert info.params == 64 and info.dtypes == {"F32": 64}
    only_fp16 = tmp_path / "fp16"
    only_fp16.mkdir()
    save_file({"w": torch.zeros(8, 8, dtype=torch.float16)}, only_fp16 / "model.fp16.safetensors")
    assert weights_info(folder_spec(only_fp16)).dtypes == {"F16": 64}


def test_diffusers_folder_sums_components_and_finds_native_size(tmp_path):
    root = tmp_path / "sd"
    root.mkdir()
    index = {
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
    }
    (root / "model_index.json").write_text(json.dumps(index), encoding="utf-8")
    write_config(root / "unet", {"sample_size": 8, "block_out_channels": [32, 64]})
    save_file({"conv.weight": torch.zeros(10, 10)}, root / "unet" / "diffusion_pytorch_model.safetensors")
    save_file(
        {"conv.weight": torch.zeros(10, 10, dtype=torch.float16)},
        root / "unet" / "diffusion_pytorch_model.fp16.safetensors",
    )
    write_config(root / "vae", {"block_out_channels": [32, 32, 32, 32]})
    save_file({"dec.weight": torch.zeros(5, 4)}, root / "vae" / "diffusion_pytorch_model.safetensors")
    write_config(root / "text_encoder", {"hidden_size": 32})
    save_file({"emb.weight": torch.zeros(3, 2)}, root / "text_encoder" / "model.safetensors")
    write_config(root / "safety_checker", {})
    save_file({"big.weight": torch.zeros(1000, 10)}, root / "safety_checker" / "model.safetensors")
    write_config(root / "scheduler", {"num_train_timesteps": 1000})
    info = weights_info(folder_spec(root, "image"))
    assert info.params == 100 + 20 + 6  # fp16 duplicates and the safety checker are not counted
    assert info.config["components"] == {"unet": 100, "vae": 20, "text_encoder": 6}
    assert info.config["vae_scale_factor"] == 8 and info.config["native_size"] == 64


# ----- GGUF -----------------------------------------------------------------------------------------------


def test_gguf_metadata_and_tensor_infos(tmp_path):
    np = pytest.importorskip("numpy")
    gguf = pytest.importorskip("gguf")
    from gguf.quants import quantize

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_context_length(256)
    writer.add_embedding_length(32)
    writer.add_feed_forward_length(64)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_token_list([f"t{i}" for i in range(10)])
    writer.add_tensor("token_embd.weight", np.zeros((10, 32), np.float16))
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((32, 32), np.float32))
    q8 = quantize(np.ones((64, 32), np.float32), gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("blk.0.ffn_up.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("output_norm.weight", np.ones(32, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    info = weights_info(file_spec(path))
    assert info.method == "gguf metadata"
    assert info.params == 320 + 1024 + 2048 + 32
    assert info.dtypes == {"F16": 320, "F32": 1024 + 32, "Q8_0": 2048}
    assert info.stored_bytes == 640 + 4096 + 2048 // 32 * 34 + 128
    assert info.quantizable_params == 1024 + 2048  # not the embedding, not the norm
    c = info.config
    assert (c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"]) == (2, 4, 2)
    assert (c["hidden_size"], c["head_dim"], c["max_position_embeddings"], c["vocab_size"]) == (32, 8, 256, 10)
    # transformers dequantizes GGUF to the load precision
    assert estimate(file_spec(path, precision="fp32")).weights_bytes == info.params * 4


def test_damaged_gguf_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 20)
    with pytest.raises(ModelLoadError, match="not a readable GGUF file"):
        weights_info(file_spec(path))


# ----- torch checkpoint archives --------------------------------------------------------------------------

WHISPER_DIMS = {
    "n_mels": 80,
    "n_audio_ctx": 30,
    "n_audio_state": 8,
    "n_audio_head": 2,
    "n_audio_layer": 1,
    "n_vocab": 50,
    "n_text_ctx": 16,
    "n_text_state": 8,
    "n_text_head": 2,
    "n_text_layer": 1,
}


def test_whisper_checkpoint_is_sized_without_unpickling_tensors(tmp_path, monkeypatch):
    path = tmp_path / "whisper.pt"
    embedding = torch.zeros(50, 8, dtype=torch.float16)
    state = {
        "decoder.token_embedding.weight": embedding,
        "decoder.tied": embedding,  # stored once
        "encoder.conv1.weight": torch.zeros(8, 80, 3, dtype=torch.float16),
        "encoder.ln.weight": torch.ones(8),
    }
    torch.save({"dims": WHISPER_DIMS, "model_state_dict": state}, path)

    def no_torch_load(*args, **kwargs):
        raise AssertionError("torch.load must not be called to estimate")

    monkeypatch.setattr(torch, "load", no_torch_load)
    info = weights_info(file_spec(path, "speech"))
    assert info.method == "checkpoint archive"
    assert info.params == 400 + 1920 + 8
    assert info.dtypes == {"F16": 400 + 1920, "F32": 8}
    assert info.stored_bytes == (400 + 1920) * 2 + 8 * 4
    assert {k: info.config[k] for k in WHISPER_DIMS} == WHISPER_DIMS
    # fp32 on the CPU, plus the decoder's causal mask, a buffer the checkpoint does not hold
    assert estimate(file_spec(path, "speech")).weights_bytes == info.params * 4 + 16 * 16 * 4


def test_checkpoint_with_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pt"
    torch.save({"dims": WHISPER_DIMS, "payload": Evil()}, path)
    with pytest.raises(ModelLoadError, match="not a readable torch checkpoint"):
        weights_info(file_spec(path, "speech"))
    assert not marker.exists()


def test_pytorch_model_bin_folder(tmp_path):
    folder = tmp_path / "old"
    write_config(folder, {**LLAMA_CONFIG, "torch_dtype": "float16"})
    torch.save({"w": torch.zeros(4, 4, dtype=torch.float16)}, folder / "pytorch_model.bin")
    info = weights_info(folder_spec(folder))
    assert (info.method, info.params, info.stored_bytes) == ("checkpoint archive", 16, 32)
    legacy = tmp_path / "legacy"
    write_config(legacy, {"torch_dtype": "float16"})
    (legacy / "pytorch_model.bin").write_bytes(b"\x80\x02not a zip archive" + bytes(1000))
    info = weights_info(folder_spec(legacy))
    assert info.method == "file size" and info.params == info.stored_bytes // 2


# ----- CTranslate2 ----------------------------------------------------------------------------------------


def write_ct2_model(folder: Path, variables: list[tuple[str, tuple[int, ...], int, int]]) -> None:
    """A model.bin in CTranslate2's binary layout (version 6): (name, shape, dtype id, element size) per variable."""
    folder.mkdir(parents=True, exist_ok=True)

    def string(s: str) -> bytes:
        return struct.pack("<H", len(s) + 1) + s.encode() + b"\0"

    out = struct.pack("<I", 6) + string("WhisperSpec") + struct.pack("<II", 3, len(variables))
    for name, shape, dtype_id, size in variables:
        n = 1
        for d in shape:
            n *= d
        data = (2).to_bytes(size, "little") if not shape else bytes(n * size)
        out += string(name) + struct.pack("<B", len(shape)) + struct.pack(f"<{len(shape)}I", *shape)
        out += struct.pack("<BI", dtype_id, len(data)) + data
    out += struct.pack("<I", 0)
    (folder / "model.bin").write_bytes(out)
    (folder / "config.json").write_text(json.dumps({"lang_ids": []}), encoding="utf-8")


def test_ctranslate2_folder_reads_the_variable_table(tmp_path):
    folder = tmp_path / "ct2"
    write_ct2_model(
        folder,
        [
            ("decoder/num_heads", (), 2, 2),
            ("decoder/embeddings/weight", (50, 8), 1, 1),  # int8
            ("decoder/embeddings/weight_scale", (50,), 0, 4),
            ("decoder/layer_0/ffn/linear_0/weight", (32, 8), 1, 1),
            ("decoder/layer_0/ffn/linear_0/weight_scale", (32,), 0, 4),
            ("decoder/position_encodings/encodings", (16, 8), 0, 4),
            ("encoder/num_heads", (), 2, 2),
            ("encoder/conv1/weight", (8, 80, 3), 4, 2),  # float16
            ("encoder/layer_0/ffn/linear_0/weight", (32, 8), 1, 1),
            ("encoder/layer_1/ffn/linear_0/weight", (32, 8), 1, 1),
            ("encoder/position_encodings/encodings", (30, 8), 0, 4),
        ],
    )
    spec = folder_spec(folder, "speech", precision="int8")
    info = weights_info(spec)
    assert info.method == "ctranslate2 header"
    assert info.dtypes == {"Q8": 400 + 3 * 256, "F32": 50 + 32 + 128 + 240, "F16": 1920}
    assert info.params == sum(info.dtypes.values())
    assert info.quantizable_params == 400 + 3 * 256 + 1920  # CTranslate2 quantizes embeddings too
    assert info.config["n_text_layer"] == 1 and info.config["n_audio_layer"] == 2
    assert (info.config["n_text_ctx"], info.config["n_audio_ctx"], info.config["n_mels"]) == (16, 30, 80)
    assert info.config["n_audio_head"] == 2
    assert load_precision(spec) == "int8"
    assert estimate(spec).weights_bytes == round(
        info.quantizable_params * BYTES_PER_PARAM["int8"] + (info.params - info.quantizable_params) * 2
    )


# ----- precision and runtime ------------------------------------------------------------------------------


def test_precision_scaling():
    info = WeightsInfo(
        params=1000, stored_bytes=2000, dtypes={"F16": 1000}, method="test", config={}, quantizable_params=800
    )
    assert weights_bytes(info, "fp32") == 4000
    assert weights_bytes(info, "fp16") == weights_bytes(info, "bf16") == 2000
    assert weights_bytes(info, "nf4") == round(800 * BYTES_PER_PARAM["nf4"] + 200 * 2)  # the rest stays 16-bit
    assert weights_bytes(info, "int8") == round(800 * BYTES_PER_PARAM["int8"] + 200 * 2)
    assert weights_bytes(info, "nf4") < weights_bytes(info, "int8") < weights_bytes(info, "fp16")
    with pytest.raises(ValueError, match="precision"):
        weights_bytes(info, "fp8")


def test_load_precision_follows_the_loaders():
    assert load_precision(ModelSpec("chat", "x", "hub", precision="nf4", device="cuda")) == "nf4"
    assert (
        load_precision(ModelSpec("chat", "x", "hub", precision="nf4", device="cpu")) == "nf4"
    )  # bitsandbytes runs on the CPU too
    assert load_precision(ModelSpec("chat", "x", "hub", precision="bf16", device="cpu")) == "bf16"
    assert load_precision(ModelSpec("image", "x", "hub", precision="fp16", device="cpu")) == "fp32"
    assert load_precision(ModelSpec("image", "x", "hub", precision="nf4", device="cuda")) == "fp16"
    assert load_precision(ModelSpec("speech", "small", "hub", precision="fp16", device="cuda")) == "fp16"
    assert load_precision(ModelSpec("speech", "small", "hub", precision="fp16", device="cpu")) == "fp32"
    assert (
        load_precision(ModelSpec("speech", "small", "hub", precision="int8", device="cpu", backend="faster-whisper"))
        == "int8"
    )


def test_kv_cache_logits_and_activations_on_a_known_config(tmp_path):
    folder = tmp_path / "lm"
    write_config(folder, LLAMA_CONFIG)
    save_file({"model.layers.0.mlp.up_proj.weight": torch.zeros(128, 64)}, folder / "model.safetensors")
    spec = folder_spec(folder, precision="fp16", device="cuda")
    info = weights_info(spec)
    context, batch = 1000, 2
    kv = 2 * 2 * 2 * 16 * context * batch * 2  # k and v * layers * kv heads * head dim * tokens * batch * fp16
    logits = batch * 100 * 4 * 2
    activations = batch * context * (2 * 64 + 3 * 128) * 2
    assert runtime_bytes(spec, info, Workload(context_len=context, batch=batch)) == kv + logits + activations
    fp32 = folder_spec(folder, precision="fp32")
    kv32 = 2 * 2 * 2 * 16 * 512 * 1 * 4  # default context: the model's 512 (under the 4096 cap)
    assert runtime_bytes(fp32, info, Workload()) == kv32 + 100 * 8 + 512 * (2 * 64 + 3 * 128) * 4
    nf4 = folder_spec(folder, precision="nf4", device="cuda")  # 4-bit weights compute in 16-bit
    assert runtime_bytes(nf4, info, Workload(context_len=context, batch=batch)) == kv + logits + activations
    assert runtime_bytes(folder_spec(folder, "base-for-training"), info, Workload()) == 0


def test_catalog_chat_model_is_sized_from_known_dimensions():
    spec = ModelSpec("chat", "Qwen/Qwen2.5-7B-Instruct", "hub", precision="nf4", device="cuda")
    result = estimate(spec, Workload(context_len=4096))
    assert isinstance(result, Estimate)
    assert 4.5 * GB < result.weights_bytes < 6 * GB
    assert result.method == "known dimensions, nf4"
    assert result.runtime_bytes >= 2 * 28 * 4 * 128 * 4096 * 2  # its KV cache at 4096 tokens
    assert result.total == result.weights_bytes + result.runtime_bytes
    fp16 = estimate(ModelSpec("chat", "Qwen/Qwen2.5-7B-Instruct", "hub", precision="fp16", device="cuda"))
    assert fp16.weights_bytes == 7_615_616_512 * 2
    on_cpu = estimate(ModelSpec("chat", "Qwen/Qwen2.5-7B-Instruct", "hub", precision="nf4", device="cpu"))
    assert on_cpu.weights_bytes == result.weights_bytes  # bitsandbytes quantises on the CPU too


def test_catalog_whisper_and_diffusion_sizes():
    small = estimate(ModelSpec("speech", "small", "hub", precision="fp16", device="cuda"))
    assert 0.45 * GB < small.weights_bytes < 0.55 * GB
    assert 0 < small.runtime_bytes < 0.5 * GB
    beams = estimate(ModelSpec("speech", "small", "hub", precision="fp16", device="cuda"), Workload(batch=5))
    assert beams.runtime_bytes > small.runtime_bytes
    assert estimate(ModelSpec("speech", "small.en", "hub", precision="fp16", device="cuda")).params > 0

    sd15 = estimate(
        ModelSpec("image", "stable-diffusion-v1-5/stable-diffusion-v1-5", "hub", precision="fp16", device="cuda")
    )
    assert sd15.runtime_bytes >= 1.0 * GB and sd15.runtime_bytes <= 1.5 * GB
    sdxl = estimate(
        ModelSpec("image", "stabilityai/stable-diffusion-xl-base-1.0", "hub", precision="fp16", device="cuda")
    )
    assert 3.0 * GB <= sdxl.runtime_bytes <= 4.0 * GB
    bigger = estimate(
        ModelSpec("image", "stable-diffusion-v1-5/stable-diffusion-v1-5", "hub", precision="fp16", device="cuda"),
        Workload(batch=2, width=768, height=768),
    )
    assert bigger.runtime_bytes > 2 * sd15.runtime_bytes


def test_hub_model_in_the_local_cache_is_read_from_its_snapshot(tmp_path, monkeypatch):
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    repo = tmp_path / "models--someone--tiny-lm"
    snapshot = repo / "snapshots" / ("a" * 40)
    write_config(snapshot, LLAMA_CONFIG)
    save_file({"w.weight": torch.zeros(6, 6)}, snapshot / "model.safetensors")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40, encoding="utf-8")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    info = weights_info(ModelSpec("chat", "someone/tiny-lm", "hub"))
    assert info.params == 36 and info.config["num_hidden_layers"] == 2
    with pytest.raises(ModelLoadError, match="not in the model list and not downloaded") as err:
        weights_info(ModelSpec("chat", "someone/never-downloaded", "hub"))
    assert "Press Download beside the model picker" in str(err.value)  # the page offers it there
    assert "`hf download someone/never-downloaded`" in str(err.value)


# ----- errors ---------------------------------------------------------------------------------------------


def test_errors_name_the_path_and_say_what_to_do(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError) as info:
        weights_info(folder_spec(empty))
    assert info.value.message == f"No .safetensors, .gguf, .pt or model.bin found in {empty}."
    assert info.value.tip
    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError) as info:
        weights_info(folder_spec(missing))
    assert str(missing) in info.value.message and "no such file" in info.value.message
    odd = tmp_path / "model.onnx"
    odd.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="unsupported file type"):
        weights_info(file_spec(odd))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(ModelLoadError, match="not a valid .safetensors file"):
        weights_info(file_spec(bad))


# ----- workloads and measuring ----------------------------------------------------------------------------


def test_workload_key_and_validation():
    assert Workload().key == "default"
    assert Workload(context_len=2048).key == "ctx2048"
    assert Workload(batch=2, width=768, height=512).key == "b2-768x512"
    with pytest.raises(ValueError, match="batch"):
        Workload(batch=0)
    with pytest.raises(ValueError, match="width"):
        Workload(width=-1)


def test_tensor_bytes_counts_tied_weights_once_and_finds_inner_modules():
    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(100, 16)
            self.head = torch.nn.Linear(16, 100, bias=False)
            self.head.weight = self.embed.weight
            self.register_buffer("mask", torch.zeros(4, 4), persistent=False)

    model = Tied()
    assert tensor_bytes(model) == 100 * 16 * 4 + 16 * 4

    class Wrapper:  # like LoadedLM: the model sits in .model
        def __init__(self, model) -> None:
            self.model, self.tokenizer = model, object()

    class Pipeline:  # like a diffusers pipeline: modules in .components, one shared
        def __init__(self, a, b) -> None:
            self.components = {"unet": a, "text_encoder": b, "again": a, "scheduler": object()}

    assert tensor_bytes(Wrapper(model)) == tensor_bytes(model)
    other = torch.nn.Linear(4, 4)
    assert tensor_bytes(Pipeline(model, other)) == tensor_bytes(model) + (16 + 4) * 4
    half = torch.nn.Linear(8, 8).half()
    assert tensor_bytes(half) == (64 + 8) * 2
    assert tensor_bytes(object()) == 0


def test_importing_the_module_does_not_import_torch():
    code = "import sys, studio.models.estimate; print(sorted({'torch', 'transformers', 'gguf'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(est.__file__).parents[2]
    )
    assert out.stdout.strip() == "[]"
