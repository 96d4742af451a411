"""POST /v1/embeddings on a real `python launch.py` process, driven by the official `openai` client, and the
"embedding" kind under the model manager. Everything is built offline: a tiny random BERT with a WordPiece tokenizer
in sentence-transformers' layout, and the tiny causal LM of tiny_models."""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from openai import OpenAI

from studio.models.specs import ModelSpec
from studio.models.tiny import build_tiny_encoder
from tests.managers import cpu_manager
from tests.ui.conftest import openai_client, studio_with

ENCODER = "tiny-encoder"  # the folder's name: the id the API serves it under
TINY_LM = "causal-lm-seed0"  # tiny_models.causal_lm
HIDDEN = 32  # build_tiny_encoder's hidden size
LM_HIDDEN = 64  # build_tiny_causal_lm's
CONTEXT = 64  # build_tiny_encoder's max_position_embeddings
TEXTS = ["hello there, how are you", "the cat sat on the mat", "what a lovely day it is"]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("enc") / ENCODER, max_position_embeddings=CONTEXT)


@pytest.fixture(scope="module")
def studio(tmp_path_factory, tiny_models, encoder):
    with studio_with(
        tmp_path_factory.mktemp("embed-data"), ("embedding", encoder), ("chat", tiny_models.causal_lm)
    ) as s:
        yield s


@pytest.fixture(scope="module")
def client(studio) -> OpenAI:
    return openai_client(studio)


def post(studio, body: dict) -> httpx.Response:
    return httpx.post(studio.url + "v1/embeddings", json=body, timeout=60)


def vectors(client: OpenAI, inputs, model: str = ENCODER) -> np.ndarray:
    out = client.embeddings.create(model=model, input=inputs, encoding_format="float")
    assert [d.index for d in out.data] == list(range(len(out.data)))
    return np.array([d.embedding for d in out.data], dtype=np.float64)


def test_shape_normalised_deterministic_and_distinct(client):
    out = client.embeddings.create(model=ENCODER, input=TEXTS, encoding_format="float")
    assert out.object == "list" and out.model == ENCODER
    assert all(d.object == "embedding" for d in out.data)
    vecs = np.array([d.embedding for d in out.data])
    assert vecs.shape == (len(TEXTS), HIDDEN)
    again = vectors(client, TEXTS)
    assert np.array_equal(vecs, again)  # the same text twice: the same vector
    norms = np.linalg.norm(vecs, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5)  # the folder has a Normalize module
    cosine_self = vecs[0] @ again[0] / (norms[0] * np.linalg.norm(again[0]))
    assert abs(cosine_self - 1.0) < 1e-5
    assert not np.allclose(vecs[0], vecs[1], atol=1e-4) and not np.allclose(vecs[1], vecs[2], atol=1e-4)


def test_list_order_is_kept_and_matches_single_inputs(client):
    batch = vectors(client, list(reversed(TEXTS)))
    singles = np.array([vectors(client, t)[0] for t in reversed(TEXTS)])
    assert np.allclose(batch, singles, atol=1e-5)  # padding in a batch changes nothing; order is the order sent


def test_base64_decodes_to_the_same_floats(client, studio):
    floats = vectors(client, TEXTS[:2])
    raw = post(studio, {"model": ENCODER, "input": TEXTS[:2], "encoding_format": "base64"})
    assert raw.status_code == 200, raw.text
    decoded = np.array([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in raw.json()["data"]])
    assert decoded.shape == (2, HIDDEN) and np.array_equal(decoded.astype(np.float64), floats)
    default = client.embeddings.create(model=ENCODER, input=TEXTS[:2])  # the client asks for base64 itself
    assert np.allclose(np.array([d.embedding for d in default.data]), floats, atol=0)


def test_dimensions_at_the_models_own_size_is_accepted(client):
    out = client.embeddings.create(model=ENCODER, input="hi", encoding_format="float", dimensions=HIDDEN)
    assert len(out.data[0].embedding) == HIDDEN


def test_usage_counts_the_tokens_with_special_tokens(client, encoder):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(encoder)
    expected = sum(len(tok(t)["input_ids"]) for t in TEXTS)
    out = client.embeddings.create(model=ENCODER, input=TEXTS, encoding_format="float")
    assert out.usage.prompt_tokens == expected == out.usage.total_tokens


def test_token_id_inputs_embed_like_their_text(client, encoder):
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(encoder)(TEXTS[0])["input_ids"]
    assert np.allclose(vectors(client, [ids]), vectors(client, TEXTS[0]), atol=1e-6)
    assert np.allclose(vectors(client, ids), vectors(client, TEXTS[0]), atol=1e-6)  # one list of ids


def test_a_chat_model_embeds_by_its_name(client):
    vecs = vectors(client, TEXTS[:2], model=TINY_LM)
    assert vecs.shape == (2, LM_HIDDEN)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vecs, vectors(client, TEXTS[:2], model=TINY_LM))
    assert not np.allclose(vecs[0], vecs[1], atol=1e-4)


def test_models_lists_the_embedding_model_with_its_kind(client, studio):
    listed = httpx.get(studio.url + "v1/models", timeout=30).json()["data"]
    kinds = {m["id"]: m.get("kind") for m in listed}
    assert kinds[ENCODER] == "embedding" and kinds[TINY_LM] == "chat"
    model = client.models.retrieve(ENCODER)
    assert model.id == ENCODER and model.owned_by == "ml-studio" and model.kind == "embedding"


