"""Which engine a chat model runs on: precision auto picks llama.cpp for GGUF files, and without llama.cpp the
studio says it falls back to transformers."""

from __future__ import annotations

import pytest

from studio.engines import llamacpp


@pytest.fixture
def gguf_file(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((8, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    blob = tmp_path / "sha256-0123abcd"  # as Ollama stores it: no extension
    blob.write_bytes(path.read_bytes())
    return path, blob


@pytest.fixture
def without_llama_cpp(monkeypatch):
    """llama-cpp-python cannot be uninstalled for one test: `_import` answers as it does when it is missing."""
    monkeypatch.setattr(llamacpp, "_import", lambda: (None, "ModuleNotFoundError: No module named 'llama_cpp'"))


def test_auto_picks_llama_cpp_for_gguf_files_and_transformers_for_the_rest(gguf_file, tmp_path, monkeypatch):
    monkeypatch.setattr(llamacpp, "_import", lambda: (object(), ""))  # as when it is installed
    path, blob = gguf_file
    for source in (path, blob):
        spec = llamacpp.chat_spec("cpu", str(source), "auto")
        assert spec.backend == "llama.cpp" and llamacpp.fallback_notice(spec) == ""
    assert llamacpp.chat_spec("cpu", str(path), "fp32").backend == ""  # a precision: transformers
    folder = tmp_path / "hf-folder"
    folder.mkdir()
    spec = llamacpp.chat_spec("cuda", str(folder), "auto")
    assert (spec.backend, spec.precision) == ("", "nf4")
    assert llamacpp.chat_spec("cpu", str(folder), "auto").precision == "fp32"


def test_without_llama_cpp_gguf_runs_through_transformers_and_says_so(gguf_file, without_llama_cpp):
    path, _ = gguf_file
    spec = llamacpp.chat_spec("cpu", str(path), "auto")
    assert spec.backend == ""
    notice = llamacpp.fallback_notice(spec)
    assert notice.startswith("llama.cpp is not installed (ModuleNotFoundError")
    assert notice.endswith("so this GGUF model runs through transformers.")
    from studio.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="llama.cpp is not installed"):
        llamacpp.load(spec)


def test_the_engine_label(gguf_file):
    from studio.models.specs import ModelSpec

    path, _ = gguf_file
    assert llamacpp.engine_label(ModelSpec("chat", str(path), "file", precision="nf4")) == "transformers · NF4"
    spec = ModelSpec("chat", str(path), "file", backend="llama.cpp")
    assert llamacpp.engine_label(spec) == "llama.cpp"  # the file names no quantization
