"""Other tools' chat models: Ollama's store, LM Studio's folder, the HF cache and --models-dir, on real layouts of
tiny real GGUF files; and a GGUF file without a suffix (an Ollama blob) read by its magic bytes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from studio.config import load_config
from studio.errors import ConfigError
from studio.models.discover import ModelDiscovery, discover_chat_models, find_chat_models
from studio.models.formats import file_info, is_gguf

gguf = pytest.importorskip("gguf")
np = pytest.importorskip("numpy")


def write_gguf(path: Path, arch: str = "llama", rows: int = 4) -> bytes:
    """A tiny real GGUF file (two tensors, a little metadata); its bytes, for content addressing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_head_count(2)
    writer.add_token_list([f"t{i}" for i in range(rows)])
    writer.add_tensor("token_embd.weight", np.zeros((rows, 8), np.float16))
    writer.add_tensor("output_norm.weight", np.ones(8, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def ollama_blob(store: Path, data: bytes) -> str:
    """Store `data` as Ollama does (blobs/sha256-<hex>, no suffix); its digest."""
    digest = hashlib.sha256(data).hexdigest()
    (store / "blobs").mkdir(parents=True, exist_ok=True)
    (store / "blobs" / f"sha256-{digest}").write_bytes(data)
    return f"sha256:{digest}"


def ollama_manifest(store: Path, name: str, layers: list[tuple[str, str]]) -> None:
    """manifests/<registry>/<namespace>/<model>/<tag> naming (kind, digest) layers."""
    path = store / "manifests" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    media = {k: f"application/vnd.ollama.image.{k}" for k in ("model", "projector", "template", "params")}
    path.write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": "sha256:0"},
                "layers": [{"mediaType": media[kind], "digest": digest, "size": 1} for kind, digest in layers],
            }
        )
    )


@pytest.fixture
def tiny(tmp_path) -> bytes:
    return write_gguf(tmp_path / "source" / "tiny.gguf")


def scan(home: Path, extra=(), **environ: str) -> list[tuple[str, str]]:
    return discover_chat_models(extra, home=home, environ=environ, service_home=None)


def test_ollama_models_are_named_as_ollama_names_them(tmp_path, tiny):
    home = tmp_path / "home"
    store = home / ".ollama" / "models"
    model = ollama_blob(store, tiny)
    other = ollama_blob(store, write_gguf(tmp_path / "source" / "other.gguf", rows=6))
    vision = ollama_blob(store, write_gguf(tmp_path / "source" / "vision.gguf", rows=5))
    projector = ollama_blob(store, write_gguf(tmp_path / "source" / "proj.gguf", arch="clip"))
    template = ollama_blob(store, b"{{ .Prompt }}")
    ollama_manifest(store, "registry.ollama.ai/library/llama3.2/3b", [("model", model), ("template", template)])
    ollama_manifest(store, "registry.ollama.ai/library/llama3.2/latest", [("model", model)])  # the same blob
    ollama_manifest(store, "registry.ollama.ai/library/llava/7b", [("model", vision), ("projector", projector)])
    ollama_manifest(store, "registry.ollama.ai/alice/poet/v1", [("template", template), ("model", other)])
    ollama_manifest(store, "registry.ollama.ai/library/gone/1b", [("model", "sha256:" + "ab" * 32)])  # blob deleted
    ollama_manifest(store, "registry.ollama.ai/library/notgguf/1b", [("model", template)])  # blob is not GGUF
    ollama_manifest(store, "registry.ollama.ai/library/tricky/1b", [("model", "sha256:../../etc/passwd")])
    ollama_manifest(store, "registry.ollama.ai/library/empty/1b", [("template", template)])
    (store / "manifests" / "registry.ollama.ai" / "library" / "junk").mkdir()
    (store / "manifests" / "registry.ollama.ai" / "library" / "junk" / "1b").write_text("not json")
    blob = lambda digest: store / "blobs" / digest.replace(":", "-")  # noqa: E731

    assert scan(home) == [
        ("alice/poet:v1 (Ollama)", str(blob(other))),
        ("llama3.2:3b (Ollama)", str(blob(model))),  # llama3.2:latest is the same file: offered once
        ("llava:7b (Ollama)", str(blob(vision))),
    ]
    found = find_chat_models(home=home, environ={}, service_home=None)
    assert [m.projector for m in found] == [None, None, blob(projector)]

    # $OLLAMA_MODELS replaces ~/.ollama/models; a model from another registry is named with it
    elsewhere = tmp_path / "store"
    ollama_manifest(elsewhere, "hf.co/bartowski/Tiny-GGUF/Q4_K_M", [("model", ollama_blob(elsewhere, tiny))])
    assert scan(home, OLLAMA_MODELS=str(elsewhere)) == [
        ("hf.co/bartowski/Tiny-GGUF:Q4_K_M (Ollama)", str(elsewhere / "blobs" / model.replace(":", "-")))
    ]

    # the Linux service's store (/usr/share/ollama/.ollama/models) is read too
    service = tmp_path / "usr-share-ollama"
    qwen = ollama_blob(service / ".ollama" / "models", write_gguf(tmp_path / "source" / "qwen.gguf", rows=3))
    ollama_manifest(service / ".ollama" / "models", "registry.ollama.ai/library/qwen/0.5b", [("model", qwen)])
    labels = [label for label, _ in discover_chat_models(home=home, environ={}, service_home=service)]
    assert labels == ["alice/poet:v1 (Ollama)", "llama3.2:3b (Ollama)", "llava:7b (Ollama)", "qwen:0.5b (Ollama)"]