LONG = " ".join(["hello there"] * 40)  # about 80 WordPiece tokens: more than the 64-token context


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"input": ""}, "input", "empty"),
        ({"input": []}, "input", "empty"),
        ({"input": ["fine", ""]}, "input", "input[1]"),
        ({"input": ["fine", 3.5]}, "input", "input[1]"),
        ({"input": [["a"]]}, "input", "input[0]"),
        ({"input": {"text": "x"}}, "input", "must be"),
        ({}, "input", "required"),
        ({"input": LONG}, "input", f"context of {CONTEXT} tokens"),
        ({"input": ["ok"] * 2049}, "input", "2048"),
        ({"input": [[1, 2, 100000]]}, "input", "token ids"),
        ({"input": "hi", "dimensions": 8}, "dimensions", "dimensions"),
        ({"input": "hi", "dimensions": 0}, "dimensions", "at least 1"),
        ({"input": "hi", "encoding_format": "hex"}, "encoding_format", "base64"),
        ({"input": "hi", "model": ""}, "model", "required"),
    ],
)
def test_bad_inputs_are_400s_naming_the_field(studio, body, param, words):
    r = post(studio, {"model": ENCODER, **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert words in error["message"], error


def test_too_long_names_the_token_count(studio):
    error = post(studio, {"model": ENCODER, "input": ["short", LONG]}).json()["error"]
    assert "'input[1]' is " in error["message"] and " tokens, more than" in error["message"], error


def test_unknown_model_is_a_404_and_the_studio_keeps_serving(client, studio):
    r = post(studio, {"model": "no-such-model", "input": "hi"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "model", r.text
    assert r.json()["error"]["code"] == "model_not_found"
    headers = {"content-type": "application/json"}
    r = httpx.post(studio.url + "v1/embeddings", content=b"{not json", headers=headers, timeout=30)
    assert r.status_code == 400 and "error" in r.json()
    assert vectors(client, "still here").shape == (1, HIDDEN)
    reply = client.chat.completions.create(
        model=TINY_LM, messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0
    )
    assert reply.choices[0].message.content is not None


# ----- in process: the manager, the lane, the pooling config -------------------------------------------------


def test_the_manager_holds_the_embedding_model(tmp_path, encoder):
    from studio.engines.embedding import LoadedEncoder
    from studio.models.estimate import tensor_bytes
    from studio.models.records import LOADED, PARKED, UNLOADED

    manager = cpu_manager(tmp_path)
    spec = ModelSpec("embedding", str(encoder), "folder")
    est = manager.estimate(spec)
    assert est.method.startswith("safetensors header") and est.runtime_bytes > 0
    with manager.acquire(spec) as lease:
        assert isinstance(lease.model, LoadedEncoder)
        assert lease.model.pooling == "mean" and lease.model.normalize and lease.model.max_tokens == CONTEXT
        measured = tensor_bytes(lease.model)
    rec = manager.record(spec.key)
    assert rec is not None and rec.kind == "embedding" and rec.state == LOADED
    assert rec.measured_bytes == measured
    assert abs(est.weights_bytes - measured) <= 0.05 * measured, (est.weights_bytes, measured)
    manager.park(spec.key)
    assert manager.record(spec.key).state == PARKED
    with manager.acquire(spec):
        assert manager.record(spec.key).state == LOADED
    report = manager.unload(spec.key)
    assert not report.leaked and manager.record(spec.key).state == UNLOADED


def test_the_catalog_embedding_model_is_estimated_without_download(tmp_path):
    from studio.models.specs import CATALOG

    entry = next(e for e in CATALOG if e.kind == "embedding")
    est = cpu_manager(tmp_path).estimate(ModelSpec("embedding", entry.hub_id, "hub", precision="fp16"))
    assert est.weights_bytes == entry.params * 4  # fp16 runs as fp32 on the CPU
    assert "known dimensions" in est.method


def test_an_embedding_waits_for_the_lane(tmp_path, encoder):
    from studio.engines.embedding import EmbeddingEngine
    from studio.engines.lane import GpuLane

    lane = GpuLane()
    engine = EmbeddingEngine(cpu_manager(tmp_path), lane=lane)
    spec = ModelSpec("embedding", str(encoder), "folder")
    engine.embed(spec, ["warm up"])  # loaded: the next request is only the forward pass
    assert lane.wait()  # a reply holds the lane
    done = threading.Event()
    worker = threading.Thread(target=lambda: (engine.embed(spec, TEXTS), done.set()), daemon=True)
    worker.start()
    time.sleep(0.5)
    assert not done.is_set() and lane.waiting() == 1
    lane.release()
    worker.join(30)
    assert done.is_set() and not lane.busy()


def test_a_llamacpp_chat_model_is_refused_by_name(tmp_path):
    from studio.engines.embedding import EmbeddingEngine
    from studio.errors import ModelLoadError

    spec = ModelSpec("chat", str(tmp_path / "model.gguf"), "file", backend="llama.cpp")
    with pytest.raises(ModelLoadError, match="model.gguf runs through llama.cpp.*transformers precision"):
        EmbeddingEngine(cpu_manager(tmp_path)).embed(spec, ["hi"])


def test_pooling_follows_the_sentence_transformers_config(tmp_path):
    from studio.engines.embedding import sentence_transformers_config

    cls = build_tiny_encoder(tmp_path / "cls", pooling="cls", normalize=False)
    assert sentence_transformers_config(cls)[:2] == ("cls", False)
    (cls / "modules.json").unlink()  # a plain transformers folder: mean pooling, normalised
    assert sentence_transformers_config(cls)[:2] == ("mean", True)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "modules.json").write_text(json.dumps([{"path": "1_Pooling", "type": "sentence_transformers.Pooling"}]))
    (bad / "1_Pooling").mkdir()
    (bad / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_weightedmean_tokens": True}))
    from studio.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="weightedmean"):
        sentence_transformers_config(bad)
