"""The OpenAI-compatible API on a real `python launch.py` process, driven by the official `openai` client."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tests.managers import cpu_manager
from tests.ui.conftest import openai_client, studio_with

TINY = "causal-lm-seed0"  # the name of tiny_models.causal_lm (its folder's name)
SLOW = "slow-lm"  # a bigger random LM with a long context: replies that run long enough to be cut off
HELLO = [{"role": "user", "content": "hello there, how are you"}]
GREEDY = {"temperature": 0, "max_tokens": 24}
SEEDED = {"temperature": 1.0, "top_p": 1.0, "seed": 1234, "max_tokens": 32}  # varied text, the same every time
LANE_BOUND_S = 20  # a 4-token reply asked for right after a hostile request finishes within this


@pytest.fixture(scope="module")
def slow_lm(tmp_path_factory) -> Path:
    from studio.models.tiny import build_tiny_causal_lm

    folder = tmp_path_factory.mktemp("slow") / SLOW
    return build_tiny_causal_lm(
        folder, hidden_size=256, num_layers=4, intermediate_size=512, max_position_embeddings=4096
    )


@pytest.fixture(scope="module")
def adapter_dir(tiny_models, tmp_path_factory) -> Path:
    """A LoRA adapter trained for a few steps to answer HELLO with "purple elephants dance" (real peft)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models.causal_lm)
    model = AutoModelForCausalLM.from_pretrained(tiny_models.causal_lm)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"]))
    text = tok.apply_chat_template(
        HELLO + [{"role": "assistant", "content": "purple elephants dance"}], tokenize=False
    )
    batch = tok(text, return_tensors="pt")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    torch.manual_seed(0)
    for _ in range(60):
        model(**batch, labels=batch["input_ids"]).loss.backward()
        opt.step()
        opt.zero_grad()
    out = tmp_path_factory.mktemp("adapter") / "purple"
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def studio(tmp_path_factory, tiny_models, slow_lm, starter_folder):
    """A studio with the tiny LM and the slow LM loaded through the Models tab's API."""
    data = tmp_path_factory.mktemp("api-data")
    from studio.models.starter import starter_folder as folder_in

    link = folder_in(data / "models")  # the studio finds the converted starter in its data dir: no second conversion
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(starter_folder, target_is_directory=True)
    with studio_with(data, ("chat", tiny_models.causal_lm), ("chat", slow_lm)) as s:
        yield s


@pytest.fixture(scope="module")
def client(studio) -> OpenAI:
    return openai_client(studio)


