"""Which GGUF files see images: the projector beside a model (one of several chosen by name), an explicit one, and
the Chat picker's mark, from file names alone (no model is loaded)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from studio.engines import llamacpp
from studio.errors import ModelLoadError
from studio.models.gguf_vision import find_projector, projector_path, takes_images, with_projector
from studio.models.specs import ModelSpec
from studio.ui.chat_tab import TAKES_IMAGES, local_chat_models
from tests.fakes import FakeGpuProbe


def gguf(path: Path) -> Path:
    path.write_bytes(b"GGUF" + b"\0" * 60)  # the magic bytes: what the pickers look at
    return path


def spec(path: Path, **options: str) -> ModelSpec:
    return ModelSpec("chat", str(path), "file", backend="llama.cpp", options=tuple(options.items()))


def test_the_only_projector_beside_a_model_is_its_own(tmp_path):
    model = gguf(tmp_path / "gemma-3-4b-it-Q4_K_M.gguf")
    assert find_projector(model) is None and not takes_images(spec(model))
    projector = gguf(tmp_path / "mmproj-model-f16.gguf")
    assert find_projector(model) == projector and takes_images(spec(model))
    assert find_projector(projector) is None  # a projector has no projector
    assert not takes_images(ModelSpec("chat", str(model), "file"))  # through transformers it does not see


def test_of_several_projectors_the_one_named_like_the_model_is_taken(tmp_path):
    model = gguf(tmp_path / "Qwen2.5-VL-3B-Instruct-Q4_K_M.gguf")
    gguf(tmp_path / "mmproj-gemma-3-4b-it-f16.gguf")
    mine = gguf(tmp_path / "mmproj-Qwen2.5-VL-3B-Instruct-f16.gguf")
    assert find_projector(model) == mine


def test_an_explicit_projector_wins_and_is_part_of_the_spec(tmp_path):
    model = gguf(tmp_path / "model.gguf")
    gguf(tmp_path / "mmproj-beside.gguf")
    elsewhere = gguf(tmp_path.parent / f"{tmp_path.name}-mmproj-other.gguf")
    chosen = with_projector(spec(model), elsewhere)
    assert projector_path(chosen) == elsewhere.resolve()
    assert chosen.key != with_projector(spec(model)).key  # another projector is another model in the manager


def test_the_picker_marks_a_gguf_with_its_projector_and_leaves_the_projector_out(tmp_path):
    gguf(tmp_path / "seeing.gguf")
    gguf(tmp_path / "mmproj-seeing.gguf")
    labels = dict((value, label) for label, value in local_chat_models(tmp_path))
    assert labels[str(tmp_path / "seeing.gguf")] == f"seeing.gguf (single file){TAKES_IMAGES}"
    assert str(tmp_path / "mmproj-seeing.gguf") not in labels
    alone = tmp_path / "alone"
    alone.mkdir()
    gguf(alone / "words.gguf")
    assert (
        dict((v, lbl) for lbl, v in local_chat_models(alone))[str(alone / "words.gguf")] == "words.gguf (single file)"
    )


def hub_cache(root: Path, repo: str, *files: str) -> None:
    """The Hugging Face cache's layout for `files` of `repo` (refs/main -> a snapshot folder), as a download leaves
    it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name in files:
        gguf(snapshot / name)


@pytest.mark.skipif(
    not llamacpp.available(), reason="llama-cpp-python is not installed (precision auto is transformers)"
)
def test_a_catalog_gguf_vision_model_runs_its_cached_file_with_its_projector(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from studio.models.gguf_vision import CATALOG, catalog_value

    entry = CATALOG[0]
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    hub_cache(tmp_path, entry.repo, entry.model_file)  # the projector is missing: not downloaded yet
    with pytest.raises(ModelLoadError, match=re.escape(f"{entry.label} is not downloaded yet")) as info:
        llamacpp.chat_spec("cpu", catalog_value(entry), llamacpp.AUTO)
    assert f"hf download {entry.repo} {entry.model_file} {entry.projector_file}" in info.value.tip
    hub_cache(tmp_path, entry.repo, entry.projector_file)
    spec = llamacpp.chat_spec("cpu", catalog_value(entry), llamacpp.AUTO)
    assert (spec.source_type, spec.backend, spec.name) == ("file", "llama.cpp", entry.label)
    assert Path(spec.source).name == entry.model_file and projector_path(spec).name == entry.projector_file
    assert takes_images(spec)


def test_the_picker_offers_the_gguf_vision_catalog_as_taking_images(tmp_path):
    from studio.config import StudioConfig
    from studio.context import build_context
    from studio.models.gguf_vision import CATALOG, catalog_value
    from studio.ui.chat_tab import model_choices

    ctx = build_context(StudioConfig(data_dir=tmp_path), probe=FakeGpuProbe(), start_monitor=False)
    labels = dict((value, label) for label, value in model_choices(ctx))
    for entry in CATALOG:
        assert labels[catalog_value(entry)] == f"{entry.label}{TAKES_IMAGES} — {entry.repo}"


@pytest.mark.skipif(
    not llamacpp.available(), reason="llama-cpp-python is not installed (precision auto is transformers)"
)
def test_a_snapshot_of_symlinks_to_nameless_blobs_keeps_its_projector(tmp_path):
    """In the Hugging Face cache a snapshot's files are symlinks to blobs named by hash: the projector is found beside
    the path as given, though the spec's source is the resolved blob."""
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "abc"
    blobs.mkdir()
    snapshot.mkdir(parents=True)
    for name, blob in (("Model-Q4_K_M.gguf", "1111"), ("mmproj-Model-f16.gguf", "2222")):
        gguf(blobs / blob)
        (snapshot / name).symlink_to(blobs / blob)
    spec = llamacpp.chat_spec("cpu", str(snapshot / "Model-Q4_K_M.gguf"), llamacpp.AUTO)
    assert spec.source == str(blobs / "1111") and spec.backend == "llama.cpp"
    assert projector_path(spec) == blobs / "2222" and takes_images(spec)
    assert projector_path(llamacpp.chat_spec("cpu", str(blobs / "1111"), llamacpp.AUTO)) is None  # by the blob alone


def test_a_discovered_gguf_with_its_projector_is_marked_in_the_picker(tmp_path):
    from studio.config import StudioConfig
    from studio.context import build_context
    from studio.ui.chat_tab import model_choices

    llms = tmp_path / "llms"
    llms.mkdir()
    gguf(llms / "seeing.gguf")
    gguf(llms / "mmproj-seeing.gguf")
    gguf(llms / "words.gguf")
    config = StudioConfig(data_dir=tmp_path / "data", models_dir=(llms,))
    ctx = build_context(config, probe=FakeGpuProbe(), start_monitor=False)
    labels = dict((value, label) for label, value in model_choices(ctx))
    assert labels[str(llms / "seeing.gguf")].endswith(TAKES_IMAGES)
    assert TAKES_IMAGES not in labels[str(llms / "words.gguf")]
    assert str(llms / "mmproj-seeing.gguf") not in labels  # discovery leaves projectors out