def test_lm_studio_and_hf_cache_models_without_projectors(tmp_path, tiny):
    home = tmp_path / "home"
    lms = home / ".lmstudio" / "models"
    (lms / "bartowski" / "Phi-GGUF").mkdir(parents=True)
    (lms / "bartowski" / "Phi-GGUF" / "Phi-Q4_K_M.gguf").write_bytes(tiny)
    (lms / "bartowski" / "Phi-GGUF" / "mmproj-Phi-f16.gguf").write_bytes(tiny)  # a vision projector
    (lms / "bartowski" / "Phi-GGUF" / "notes.txt").write_text("hi")
    (lms / "bartowski" / "Broken-GGUF").mkdir()
    (lms / "bartowski" / "Broken-GGUF" / "half.gguf").write_bytes(b"\0" * 16)  # not GGUF
    old = home / ".cache" / "lm-studio" / "models" / "TheBloke" / "Old-GGUF" / "old.Q8_0.gguf"
    old.parent.mkdir(parents=True)
    old.write_bytes(write_gguf(tmp_path / "o.gguf", rows=7))
    (lms / "loop").symlink_to(lms, target_is_directory=True)  # a symlinked folder is never entered

    hub = home / ".cache" / "huggingface" / "hub"
    repo = hub / "models--Qwen--Qwen2-0.5B-Instruct-GGUF"
    blob = repo / "blobs" / hashlib.sha256(tiny).hexdigest()
    blob.parent.mkdir(parents=True)
    blob.write_bytes(tiny)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    snap_a, snap_b = repo / "snapshots" / ("a" * 40), repo / "snapshots" / ("b" * 40)
    for snap in (snap_a, snap_b):
        (snap / "q4").mkdir(parents=True)
        (snap / "q4" / "qwen-q4.gguf").symlink_to(os.path.relpath(blob, snap / "q4"))
        (snap / "mmproj-qwen.gguf").symlink_to(os.path.relpath(blob, snap))
    newer = repo / "blobs" / "c0ffee"
    newer.write_bytes(write_gguf(tmp_path / "n.gguf", rows=9))
    (snap_b / "new.gguf").symlink_to(os.path.relpath(newer, snap_b))
    (snap_a / "dangling.gguf").symlink_to("../../blobs/nothing")
    (hub / "datasets--x--y" / "snapshots" / ("c" * 40)).mkdir(parents=True)
    (hub / "datasets--x--y" / "snapshots" / ("c" * 40) / "data.gguf").write_bytes(tiny)  # not a model

    qwen = "Qwen/Qwen2-0.5B-Instruct-GGUF"
    assert scan(home) == [
        ("bartowski/Phi-GGUF/Phi-Q4_K_M.gguf (LM Studio)", str(lms / "bartowski" / "Phi-GGUF" / "Phi-Q4_K_M.gguf")),
        ("TheBloke/Old-GGUF/old.Q8_0.gguf (LM Studio)", str(old)),
        (f"{qwen}/new.gguf @bbbbbbb (HF cache)", str(snap_b / "new.gguf")),  # not the revision refs/main names
        (f"{qwen}/q4/qwen-q4.gguf (HF cache)", str(snap_a / "q4" / "qwen-q4.gguf")),
    ]  # the snapshot path, unresolved; revision b's qwen-q4.gguf is the same blob, so it is offered once

    # $HF_HUB_CACHE, else $HF_HOME/hub, names the cache; $LMSTUDIO_MODELS adds a folder
    for env, cache in (("HF_HUB_CACHE", tmp_path / "cache"), ("HF_HOME", tmp_path / "hf-home")):
        hub = cache if env == "HF_HUB_CACHE" else cache / "hub"
        snap = hub / "models--gpt2" / "snapshots" / ("c" * 40)
        snap.mkdir(parents=True)
        (snap / "gpt2.gguf").write_bytes(tiny)
        labels = [label for label, _ in scan(home, **{env: str(cache)})]
        assert labels[-1] == "gpt2/gpt2.gguf (HF cache)" and sum("HF cache" in label for label in labels) == 1
    custom = tmp_path / "lms-custom"
    (custom / "me" / "mine").mkdir(parents=True)
    (custom / "me" / "mine" / "mine.gguf").write_bytes(write_gguf(tmp_path / "m.gguf", rows=3))
    assert "me/mine/mine.gguf (LM Studio)" in [label for label, _ in scan(home, LMSTUDIO_MODELS=str(custom))]


