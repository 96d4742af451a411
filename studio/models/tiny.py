"""Tiny random-weight models written to disk in the real formats, so tests and benchmarks run the real loaders.

Nothing here downloads: tokenizers are built in code, weights come from a seeded random init. The outputs are
what real checkpoints look like on disk (a transformers folder, a diffusers pipeline folder, an openai-whisper
`.pt` file), so `AutoModelForCausalLM.from_pretrained`, `DiffusionPipeline.from_pretrained` and
`whisper.load_model` take exactly the code paths they take for real models. Heavy libraries are imported inside
the builders, so importing this module is cheap.

Builds are deterministic for a given seed (same bytes on disk). torch's RNG is process-wide, so two builds running
in threads of one process at the same time could interleave their draws (build_all's per-folder lock serialises
calls that share a root and seed); builds in separate processes, as under pytest-xdist, are always fine.

    python -m studio.models.tiny OUT_DIR     # writes all three and prints their paths
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from studio.models import folders

# Bump when a builder's output changes, so folders cached by an older version are rebuilt.
FORMAT_VERSION = 1
# Written last into every folder that build_all completes.
MARKER = "tiny-model.json"
WHISPER_FILE = "whisper-tiny.pt"

# Causal LM tokenizer: ids 0..4, in this order.
BOS, IM_START, IM_END, PAD, UNK = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>", "<unk>"
LM_SPECIAL_TOKENS = (BOS, IM_START, IM_END, PAD, UNK)
LM_VOCAB_SIZE = 640  # the trainer stops earlier if the corpus runs out of pairs
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# A small built-in English corpus for the byte-level BPE; any text still round-trips through the byte alphabet.
CORPUS = (
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.",
    "You are a helpful assistant. Answer the question briefly and clearly, then stop.",
    "Hello! How are you today? I am fine, thank you. What would you like to talk about?",
    "The studio runs chat models, image models, speech models and fine-tuning on one graphics card.",
    "A model manager loads, parks and unloads models so that everything stays inside the memory budget.",
    "Write a short poem about the sea. The waves roll in and out under the grey morning sky.",
    "Translate this sentence into French, then explain the grammar of each word in the sentence.",
    "What is the capital of France? The capital of France is Paris, a city on the river Seine.",
    "Summarise the following text in three sentences and list the main points as bullet points.",
    "Numbers and dates: 0 1 2 3 4 5 6 7 8 9, 10, 42, 100, 2024-06-01, 12:30, 3.14, 99%.",
    "Code: def add(a, b): return a + b  # adds two numbers; print(add(2, 3)) prints 5.",
    "Learning rate, batch size, epochs, warmup steps and the LoRA rank are hyper-parameters of training.",
    "The speech model turns spoken words into text with timestamps for every segment of the audio.",
    "An image of a cat sitting on a window sill at sunset, highly detailed, soft light, oil painting.",
    "Please keep your answers short. If you do not know the answer, say that you do not know it.",
    "She sells sea shells by the sea shore; the shells she sells are surely sea shells.",
    "Questions, answers, instructions and responses: the data set has one example on every line.",
    "It was the best of times, it was the worst of times, it was the age of wisdom and of foolishness.",
)

# Stable Diffusion CLIP tokenizer: a byte-level vocabulary plus a few merges (real CLIP has 48894 of them).
CLIP_MERGES = (
    ("t", "h"),
    ("th", "e</w>"),
    ("a", "n"),
    ("an", "d</w>"),
    ("o", "f</w>"),
    ("i", "n"),
    ("in", "g</w>"),
    ("o", "n</w>"),
    ("e", "r</w>"),
    ("c", "a"),
    ("ca", "t</w>"),
    ("d", "o"),
    ("do", "g</w>"),
)


@dataclass(frozen=True)
class TinyModels:
    """Where build_all put each model."""

    causal_lm: Path  # a transformers folder: config, safetensors weights, tokenizer, chat template
    sd_pipeline: Path  # a diffusers StableDiffusionPipeline folder (model_index.json and components)
    whisper_pt: Path  # an openai-whisper checkpoint file


def build_tiny_causal_lm(
    folder: Path,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
) -> Path:
    """A random Llama causal LM with a working ChatML tokenizer, saved like a Hub model folder."""
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be a multiple of num_heads ({num_heads})")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _chatml_tokenizer(max_position_embeddings)
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in (BOS, IM_END, PAD)}
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        dtype="float32",
        bos_token_id=ids[BOS],
        eos_token_id=ids[IM_END],
        pad_token_id=ids[PAD],
    )
    with torch.random.fork_rng(devices=[]):  # seed the build without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ids[BOS], eos_token_id=ids[IM_END], pad_token_id=ids[PAD], max_new_tokens=64
    )
    model.save_pretrained(folder)  # safetensors (the only format transformers 5 writes)
    tokenizer.save_pretrained(folder)
    return folder


def _chatml_tokenizer(model_max_length: int):
    """A byte-level BPE trained here on CORPUS, wrapped for transformers, with a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=LM_VOCAB_SIZE,
        special_tokens=list(LM_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=IM_END,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[IM_START, IM_END],
        chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length,
    )