def _log_lines(studio, pattern: str, timeout: float = 15.0) -> list[str]:
    """Lines of the studio's log matching `pattern`, waiting up to `timeout` for at least one."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in studio.log.read_text().splitlines() if re.search(pattern, line)]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.2)


def _stream(client: OpenAI, **kwargs) -> tuple[list[str], list, str]:
    """Content deltas, all chunks, and the last finish_reason of a streamed completion."""
    deltas, chunks, finish = [], [], None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        chunks.append(chunk)
        for choice in chunk.choices:
            if choice.delta.content:
                deltas.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    return deltas, chunks, finish


def test_models_lists_the_loaded_chat_models(client):
    ids = [m.id for m in client.models.list().data]
    assert TINY in ids and SLOW in ids
    model = client.models.retrieve(TINY)
    assert model.id == TINY and model.object == "model" and model.owned_by == "ml-studio"


def test_models_lists_every_kind_a_request_can_name(client, tmp_path):
    """Chat, image and speech models, each with its kind, engine and state; every image id draws and every speech
    id transcribes."""
    listed = {m.id: m for m in client.models.list().data}
    tiny = listed[TINY]
    assert (tiny.kind, tiny.engine, tiny.precision, tiny.loaded, tiny.state) == (
        "chat", "transformers", "fp32", True, "loaded"
    )  # fmt: skip
    assert {m.kind for m in listed.values()} == {"chat", "image", "speech"}
    assert all(isinstance(m.loaded, bool) and m.state for m in listed.values())
    images = [m for m in listed.values() if m.kind == "image"]
    speech = [m for m in listed.values() if m.kind == "speech"]
    assert "tiny-sd" in [m.id for m in images] and all(m.engine == "diffusers" for m in images)
    assert {"whisper-1", "whisper-tiny.en"} <= {m.id for m in speech}
    assert all(m.engine == "faster-whisper" for m in speech)  # the starter: CTranslate2 through faster-whisper
    assert client.models.retrieve("whisper-1").kind == "speech" and client.models.retrieve("tiny-sd").kind == "image"
    for m in images:
        result = client.images.generate(
            model=m.id, prompt="a red square", size="64x64", response_format="b64_json", extra_body={"steps": 1}
        )
        assert len(result.data) == 1, m.id
    if shutil.which("espeak-ng") is None or shutil.which("ffmpeg") is None:
        pytest.skip("espeak-ng and ffmpeg make the speech test's audio")
    wav = tmp_path / "hello.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(wav), "Thank you very much."], check=True)
    for m in speech:
        with open(wav, "rb") as f:
            text = client.audio.transcriptions.create(model=m.id, file=f, response_format="text")
        assert "thank" in text.lower(), (m.id, text)
    after = {m.id: m for m in client.models.list().data}
    assert after["tiny-sd"].state in ("loaded", "parked in RAM")  # drawn above: the manager holds it now
    assert after["whisper-1"].state in ("loaded", "parked in RAM")


def test_greedy_completion_is_deterministic_and_reports_usage(client):
    first = client.chat.completions.create(model=TINY, messages=HELLO, **GREEDY)
    second = client.chat.completions.create(model=TINY, messages=HELLO, **GREEDY)
    text = first.choices[0].message.content
    assert text and text == second.choices[0].message.content
    assert first.id.startswith("chatcmpl-") and first.object == "chat.completion" and first.model == TINY
    assert first.choices[0].message.role == "assistant" and first.choices[0].finish_reason in ("stop", "length")
    usage = first.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 24
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@pytest.mark.parametrize("sampling", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_streaming_matches_the_whole_reply(client, sampling):
    whole = client.chat.completions.create(model=TINY, messages=HELLO, **sampling)
    assert (
        whole.choices[0].message.content
        == client.chat.completions.create(model=TINY, messages=HELLO, **sampling).choices[0].message.content
    )
    deltas, chunks, finish = _stream(
        client, model=TINY, messages=HELLO, stream_options={"include_usage": True}, **sampling
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert deltas and "".join(deltas) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()


def test_a_long_reply_streams_in_several_pieces(client):
    """Updates go out at most every 40 ms: a reply that takes longer than that arrives in pieces, as it is made
    (the tiny LM can write its whole reply within one such interval, so the slower LM is used here)."""
    deltas, _, finish = _stream(client, model=SLOW, messages=HELLO, temperature=0, max_tokens=96)
    assert len(deltas) >= 3 and finish == "length", deltas


def test_stop_sequences_cut_the_reply(client):
    text = client.chat.completions.create(model=TINY, messages=HELLO, **SEEDED).choices[0].message.content
    at = next(i for i in range(len(text) // 3, len(text) - 2) if text.find(text[i : i + 3]) == i)
    stop = text[at : at + 3]
    cut = client.chat.completions.create(model=TINY, messages=HELLO, stop=[stop, "never-there"], **SEEDED)
    assert cut.choices[0].message.content == text[:at] and cut.choices[0].finish_reason == "stop"
    deltas, _, finish = _stream(client, model=TINY, messages=HELLO, stop=stop, **SEEDED)
    assert "".join(deltas) == text[:at] and finish == "stop"


def test_concurrent_requests_are_served_one_after_another(client):
    results: list[str] = []

    def ask() -> None:
        reply = client.chat.completions.create(model=TINY, messages=HELLO, **GREEDY)
        results.append(reply.choices[0].message.content)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 3 and len(set(results)) == 1


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert err.value.status_code == 404
    assert err.value.body["type"] == "invalid_request_error" and err.value.body["param"] == "model"
    assert err.value.body["code"] == "model_not_found" and "no-such-model" in err.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


@pytest.mark.parametrize(
    ("messages", "extra", "message"),
    [
        ([], {}, "'messages' is empty: send at least one message with role 'user'."),
        ([{"role": "user", "content": "  "}], {}, "messages[0] is empty: the last user message needs text."),
        ([{"role": "assistant", "content": "hi"}], {}, "The last message must be the user's."),
        (HELLO, {"temperature": 9}, "Temperature must be between 0 and 5, not 9."),
        (HELLO, {"n": 100}, "'n' must be between 1 and 8, not 100."),
        (
            HELLO * 2001,
            {},
            "The conversation has 2001 messages; one request takes at most 2000. "
            "Start a new chat, or send only the recent messages.",
        ),
        (
            [{"role": "user", "content": "x" * 600_000}, {"role": "assistant", "content": "y" * 600_000}, *HELLO],
            {},
            "The messages' text passes 1.0 MB at message 2; one request takes at most 1.0 MB of text. "
            "Start a new chat, or send shorter or fewer messages.",
        ),
    ],
)
def test_bad_requests_say_what_is_wrong(client, messages, extra, message):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=TINY, messages=messages, **extra)
    assert err.value.status_code == 400 and err.value.body["message"] == message
    assert err.value.body["type"] == "invalid_request_error"
    if len(messages) > 1:  # the caps name the field
        assert err.value.body["param"] == "messages"


def test_bad_json_and_wrong_types_give_400(studio):
    url = studio.url + "v1/chat/completions"
    bad = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("The request body is not valid JSON")
    missing = httpx.post(url, json={"model": TINY})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "messages"
    wrong = httpx.post(url, json={"model": TINY, "messages": HELLO, "temperature": "hot"})
    assert wrong.status_code == 400 and wrong.json()["error"] == {
        "message": "'temperature' must be a number (0 = greedy), not \"hot\".",
        "type": "invalid_request_error",
        "param": "temperature",
        "code": None,
    }
    assert "Traceback" not in bad.text + missing.text + wrong.text


def test_numbers_may_be_json_integers(client):
    """`"temperature": 2` is the same number as 2.0 (transformers itself refuses an int temperature)."""
    reply = client.chat.completions.create(model=TINY, messages=HELLO, temperature=2, top_p=1, seed=5, max_tokens=4)
    assert reply.choices[0].message.content
    again = client.chat.completions.create(
        model=TINY, messages=HELLO, temperature=2.0, top_p=1.0, seed=5, max_tokens=4
    )
    assert again.choices[0].message.content == reply.choices[0].message.content


def test_every_v1_error_has_openais_shape(studio):
    """404 for an unknown /v1 path and 405 for a wrong method come in OpenAI's shape; Gradio's routes keep theirs."""
    unknown = httpx.post(studio.url + "v1/no/such/route", json={})
    assert unknown.status_code == 404, unknown.text
    assert set(unknown.json()["error"]) == {"message", "type", "param", "code"}
    assert unknown.json()["error"]["code"] == "not_found" and "/v1/no/such/route" in unknown.json()["error"]["message"]
    wrong = httpx.get(studio.url + "v1/chat/completions")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed", wrong.text
    assert "POST" in wrong.json()["error"]["message"] and wrong.headers["allow"] == "POST"
    outside = httpx.get(studio.url + "gradio_api/no-such-route")
    assert outside.status_code == 404 and "error" not in outside.json(), outside.text


def test_chat_writes_n_replies_with_logprobs(client):
    reply = client.chat.completions.create(
        model=TINY, messages=HELLO, n=2, logprobs=True, top_logprobs=3, presence_penalty=0.5, user="u1", **SEEDED
    )
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.choices[0].message.content != reply.choices[1].message.content  # seed, seed + 1
    for choice in reply.choices:
        content = choice.logprobs.content
        joined = "".join(t.token for t in content)  # a token may hold half a character (shown as U+FFFD)
        assert content and (joined == choice.message.content or "\ufffd" in joined)
        for t in content:
            assert t.logprob <= 0 and len(t.top_logprobs) == 3 and t.bytes == list(t.token.encode())
            assert t.top_logprobs[0].logprob >= t.logprob - 1e-6
    biased = client.chat.completions.create(model=TINY, messages=HELLO, logit_bias={"5": 100}, **GREEDY)
    assert biased.choices[0].message.content != ""


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 100}, "n"),
        ({"logprobs": True, "top_logprobs": 50}, "top_logprobs"),
        ({"logit_bias": [1, 2]}, "logit_bias"),
        ({"presence_penalty": "x"}, "presence_penalty"),
        ({"n": 2, "stream": True}, "n"),
    ],
)
def test_bad_fields_are_named(studio, extra, param):
    r = httpx.post(studio.url + "v1/chat/completions", json={"model": TINY, "messages": HELLO, **extra})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def _forward_logprobs(folder: Path, ids: list[int]) -> list[float]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        lsm = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    return [lsm[j - 1, ids[j]].item() for j in range(1, len(ids))]


def test_completions_text_stream_and_stop(client):
    whole = client.completions.create(model=TINY, prompt="Once upon a time", temperature=0, max_tokens=16)
    text = whole.choices[0].text
    assert whole.object == "text_completion" and text and whole.usage.completion_tokens <= 16
    pieces = [
        c.choices[0].text
        for c in client.completions.create(
            model=TINY, prompt="Once upon a time", temperature=0, max_tokens=16, stream=True
        )
        if c.choices
    ]
    assert "".join(pieces) == text
    two = client.completions.create(
        model=TINY, prompt=["a b", "c d"], n=2, max_tokens=4, **{"seed": 3, "temperature": 1}
    )
    assert [c.index for c in two.choices] == [0, 1, 2, 3]
    at = next((i for i in range(1, len(text) - 1) if text[i] != " "), None)
    if at is not None:
        cut = client.completions.create(
            model=TINY, prompt="Once upon a time", temperature=0, max_tokens=16, stop=text[at : at + 1]
        )
        assert cut.choices[0].text == text[: text.find(text[at : at + 1])] and cut.choices[0].finish_reason == "stop"


def test_completions_echo_logprobs_match_a_forward_pass(client, tiny_models):
    from transformers import AutoTokenizer

    prompt = "the quick brown fox jumps over the lazy dog"
    ids = AutoTokenizer.from_pretrained(tiny_models.causal_lm)(prompt)["input_ids"]
    expected = _forward_logprobs(tiny_models.causal_lm, ids)
    for given in (prompt, ids):
        r = client.completions.create(model=TINY, prompt=given, max_tokens=0, echo=True, logprobs=2, temperature=0)
        lp = r.choices[0].logprobs
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None and len(lp.tokens) == len(ids)
        assert all(abs(a - b) < 1e-4 for a, b in zip(lp.token_logprobs[1:], expected, strict=True))
        assert lp.text_offset[0] == 0 and all(len(t) == 2 for t in lp.top_logprobs[1:])
    one = client.completions.create(model=TINY, prompt=ids, max_tokens=1, echo=True, logprobs=1, temperature=0)
    assert len(one.choices[0].logprobs.tokens) == len(ids) + 1  # what lm-evaluation-harness sends


def test_completions_echo_logprobs_on_llama_cpp(client):
    import numpy as np

    from studio.engines import llamacpp
    from studio.models import starter

    if not llamacpp.available():
        pytest.skip("llama-cpp-python is not installed")
    prompt = "The capital of France is Paris"
    r = client.completions.create(model=starter.STARTER_NAME, prompt=prompt, max_tokens=0, echo=True, logprobs=1)
    lp = r.choices[0].logprobs
    assert lp.token_logprobs[0] is None and r.choices[0].text.endswith(prompt)
    from llama_cpp import Llama

    from studio.models.starter import cache_root, ensure_starter_gguf

    llm = Llama(str(ensure_starter_gguf(cache_root() / "models")), n_ctx=256, logits_all=True, verbose=False)
    ids = llm.tokenize(prompt.encode(), add_bos=True, special=False)
    llm.eval(ids)
    logits = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    lsm = (
        logits
        - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - logits.max(-1, keepdims=True)
    )
    expected = [lsm[j - 1, ids[j]] for j in range(1, len(ids))]
    assert len(lp.tokens) == len(ids)
    assert all(abs(a - b) < 2e-3 for a, b in zip(lp.token_logprobs[1:], expected, strict=True)), (
        lp.token_logprobs,
        expected,
    )
    chat = client.chat.completions.create(
        model=starter.STARTER_NAME, messages=HELLO, logprobs=True, top_logprobs=2, max_tokens=4, temperature=0
    )
    assert chat.choices[0].logprobs.content and len(chat.choices[0].logprobs.content[0].top_logprobs) == 2


def test_a_client_that_leaves_stops_its_reply(client, studio):
    """Streaming and not: closing the connection stops generation, so the next request is not stuck behind it."""
    long = {"model": SLOW, "messages": [{"role": "user", "content": "tell me a long story"}], "max_tokens": 3500}
    stream = client.chat.completions.create(stream=True, **long)
    contents = 0
    for chunk in stream:
        contents += bool(chunk.choices and chunk.choices[0].delta.content)
        if contents >= 3:
            break
    stream.close()
    with pytest.raises(httpx.TimeoutException):
        httpx.post(studio.url + "v1/chat/completions", json=long, timeout=3)
    t0 = time.monotonic()
    reply = client.chat.completions.create(model=TINY, messages=HELLO, **GREEDY)
    assert reply.choices[0].message.content and time.monotonic() - t0 < 60
    stopped = _log_lines(studio, rf"OpenAI API: {SLOW}: .*stopped \(the client left\)")
    dropped = _log_lines(studio, rf"OpenAI API: {SLOW}: request dropped while waiting", timeout=0)
    assert len(stopped) + len(dropped) == 2, studio.log.read_text()[-3000:]
    for line in stopped:
        assert int(re.search(r": (\d+) tokens", line).group(1)) < 3500


def test_a_client_that_leaves_a_huge_conversation_does_not_hold_the_lane(studio):
    """1,999 short messages (just under the cap) to the slow LM, the client gone after 2 s: a 4-token chat asked for
    right after it finishes within a fixed bound. Trimming used to re-template the conversation after each dropped
    turn, inside the lane and deaf to the disconnect: every chat, image and transcription waited for minutes."""
    turns = [{"role": ("user", "assistant")[i % 2], "content": f"message {i}"} for i in range(1998)]
    hostile = {"model": SLOW, "messages": [*turns, *HELLO], "max_tokens": 3500}
    url, left = studio.url + "v1/chat/completions", rf"OpenAI API: {SLOW}: .*stopped \(the client left\)"
    before = len(_log_lines(studio, left, timeout=0))
    with pytest.raises(httpx.TimeoutException):
        httpx.post(url, json=hostile, timeout=2)
    t0 = time.monotonic()
    try:
        reply = httpx.post(url, json={"model": TINY, "messages": HELLO, "max_tokens": 4}, timeout=LANE_BOUND_S)
    except httpx.TimeoutException:
        pytest.fail(f"a 4-token chat still waits for the lane after {time.monotonic() - t0:.0f} s")
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["role"] == "assistant", reply.text
    deadline = time.monotonic() + 15
    while len(_log_lines(studio, left, timeout=0)) == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(_log_lines(studio, left, timeout=0)) == before + 1, studio.log.read_text()[-3000:]


def _engine_reply(folder: Path, adapter: Path, tmp: Path) -> str:
    """The greedy reply to HELLO from ChatEngine in this process, with `adapter` attached and selected."""
    from studio.engines.chat import ChatEngine, ChatParams
    from studio.models.specs import ModelSpec

    manager = cpu_manager(tmp)
    engine, spec = ChatEngine(manager), ModelSpec("chat", str(folder), "folder")
    name = engine.attach_adapter(spec, adapter)
    params = ChatParams(temperature=0, max_new_tokens=GREEDY["max_tokens"], repetition_penalty=1.0)
    return engine.complete(spec, HELLO, params, adapter=name).text


def test_adapters_are_models_of_their_own(studio, client, tiny_models, adapter_dir, tmp_path):
    from gradio_client import Client

    Client(studio.url, verbose=False).predict(
        str(tiny_models.causal_lm), "fp32", str(adapter_dir), api_name="/chat_attach"
    )
    assert f"{TINY}:purple" in [m.id for m in client.models.list().data]
    plain = {**GREEDY, "frequency_penalty": 0}  # 0 = no repetition penalty, as the adapter was trained
    base = client.chat.completions.create(model=TINY, messages=HELLO, **plain).choices[0].message.content
    tuned = client.chat.completions.create(model=f"{TINY}:purple", messages=HELLO, **plain)
    assert tuned.model == f"{TINY}:purple"
    assert tuned.choices[0].message.content != base
    # exactly what the engine answers in this process with the same adapter (what it learned varies a little
    # from run to run: CPU training is not bit-for-bit reproducible)
    assert tuned.choices[0].message.content == _engine_reply(tiny_models.causal_lm, adapter_dir, tmp_path)
    assert client.chat.completions.create(model=TINY, messages=HELLO, **plain).choices[0].message.content == base
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=f"{TINY}:no-such-adapter", messages=HELLO)


def test_the_server_still_answers(client, studio):
    assert TINY in [m.id for m in client.models.list().data]
    assert client.chat.completions.create(model=TINY, messages=HELLO, **GREEDY).choices[0].message.content
    assert httpx.get(studio.url).status_code == 200


def test_starter_knows_the_capital_of_france(client):
    from studio.models import starter

    model = starter.STARTER_NAME
    listed = {m.id: m for m in client.models.list().data}
    # the starter's own GGUF runs through llama.cpp
    assert (listed[model].engine, listed[model].precision, listed[model].kind) == ("llama.cpp", "Q4_1", "chat")
    ask = {"model": model, "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    whole = client.chat.completions.create(temperature=0, max_tokens=48, **ask)
    assert "Paris" in whole.choices[0].message.content
    deltas, _, finish = _stream(client, temperature=0, max_tokens=48, **ask)
    assert "".join(deltas) == whole.choices[0].message.content and finish == whole.choices[0].finish_reason
    by_label = client.chat.completions.create(temperature=0, max_tokens=48, **{**ask, "model": starter.STARTER_LABEL})
    assert by_label.choices[0].message.content == whole.choices[0].message.content  # the display name works too


# ----- in process, with a scripted engine: error mapping and the pieces --------------------------------------


class ScriptedChat:
    """Stands in for ChatEngine: replies with `script`, text pieces and possibly an exception to raise."""

    def __init__(self) -> None:
        self.script: list = []

    def attached(self, spec) -> list[str]:
        return []

    def stream(self, spec, messages, params, *, adapter=None, should_stop=lambda: False):
        from studio.engines.chat import ChatChunk, ChatStats

        text = ""
        for step in self.script:
            if isinstance(step, BaseException):
                raise step
            text += step
            yield ChatChunk(text=text, delta=step)
        yield ChatChunk(text=text, delta="", done=True, stats=ChatStats(3, len(self.script), 0.1, 0.05, 1, "stop"))


@pytest.fixture(scope="module")
def scripted():
    """An in-process server with only the /v1 routes, on a scripted engine; yields (client, chat)."""
    from types import SimpleNamespace

    import fastapi
    import uvicorn

    from studio.api.openai import register
    from studio.models.records import LOADED
    from studio.models.specs import ModelSpec
    from tests.ui.conftest import free_port

    spec = ModelSpec("chat", "scripted", "hub")
    record = SimpleNamespace(key=spec.key, name=spec.name, kind="chat", state=LOADED, last_used=0.0)
    manager = SimpleNamespace(
        records=lambda: [record],
        spec_for=lambda key: spec,
        models=lambda kind, states=None: [(record, spec)] if kind == "chat" else [],
    )
    chat = ScriptedChat()
    app = fastapi.FastAPI()
    register(app, SimpleNamespace(manager=manager, chat=chat, device="cpu"))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0), chat
    server.should_exit = True
    thread.join(10)


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        ("InputError", 400, None),
        ("ModelLoadError", 400, "model_load_failed"),
        ("BudgetError", 503, "insufficient_memory"),
        ("StudioOutOfMemory", 503, "out_of_memory"),
    ],
)
def test_studio_errors_keep_their_message(scripted, error, status, code):
    import studio.errors

    client, chat = scripted
    chat.script = [getattr(studio.errors, error)("It went wrong in a way the user can fix.", "Do this.")]
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="scripted", messages=HELLO)
    assert err.value.status_code == status and err.value.body["code"] == code
    assert err.value.body["message"] == "It went wrong in a way the user can fix. Do this."


def test_unexpected_errors_are_one_line_without_internals(scripted):
    client, chat = scripted
    chat.script = [RuntimeError("secret internals /home/user/path")]
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model="scripted", messages=HELLO)
    assert err.value.body["message"] == "Internal error in ML Studio (RuntimeError); the studio's log has the details."


def test_an_error_after_the_first_token_is_an_error_event(scripted):
    from studio.errors import StudioOutOfMemory

    client, chat = scripted
    chat.script = ["Hello", " wor", StudioOutOfMemory("Out of memory while answering; the reply so far is kept.")]
    deltas = []
    with pytest.raises(openai.APIError, match="Out of memory while answering"):
        for chunk in client.chat.completions.create(model="scripted", messages=HELLO, stream=True):
            deltas += [c.delta.content for c in chunk.choices if c.delta.content]
    assert deltas == ["Hello", " wor"]


def test_stop_sequences_split_across_pieces(scripted):
    client, chat = scripted
    chat.script = ["Hi <", "|e", "nd|> never sent"]
    deltas, _, finish = _stream(client, model="scripted", messages=HELLO, stop=["<|end|>", "zzz"])
    assert "".join(deltas) == "Hi " and finish == "stop"
    chat.script = ["a <", "b"]  # a held-back tail that turned out not to be a stop sequence is sent at the end
    deltas, _, finish = _stream(client, model="scripted", messages=HELLO, stop="<|end|>")
    assert "".join(deltas) == "a <b" and finish == "stop"


def test_request_fields_map_onto_chat_params():
    from studio.api.openai import ApiError, parse_request
    from studio.engines.chat import ChatParams

    req = parse_request(
        {
            "model": " m ",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            ],
            "max_tokens": 5,
            "max_completion_tokens": 7,
            "frequency_penalty": 0.4,
            "presence_penalty": 1.0,
            "seed": 3,
            "stop": "END",
        }
    )
    assert req.model == "m" and req.stops == ("END",) and not req.stream
    assert req.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert req.params == ChatParams(
        max_new_tokens=7, repetition_penalty=1.0, seed=3, frequency_penalty=0.4, presence_penalty=1.0
    )
    assert parse_request({"model": "m", "messages": HELLO}).params == ChatParams()  # the studio's defaults
    for bad, param in [
        ({"temperature": True}, "temperature"),
        ({"stop": ["a", ""]}, "stop"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"stream": "yes"}, "stream"),
    ]:
        with pytest.raises(ApiError) as err:
            parse_request({"model": "m", "messages": HELLO, **bad})
        assert err.value.status == 400 and err.value.param == param


def test_cross_site_pages_cannot_drive_the_api(studio):
    """A page on another site can post text/plain, forms and multipart without asking first: refused by its Origin,
    before anything runs or is saved. The studio's own page and clients that send no Origin go through."""
    from tests.ui.conftest import ROOT

    def saved() -> list:
        return sorted(p for p in (studio.data_dir / "outputs").rglob("*") if p.is_file())

    before = saved()
    body = json.dumps({"model": TINY, "messages": HELLO, **GREEDY})
    evil = {"Origin": "http://evil.example", "Content-Type": "text/plain"}
    port = studio.url.rstrip("/").rsplit(":", 1)[1]
    rebound = {**evil, "Origin": f"http://evil.example:{port}", "Host": f"evil.example:{port}"}  # DNS rebinding
    for headers in (evil, {**evil, "Content-Type": "application/json"}, rebound):
        r = httpx.post(studio.url + "v1/chat/completions", content=body, headers=headers, timeout=60)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_origin", r.text
    image = json.dumps({"prompt": "a cat", "model": "tiny-sd", "size": "64x64"})
    r = httpx.post(studio.url + "v1/images/generations", content=image, headers=evil, timeout=60)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_origin", r.text
    recording = (ROOT / "assets" / "speech-sample.ogg").read_bytes()
    r = httpx.post(
        studio.url + "v1/audio/transcriptions",
        files={"file": ("a.ogg", recording)},
        data={"model": "whisper-1"},
        headers={"Origin": "http://evil.example"},
        timeout=60,
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_origin", r.text
    # JSON only as JSON, whoever sends it
    r = httpx.post(studio.url + "v1/chat/completions", content=body, headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type", r.text
    assert saved() == before
    # the studio's own page, on either loopback name
    for origin in (studio.url.rstrip("/"), f"http://localhost:{port}"):
        headers = {"Origin": origin, "Content-Type": "application/json"}
        r = httpx.post(studio.url + "v1/chat/completions", content=body, headers=headers, timeout=120)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"], r.text


def test_a_client_that_leaves_stops_a_llama_cpp_reply(client, studio):
    """The starter runs through llama.cpp: a dropped stream stops its generation too, after the current token."""
    from studio.engines import llamacpp
    from studio.models import starter

    if not llamacpp.available():
        pytest.skip("llama-cpp-python is not installed")
    count = [{"role": "user", "content": "Count from 1 to 5000, separated by commas: 1, 2, 3,"}]
    long = {"model": starter.STARTER_NAME, "messages": count, "max_tokens": 3500, "temperature": 0}
    stream = client.chat.completions.create(stream=True, **long)
    contents = 0
    for chunk in stream:
        contents += bool(chunk.choices and chunk.choices[0].delta.content)
        if contents >= 3:
            break
    stream.close()
    stopped = _log_lines(studio, rf"OpenAI API: {starter.STARTER_NAME}: .*stopped \(the client left\)", timeout=30)
    assert stopped, studio.log.read_text()[-3000:]
    assert int(re.search(r": (\d+) tokens", stopped[-1]).group(1)) < 3500
