"""Safe loading, in one place: safetensors first, `torch.load(weights_only=True)`, never `trust_remote_code`.

Each loader takes a ModelSpec and returns the object the engine uses. Heavy libraries are imported inside.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.errors import ModelLoadError
from studio.models.formats import is_gguf
from studio.models.specs import ModelSpec

TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "nf4": "bfloat16", "int8": "float16"}


@dataclass
class LoadedLM:
    """A causal language model with its tokenizer (what the chat engine and training use)."""

    model: Any
    tokenizer: Any
    source: str
    processor: Any = None  # vision-language models: the processor (image processor + this tokenizer), else None


def torch_dtype(spec: ModelSpec):
    import torch

    if spec.device == "cpu" and spec.precision in ("nf4", "int8"):
        return torch.bfloat16  # the unquantised rest (embeddings, norms); fp16 is slow on CPUs
    return getattr(torch, TORCH_DTYPES[spec.precision])


def pretrained_kwargs(spec: ModelSpec, offline: bool) -> dict[str, Any]:
    """Keyword arguments every `from_pretrained` call in the studio gets."""
    kwargs: dict[str, Any] = {"trust_remote_code": False, "local_files_only": offline}
    if spec.source_type == "hub" and spec.revision:
        kwargs["revision"] = spec.revision
    return kwargs


def safe_torch_load(path: Path | str, map_location: str = "cpu") -> Any:
    """Read a pickle checkpoint without executing code from it."""
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no such file.") from None
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types
        raise ModelLoadError(
            f"{path}: not a loadable weights-only checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160]}).",
            "Only plain tensor checkpoints are accepted; prefer .safetensors.",
        ) from None


def model_location(spec: ModelSpec) -> str:
    """The path or Hub id to hand to a loader; a missing local path is a clear error."""
    if spec.device == "cuda" and spec.backend != "faster-whisper":
        import torch

        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"{spec.name}: CUDA was asked for, but this PyTorch ({torch.__version__}) cannot use the GPU.",
                "Install PyTorch's CUDA build, or start the studio with --device cpu.",
            )
    path = spec.path
    if path is not None:
        if not path.exists():
            raise ModelLoadError(f"{path}: no such file or folder.", "Check the path, or pick a model from the list.")
        return str(path)
    return spec.source


def _describe(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:240]


def nf4_config():
    """bitsandbytes 4-bit NormalFloat with double quantization and bf16 compute: the chat engine's nf4 precision
    and QLoRA's base model."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def load_causal_lm(spec: ModelSpec, offline: bool = False, *, models_dir: Path | None = None) -> LoadedLM:
    """A transformers causal LM + tokenizer; NF4 (double quantization, bf16 compute) or int8 through bitsandbytes,
    on CUDA and (slower, but the same code path) on the CPU.

    A starter spec is converted into `models_dir` on first use (default: the per-user cache) and loaded from there.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = model_location(spec)
    if spec.source_type == "starter":
        from studio.models.starter import cache_root, ensure_starter

        where = str(ensure_starter(models_dir or cache_root() / "models"))
    kwargs = pretrained_kwargs(spec, offline)
    if spec.source_type == "hub":  # from the cache, or downloaded now with progress, or a clear reason why not
        from studio.models.hub import local_snapshot

        where = str(local_snapshot(spec, offline))
        kwargs = {"trust_remote_code": False, "local_files_only": True}
    model_kwargs: dict[str, Any] = {"dtype": torch_dtype(spec)}
    if spec.precision in ("nf4", "int8"):
        from transformers import BitsAndBytesConfig

        if spec.precision == "nf4":
            model_kwargs["quantization_config"] = nf4_config()
        else:
            model_kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        model_kwargs["device_map"] = {"": 0 if spec.device == "cuda" else "cpu"}
    if spec.source_type == "file" and is_gguf(where):  # also an Ollama blob, which has no suffix
        folder, name = str(Path(where).parent), Path(where).name
        kwargs["gguf_file"] = name
        where = folder
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, **kwargs, **model_kwargs)
    except (OSError, ValueError, KeyError, SafetensorError) as exc:  # SafetensorError: weights cut short or damaged
        raise ModelLoadError(
            f"{spec.name}: not a loadable causal language model ({_describe(exc)}).",
            "Pick a folder with config.json and weights, a .gguf file, or a Hub id.",
        ) from None
    if "quantization_config" not in model_kwargs:
        model = model.to(spec.device)
    model.eval()
    return LoadedLM(model=model, tokenizer=tokenizer, source=where)


def load_vision_lm(spec: ModelSpec, offline: bool = False) -> LoadedLM:
    """A transformers image-text-to-text model (LLaVA, Qwen2-VL, Idefics3, Gemma 3 ...) with its processor; NF4 or
    int8 through bitsandbytes as `load_causal_lm`, the vision tower and projector kept in 16-bit."""
    from safetensors import SafetensorError
    from transformers import AutoModelForImageTextToText, AutoProcessor

    where = model_location(spec)
    kwargs = pretrained_kwargs(spec, offline)
    if spec.source_type == "hub":
        from studio.models.hub import local_snapshot

        where = str(local_snapshot(spec, offline))
        kwargs = {"trust_remote_code": False, "local_files_only": True}
    model_kwargs: dict[str, Any] = {"dtype": torch_dtype(spec)}
    if spec.precision in ("nf4", "int8"):
        from transformers import BitsAndBytesConfig

        config = nf4_config() if spec.precision == "nf4" else BitsAndBytesConfig(load_in_8bit=True)
        # quantizing the image encoder costs accuracy for little memory (it is a small part of the model)
        config.llm_int8_skip_modules = ["vision_tower", "visual", "vision_model", "multi_modal_projector", "lm_head"]
        model_kwargs["quantization_config"] = config
        model_kwargs["device_map"] = {"": 0 if spec.device == "cuda" else "cpu"}
    try:
        processor = AutoProcessor.from_pretrained(where, **kwargs)
        model = AutoModelForImageTextToText.from_pretrained(where, **kwargs, **model_kwargs)
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        raise ModelLoadError(
            f"{spec.name}: not a loadable vision-language model ({_describe(exc)}).",
            "Pick a folder with config.json, weights and the processor's files, or a Hub id.",
        ) from None
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None or getattr(processor, "image_processor", None) is None:
        raise ModelLoadError(f"{spec.name}: its processor has no image processor or no tokenizer.")
    if "quantization_config" not in model_kwargs:
        model = model.to(spec.device)
    model.eval()
    return LoadedLM(model=model, tokenizer=tokenizer, source=where, processor=processor)


def load_diffusion_pipeline(spec: ModelSpec, offline: bool = False) -> Any:
    """A diffusers pipeline from a folder, a Hub id, or a single-file .safetensors checkpoint."""
    import torch
    from diffusers import DiffusionPipeline

    where = model_location(spec)
    dtype = torch_dtype(spec) if spec.precision in ("fp16", "bf16", "fp32") else torch.float16
    if spec.device == "cpu" and dtype == torch.float16:
        dtype = torch.float32  # fp16 convolutions are slow or missing on the CPU
    try:
        if spec.source_type == "file":
            if not where.endswith(".safetensors"):
                raise ModelLoadError(
                    f"{spec.name}: single-file checkpoints must be .safetensors.",
                    "Convert .ckpt files to .safetensors first; pickles are not loaded.",
                )
            pipe = _single_file_pipeline(spec, where, dtype, offline)
        else:
            kwargs = pretrained_kwargs(spec, offline)
            pipe = DiffusionPipeline.from_pretrained(where, dtype=dtype, use_safetensors=True, **kwargs)
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(
            f"{spec.name}: not a loadable diffusion model ({_describe(exc)}).",
            "Pick a diffusers folder (with model_index.json), a .safetensors checkpoint, or a Hub id.",
        ) from None
    if getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker = None
    return pipe.to(spec.device)


def _single_file_pipeline(spec: ModelSpec, where: str, dtype: Any, offline: bool) -> Any:
    """A Stable Diffusion 1.x/2.x/XL pipeline from one original-layout .safetensors checkpoint.

    The keys are checked first, so a file that is not a diffusion model gets a specific message. The pipeline's
    configs come from the file's own folder when it holds a diffusers `model_index.json` (no network needed), else
    from the Hugging Face cache or the Hub, as diffusers finds them for the detected model family.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(where, "pt") as f:
            keys = list(f.keys())
    except (OSError, SafetensorError) as exc:
        raise ModelLoadError(f"{spec.name}: not a readable .safetensors file ({_describe(exc)}).") from None
    if not any(k.startswith("model.diffusion_model.") for k in keys):
        sample = ", ".join(keys[:3]) or "no tensors at all"
        raise ModelLoadError(
            f"{spec.name}: not a Stable Diffusion checkpoint: it holds no diffusion UNet weights "
            f"(model.diffusion_model.*); its tensors are named like {sample}.",
            "Pick a Stable Diffusion 1.x, 2.x or SDXL checkpoint, or a diffusers folder.",
        )
    xl = any(k.startswith("conditioner.embedders.1.") for k in keys)
    cls = StableDiffusionXLPipeline if xl else StableDiffusionPipeline
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": offline}
    folder = Path(where).parent
    if (folder / "model_index.json").is_file():
        kwargs["config"] = str(folder)
    try:
        return cls.from_single_file(where, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        tip = (
            "Offline, a single-file checkpoint needs its pipeline configs: in the Hugging Face cache, or a diffusers "
            "model_index.json (with component configs) in the file's folder."
            if offline or "config" not in kwargs
            else "The file may be damaged or not match the configs in its folder."
        )
        raise ModelLoadError(f"{spec.name}: cannot load this checkpoint ({_describe(exc)}).", tip) from None


def load_whisper(spec: ModelSpec, offline: bool = False, download_root: Path | None = None) -> Any:
    """openai-whisper from a name or a local .pt (weights_only), or faster-whisper from a CTranslate2 folder."""
    path = spec.path
    if spec.backend == "faster-whisper" or (path is not None and path.is_dir()):
        from faster_whisper import WhisperModel

        where = model_location(spec)
        # on CUDA, int8 means int8 weights with float16 activations (faster-whisper's recommended GPU int8 mode)
        compute = {
            "fp16": "float16",
            "int8": "int8_float16",
            "fp32": "float32",
            "bf16": "bfloat16",
            "nf4": "int8_float16",
        }
        compute_type = (
            compute[spec.precision]
            if spec.device == "cuda"
            else ("int8" if spec.precision in ("int8", "nf4") else "float32")
        )
        try:
            return WhisperModel(where, device=spec.device, compute_type=compute_type, local_files_only=offline)
        except (RuntimeError, OSError, ValueError) as exc:
            raise ModelLoadError(
                f"{spec.name}: not a CTranslate2 Whisper model ({_describe(exc)}).",
                "Pick a folder with model.bin and config.json from faster-whisper.",
            ) from None
    import whisper

    where = model_location(spec)
    if path is None and offline:
        cached = Path(download_root or Path.home() / ".cache" / "whisper") / f"{spec.source}.pt"
        if not cached.exists():
            raise ModelLoadError(
                f"Whisper {spec.source} is not downloaded and the studio is offline.",
                "Pick a local .pt file or a CTranslate2 folder.",
            )
    try:
        model = whisper.load_model(
            where, device=spec.device, download_root=str(download_root) if download_root else None
        )
    except RuntimeError as exc:
        raise ModelLoadError(
            f"{spec.name}: not a Whisper model ({_describe(exc)}).",
            "Pick a name (tiny ... turbo), an openai-whisper .pt file or a CTranslate2 folder.",
        ) from None
    except OSError as exc:  # a name whose download failed (URLError is an OSError)
        if path is not None:
            raise ModelLoadError(f"{spec.name}: cannot read it ({_describe(exc)}).") from None
        raise ModelLoadError(
            f"Whisper {spec.source} is not downloaded yet, and downloading it failed ({_describe(exc)}).",
            "Connect to the internet once (it is cached in the data dir's models/whisper), or pick the offline "
            "starter model, a local .pt file or a CTranslate2 folder.",
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch.load(weights_only=True) raises UnpicklingError and others
        raise ModelLoadError(
            f"{spec.name}: cannot read this Whisper checkpoint ({type(exc).__name__}: {_describe(exc)}).",
            "Only weights-only .pt checkpoints are loaded.",
        ) from None
    if spec.precision == "fp16" and spec.device == "cuda":
        model = model.half()
    return model