# The tiny vision-language model's chat template: ChatML whose content may be OpenAI-style parts, an image part
# rendering as the processor's <image> placeholder (which it expands to one token per image patch).
VLM_IMAGE_TOKEN = "<image>"
VLM_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_tiny_vlm(folder: Path, *, seed: int = 0, image_size: int = 32, patch_size: int = 8) -> Path:
    """A random LLaVA (CLIP vision tower + projector + Llama) with its processor (CLIP image processor, the ChatML
    tokenizer with an <image> token, a chat template that takes image parts), saved like a Hub model folder.
    An image costs (image_size / patch_size)^2 tokens: 16 at the defaults."""
    if image_size % patch_size:
        raise ValueError(f"image_size ({image_size}) must be a multiple of patch_size ({patch_size})")
    import torch
    from transformers import (
        CLIPVisionConfig,
        GenerationConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.llava.processing_llava import LlavaProcessor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _chatml_tokenizer(1024)
    tokenizer.add_special_tokens({"additional_special_tokens": [IM_START, IM_END, VLM_IMAGE_TOKEN]})
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in (BOS, IM_END, PAD, VLM_IMAGE_TOKEN)}
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",  # the CLS embedding is dropped: one token per patch
        num_additional_image_tokens=1,
        chat_template=VLM_CHAT_TEMPLATE,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=ids[BOS],
        eos_token_id=ids[IM_END],
        pad_token_id=ids[PAD],
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=ids[VLM_IMAGE_TOKEN],
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_seq_length=(image_size // patch_size) ** 2,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ids[BOS], eos_token_id=ids[IM_END], pad_token_id=ids[PAD], max_new_tokens=64
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)  # processor_config.json, tokenizer files, chat_template.jinja
    return folder


def ensure_tiny_vlm(root: Path, *, seed: int = 0) -> Path:
    """The tiny vision-language model under `root`, built once (safe when several processes call it at once)."""
    return _ensure(Path(root) / f"vlm-seed{seed}", "vlm", seed, lambda d: build_tiny_vlm(d, seed=seed))


def build_tiny_encoder(
    folder: Path,
    *,
    seed: int = 0,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 64,
    pooling: str = "mean",
    normalize: bool = True,
) -> Path:
    """A random BERT encoder with a WordPiece tokenizer trained here on CORPUS, saved like a sentence-transformers
    Hub folder: config, safetensors weights, tokenizer, modules.json and 1_Pooling/config.json (`pooling`: mean,
    cls, max or lasttoken), with a Normalize module when `normalize`."""
    import json

    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials, show_progress=False)
    backend.train_from_iterator(CORPUS, trainer)
    cls, sep = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_position_embeddings,
    )
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config)  # with its pooler, as Hub checkpoints have it
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
        (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    modes = {
        f"pooling_mode_{m}": m.split("_")[0] == pooling
        for m in ("cls_token", "mean_tokens", "max_tokens", "lasttoken")
    }
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": hidden_size, **modes}))
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_position_embeddings, "do_lower_case": True})
    )
    return folder


