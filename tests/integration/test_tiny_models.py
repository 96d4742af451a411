"""The tiny random models load through the real loaders and run, offline, and are built once, deterministically."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from studio.models.tiny import MARKER, build_all, build_tiny_causal_lm, main

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello! How are you?"}]


@pytest.fixture(scope="module")
def lm(tiny_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models.causal_lm, trust_remote_code=False, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_models.causal_lm, trust_remote_code=False, local_files_only=True)
    return tokenizer, model.eval()


@pytest.fixture(scope="module")
def sd_pipe(tiny_models):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_models.sd_pipeline, use_safetensors=True, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_causal_lm_generates_from_a_chat_prompt(lm):
    tokenizer, model = lm
    assert model.config.model_type == "llama" and model.dtype == torch.float32
    assert model.config.vocab_size == len(tokenizer)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
    assert tokenizer.eos_token == "<|im_end|>" and model.generation_config.eos_token_id == tokenizer.eos_token_id
    inputs = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt")
    prompt = inputs["input_ids"]  # transformers 5 returns a BatchEncoding here, not a bare tensor
    assert tokenizer.decode(prompt[0]) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello! How are you?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape == (1, prompt.shape[1] + 4)
    assert torch.equal(out[0, : prompt.shape[1]], prompt[0])


def test_tokenizer_round_trips_text_and_keeps_special_tokens_whole(lm):
    tokenizer, _ = lm
    text = "The quick brown fox — naïve café, 日本語, emoji 🙂 and tabs\tand 3.14!"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text.encode())  # the trained merges compress English
    for token in ("<|im_start|>", "<|im_end|>", tokenizer.bos_token, tokenizer.pad_token, tokenizer.unk_token):
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1
    assert len({tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}) == 3


def test_sd_pipeline_is_seed_deterministic(sd_pipe):
    def image(seed: int) -> np.ndarray:
        generator = torch.Generator("cpu").manual_seed(seed)
        return sd_pipe("a cat on a window sill", num_inference_steps=2, generator=generator, output_type="np").images

    first, again, other = image(0), image(0), image(1)
    assert first.shape == (1, 64, 64, 3) and np.isfinite(first).all()
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert sd_pipe.vae_scale_factor == 8 and sd_pipe.safety_checker is None


def test_sd_pipeline_loads_through_the_generic_loader(tiny_models):
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(tiny_models.sd_pipeline, use_safetensors=True, local_files_only=True)
    assert isinstance(pipe, StableDiffusionPipeline)
    assert pipe.tokenizer.model_max_length == 77
    ids = pipe.tokenizer("a photo of the cat and dog")["input_ids"]
    assert ids[0] == pipe.tokenizer.bos_token_id and ids[-1] == pipe.tokenizer.eos_token_id
    assert max(ids) < pipe.text_encoder.config.vocab_size


def test_whisper_checkpoint_transcribes(tiny_models):
    import whisper

    checkpoint = torch.load(tiny_models.whisper_pt, map_location="cpu", weights_only=True)
    assert {t.dtype for t in checkpoint["model_state_dict"].values()} == {torch.float16}
    model = whisper.load_model(str(tiny_models.whisper_pt), device="cpu")
    assert model.is_multilingual and model.dims.n_vocab == 51865
    audio = np.random.default_rng(0).normal(0, 0.1, 2 * whisper.audio.SAMPLE_RATE).astype(np.float32)
    result = whisper.transcribe(
        model,
        audio,
        fp16=False,
        temperature=0.0,
        condition_on_previous_text=False,
        language="en",
        sample_len=8,
        verbose=None,
    )
    assert isinstance(result["text"], str) and isinstance(result["segments"], list)
    assert result["language"] == "en"


def test_build_all_reuses_complete_folders(tiny_models, capsys):
    root = tiny_models.causal_lm.parent
    files = [
        tiny_models.causal_lm / "model.safetensors",
        tiny_models.causal_lm / MARKER,
        tiny_models.sd_pipeline / "unet" / "diffusion_pytorch_model.safetensors",
        tiny_models.whisper_pt,
    ]
    before = [f.stat().st_mtime_ns for f in files]
    assert build_all(root) == tiny_models
    assert main([str(root)]) == 0  # the CLI reuses them too
    assert [f.stat().st_mtime_ns for f in files] == before
    assert str(tiny_models.whisper_pt) in capsys.readouterr().out


def test_build_all_is_safe_concurrently_and_replaces_partial_folders(tmp_path):
    partial = tmp_path / "causal-lm-seed0"
    partial.mkdir()
    (partial / "config.json").write_text("{")  # an interrupted build from someone else, no marker
    results, errors = [], []

    def build() -> None:
        try:
            results.append(build_all(tmp_path))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(set(results)) == 1
    assert (partial / MARKER).exists() and (partial / "model.safetensors").exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith((".building", ".old"))]
    assert leftovers == []


def test_builder_is_deterministic(tiny_models, tmp_path):
    same = build_tiny_causal_lm(tmp_path / "same", seed=0)
    other = build_tiny_causal_lm(tmp_path / "other", seed=1)
    reference = tiny_models.causal_lm
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (same / name).read_bytes() == (reference / name).read_bytes(), name
    assert (other / "model.safetensors").read_bytes() != (reference / "model.safetensors").read_bytes()


def test_builder_rejects_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match="multiple of num_heads"):
        build_tiny_causal_lm(tmp_path, hidden_size=30, num_heads=4)