def test_models_dir_folders_gguf_files_and_causal_lm_folders(tmp_path, tiny):
    home = tmp_path / "home"
    llms = home / "llms"
    (llms / "deep" / "a" / "b").mkdir(parents=True)
    (llms / "deep" / "a" / "b" / "deep.gguf").write_bytes(tiny)
    (llms / "mmproj-x.gguf").write_bytes(tiny)
    (llms / "my-llama").mkdir()
    (llms / "my-llama" / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (llms / "a-vae").mkdir()
    (llms / "a-vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    (llms / "broken").mkdir()
    (llms / "broken" / "config.json").write_text("{not json")
    too_deep = llms.joinpath(*"1234567") / "far.gguf"
    too_deep.parent.mkdir(parents=True)
    too_deep.write_bytes(write_gguf(tmp_path / "f.gguf", rows=3))
    outside = tmp_path / "disk"
    (outside / "qwen").mkdir(parents=True)
    (outside / "qwen" / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))

    assert scan(home, [llms, outside, outside / "qwen"]) == [
        ("deep/a/b/deep.gguf (in ~/llms)", str(llms / "deep" / "a" / "b" / "deep.gguf")),
        ("my-llama (folder in ~/llms)", str(llms / "my-llama")),
        ("qwen (folder in " + str(outside) + ")", str(outside / "qwen")),  # and not again as --models-dir itself
    ]


def test_models_dir_flag_file_and_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    assert load_config([], environ={}).models_dir == ()
    cfg = load_config(["--models-dir", str(a), "--models-dir", str(b)], environ={})
    assert cfg.models_dir == (a, b)
    assert load_config([], environ={"STUDIO_MODELS_DIR": f"{a}{os.pathsep}{b}"}).models_dir == (a, b)
    (tmp_path / "studio.toml").write_text(f'models_dir = ["{a}"]\n')
    assert load_config([], environ={}).models_dir == (a,)
    assert load_config(["--models-dir", str(b)], environ={}).models_dir == (b,)  # the command line wins

    with pytest.raises(ConfigError) as err:
        load_config(["--models-dir", str(a), "--models-dir", str(tmp_path / "nope")], environ={})
    assert err.value.message == f"--models-dir {tmp_path / 'nope'}: no such folder."
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ConfigError, match="--models-dir .*file.txt: not a folder"):
        load_config(["--models-dir", str(tmp_path / "file.txt")], environ={})
    (tmp_path / "studio.toml").write_text("models_dir = 5\n")
    with pytest.raises(ConfigError, match="models_dir must be a folder or a list of folders"):
        load_config([], environ={})


def test_an_ollama_blob_is_read_by_its_magic_bytes(tmp_path, tiny):
    blob = tmp_path / "blobs" / ("sha256-" + hashlib.sha256(tiny).hexdigest())
    blob.parent.mkdir()
    blob.write_bytes(tiny)
    assert is_gguf(blob) and is_gguf(str(blob)) and not is_gguf(tmp_path) and not is_gguf(tmp_path / "none")
    info = file_info(blob, "chat")
    assert info.method == "gguf metadata" and info.params == 4 * 8 + 8
    other = tmp_path / "blobs" / "sha256-0000"
    other.write_bytes(b"{{ .Prompt }}")
    assert not is_gguf(other)
    with pytest.raises(Exception, match="unsupported file type"):
        file_info(other, "chat")


def test_the_scan_is_remembered_for_its_ttl(tmp_path, tiny):
    llms = tmp_path / "llms"
    llms.mkdir()
    (llms / "first.gguf").write_bytes(tiny)
    now = [100.0]
    discovery = ModelDiscovery(ttl_s=10, clock=lambda: now[0])
    ask = lambda: [label for label, _ in discovery.chat_models([llms], home=tmp_path, environ={})]  # noqa: E731
    assert ask() == ["first.gguf (in ~/llms)"]
    (llms / "second.gguf").write_bytes(write_gguf(tmp_path / "s.gguf", rows=3))
    now[0] += 5
    assert ask() == ["first.gguf (in ~/llms)"]  # remembered
    now[0] += 6
    assert ask() == ["first.gguf (in ~/llms)", "second.gguf (in ~/llms)"]
    assert discovery.chat_models([], home=tmp_path, environ={}) == []  # other inputs: scanned at once


def test_a_scan_is_bounded(tmp_path, tiny, monkeypatch):
    """Each root's walk looks at MAX_ENTRIES directory entries at most (5000; 60 here, so the test stays fast) and
    descends MAX_DEPTH folders (the depth is checked in the --models-dir test)."""
    from studio.models import discover

    monkeypatch.setattr(discover, "MAX_ENTRIES", 60)
    wide = tmp_path / "wide"
    (wide / "zz").mkdir(parents=True)
    (wide / "zz" / "late.gguf").write_bytes(tiny)
    assert len(scan(tmp_path, [wide])) == 1
    for i in range(70):
        (wide / f"f{i:03}.txt").touch()
    assert scan(tmp_path, [wide]) == []  # the walk stopped within the first folder's 71 entries, before zz/