def build_tiny_sd_pipeline(folder: Path, *, seed: int = 0) -> Path:
    """A random Stable Diffusion 1.x pipeline folder (64x64 images by default, VAE scale factor 8 as in SD)."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _clip_tokenizer(folder / "tokenizer")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        vae = AutoencoderKL(  # four blocks, so latents are 1/8 of the image size like the real SD VAE
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(32, 32, 32, 32),
            layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            norm_num_groups=32,
            sample_size=64,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=77,
                projection_dim=32,
                layer_norm_eps=1e-5,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    scheduler = PNDMScheduler(  # the scheduler config SD 1.5 ships with
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def save_sd_single_file(pipeline: Path, folder: Path, name: str = "model.safetensors") -> Path:
    """Write a diffusers SD 1.x pipeline folder as one original-layout (LDM) `.safetensors` checkpoint.

    The file has the key layout community checkpoints use (`model.diffusion_model.`, `first_stage_model.`,
    `cond_stage_model.transformer.`). The pipeline's configs and tokenizer are copied beside it (no weights), so
    diffusers' `from_single_file(config=folder)` needs no network. Returns the checkpoint's path.
    """
    from safetensors.torch import load_file, save_file

    pipeline, folder = Path(pipeline), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state: dict = {}
    unet_config = json.loads((pipeline / "unet" / "config.json").read_text(encoding="utf-8"))
    vae_config = json.loads((pipeline / "vae" / "config.json").read_text(encoding="utf-8"))
    state.update(_unet_to_ldm(load_file(pipeline / "unet" / "diffusion_pytorch_model.safetensors"), unet_config))
    state.update(_vae_to_ldm(load_file(pipeline / "vae" / "diffusion_pytorch_model.safetensors"), vae_config))
    for key, value in load_file(pipeline / "text_encoder" / "model.safetensors").items():
        if not key.endswith("position_ids"):
            inner = key if key.startswith("text_model.") else "text_model." + key
            state["cond_stage_model.transformer." + inner] = value
    for item in pipeline.iterdir():  # configs and tokenizer files, never the component weights
        if item.name == "model_index.json":
            shutil.copy2(item, folder / item.name)
        elif item.is_dir():
            for f in item.iterdir():
                if f.suffix in (".json", ".txt"):
                    (folder / item.name).mkdir(exist_ok=True)
                    shutil.copy2(f, folder / item.name / f.name)
    path = folder / name
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def _unet_to_ldm(state: dict, config: dict) -> dict:
    """diffusers UNet2DConditionModel keys -> `model.diffusion_model.` keys (SD 1.x/2.x layout, any depth)."""
    import re

    layers, blocks = config["layers_per_block"], len(config["block_out_channels"])
    prefixes = {
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "conv_in.": "input_blocks.0.0.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
        "mid_block.resnets.0.": "middle_block.0.",
        "mid_block.attentions.0.": "middle_block.1.",
        "mid_block.resnets.1.": "middle_block.2.",
    }
    for i in range(blocks):
        for j in range(layers):
            prefixes[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{i * (layers + 1) + j + 1}.0."
            prefixes[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{i * (layers + 1) + j + 1}.1."
        if i < blocks - 1:
            prefixes[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(layers + 1) * (i + 1)}.0.op."
        for j in range(layers + 1):
            prefixes[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{i * (layers + 1) + j}.0."
            prefixes[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{i * (layers + 1) + j}.1."
        has_attention = any(k.startswith(f"up_blocks.{i}.attentions.") for k in state)
        prefixes[f"up_blocks.{i}.upsamplers.0.conv."] = (
            f"output_blocks.{i * (layers + 1) + layers}.{2 if has_attention else 1}.conv."
        )
    resnet = {
        "norm1.": "in_layers.0.",
        "conv1.": "in_layers.2.",
        "norm2.": "out_layers.0.",
        "conv2.": "out_layers.3.",
        "time_emb_proj.": "emb_layers.1.",
        "conv_shortcut.": "skip_connection.",
    }
    ordered = sorted(prefixes.items(), key=lambda kv: -len(kv[0]))
    out = {}
    for key, value in state.items():
        src, dst = next((s, d) for s, d in ordered if key.startswith(s))
        rest = key[len(src) :]
        if re.search(r"resnets\.\d+\.$", src):
            old = next((a for a in resnet if rest.startswith(a)), None)
            rest = resnet[old] + rest[len(old) :] if old else rest
        out["model.diffusion_model." + dst + rest] = value
    return out


_VAE_ATTENTION_NAMES = (
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
)


def _vae_to_ldm(state: dict, config: dict) -> dict:
    """diffusers AutoencoderKL keys -> `first_stage_model.` keys (the decoder's blocks are numbered in reverse)."""
    import re

    n = len(config["block_out_channels"])
    out = {}
    for key, value in state.items():
        k = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.", key)
        k = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", k)
        k = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{n - 1 - int(m[1])}.block.", k)
        k = re.sub(
            r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{n - 1 - int(m[1])}.upsample.", k
        )
        k = re.sub(
            r"^(encoder|decoder)\.mid_block\.resnets\.(\d)\.", lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}.", k
        )
        k = re.sub(r"^(encoder|decoder)\.mid_block\.attentions\.0\.", r"\1.mid.attn_1.", k)
        k = k.replace("conv_norm_out.", "norm_out.").replace("conv_shortcut.", "nin_shortcut.")
        if ".mid.attn_1." in k:
            for a, b in _VAE_ATTENTION_NAMES:
                k = k.replace(a, b)
            if k.endswith("weight") and value.ndim == 2:  # the original uses 1x1 convolutions
                value = value[:, :, None, None]
        out["first_stage_model." + k] = value
    return out


def _clip_tokenizer(folder: Path):
    """A CLIPTokenizer from a vocab.json + merges.txt written here: every byte, its end-of-word form, a few merges."""
    from transformers import CLIPTokenizer

    byte_chars = _bytes_to_unicode()
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + [a + b for a, b in CLIP_MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in CLIP_MERGES), encoding="utf-8"
    )
    return CLIPTokenizer(vocab=vocab, merges=list(CLIP_MERGES), model_max_length=77)


def _bytes_to_unicode() -> list[str]:
    """The 256 printable characters GPT-2/CLIP byte-level BPE uses for bytes 0..255, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, shifted = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + shifted))
            shifted += 1
    return chars


def build_tiny_whisper(path: Path, *, seed: int = 0) -> Path:
    """A random multilingual openai-whisper checkpoint (fp16 weights, like the official .pt files)."""
    import torch
    from whisper.model import ModelDimensions, Whisper

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dims = ModelDimensions(
        n_mels=80,
        n_audio_ctx=1500,
        n_audio_state=64,
        n_audio_head=2,
        n_audio_layer=1,
        n_vocab=51865,
        n_text_ctx=448,
        n_text_state=64,
        n_text_head=2,
        n_text_layer=1,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Whisper(dims)
        # whisper leaves the decoder's positional embedding uninitialised (torch.empty: whatever was in memory,
        # NaN at times); the real checkpoints fill it, so must this one, or runs differ and may produce NaN
        torch.nn.init.normal_(model.decoder.positional_embedding, std=0.01)
    state = {name: tensor.half() for name, tensor in model.state_dict().items()}
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": state}, path)
    return path


def build_all(root: Path, *, seed: int = 0) -> TinyModels:
    """Build the three tiny models under `root`, or reuse them. Safe when several processes call it at once."""
    root = Path(root)
    whisper_folder = _ensure(
        root / f"whisper-seed{seed}", "whisper", seed, lambda d: build_tiny_whisper(d / WHISPER_FILE, seed=seed)
    )
    return TinyModels(
        causal_lm=_ensure(
            root / f"causal-lm-seed{seed}", "causal-lm", seed, lambda d: build_tiny_causal_lm(d, seed=seed)
        ),
        sd_pipeline=_ensure(
            root / f"sd-pipeline-seed{seed}", "sd-pipeline", seed, lambda d: build_tiny_sd_pipeline(d, seed=seed)
        ),
        whisper_pt=whisper_folder / WHISPER_FILE,
    )


def _ensure(target: Path, kind: str, seed: int, build: Callable[[Path], object]) -> Path:
    """Reuse `target` if it is complete; else build into a temporary sibling and rename it into place."""
    stamp = {"kind": kind, "seed": seed, "format": FORMAT_VERSION}
    if _is_complete(target, stamp):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent / f".{target.name}.lock"):  # the others wait, then reuse what the first built
        if _is_complete(target, stamp):
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".building", dir=target.parent))
        try:
            build(staging)
            (staging / MARKER).write_text(json.dumps(stamp) + "\n", encoding="utf-8")
            staging.chmod(0o755)  # mkdtemp makes it private
            _move_into_place(staging, target, stamp)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _is_complete(folder: Path, stamp: dict) -> bool:
    return folders.is_complete(folder, MARKER, stamp)


def _move_into_place(staging: Path, target: Path, stamp: dict) -> None:
    folders.move_into_place(staging, target, MARKER, stamp)


_locked = folders.locked


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: build (or reuse) the tiny models under OUT_DIR and print where they are."""
    parser = argparse.ArgumentParser(prog="python -m studio.models.tiny", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the models into (reused if already built)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the weights (default 0)")
    args = parser.parse_args(argv)
    models = build_all(args.out_dir, seed=args.seed)
    for field in dataclasses.fields(models):
        print(f"{field.name}: {getattr(models, field.name)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
