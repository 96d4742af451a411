"""The chat engine on a tiny random LM through the real loaders and the manager."""

from __future__ import annotations

import random
import re
import threading
import time

import pytest
import torch

from studio.engines.chat import MAX_MESSAGES, ChatEngine, ChatParams
from studio.errors import InputError, ModelLoadError
from studio.models.specs import ModelSpec
from tests.managers import cpu_manager

GREEDY = ChatParams(temperature=0, max_new_tokens=24, repetition_penalty=1.0)
HELLO = [{"role": "user", "content": "hello there, how are you"}]
LANE_BOUND_S = 20  # a reply issued right after a hostile one finishes within this (its own work is < 2 s)


def short_turns(n: int) -> list[dict[str, str]]:
    """`n` short messages, user and assistant in turn, the last the user's (a conversation that cannot fit)."""
    return [{"role": ("user", "assistant")[(n - 1 - i) % 2], "content": f"message {i}"} for i in range(n)]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chat")
    manager = cpu_manager(tmp)
    return ChatEngine(manager)


@pytest.fixture(scope="module")
def lm_spec(tiny_models):
    return ModelSpec("chat", str(tiny_models.causal_lm), "folder", label="tiny-lm")


@pytest.fixture(scope="module")
def adapter_dir(tiny_models, tmp_path_factory):
    """A LoRA adapter trained for a few steps on the tiny LM (real peft training)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models.causal_lm)
    model = AutoModelForCausalLM.from_pretrained(tiny_models.causal_lm)
    torch.manual_seed(0)  # LoRA's initial weights too
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"]))
    text = tok.apply_chat_template(
        HELLO + [{"role": "assistant", "content": "purple elephants dance"}], tokenize=False
    )
    batch = tok(text, return_tensors="pt")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    torch.manual_seed(0)
    for _ in range(60):
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    out = tmp_path_factory.mktemp("adapter") / "purple"
    model.save_pretrained(out)
    return out


def test_stream_is_incremental_and_reports_stats(engine, lm_spec):
    chunks = list(engine.stream(lm_spec, HELLO, GREEDY))
    partial = [c for c in chunks if not c.done]
    assert len(partial) >= 2 and all(c.delta for c in partial)
    assert "".join(c.delta for c in partial) == chunks[-1].text
    stats = chunks[-1].stats
    assert chunks[-1].done and stats.new_tokens >= len(partial) and stats.ttft > 0 and stats.seconds >= stats.ttft
    assert stats.finish_reason in ("stop", "length")


def test_greedy_is_deterministic_and_seeds_reproduce(engine, lm_spec):
    assert engine.complete(lm_spec, HELLO, GREEDY).text == engine.complete(lm_spec, HELLO, GREEDY).text
    sampled = ChatParams(temperature=1.5, top_k=0, top_p=1.0, max_new_tokens=16, seed=1234)
    a, b = engine.complete(lm_spec, HELLO, sampled), engine.complete(lm_spec, HELLO, sampled)
    assert a.text == b.text and a.stats.seed == 1234


def test_stop_ends_within_a_few_tokens_and_keeps_the_partial_reply(engine, lm_spec):
    stop = threading.Event()
    checks_after_stop = []  # generate asks after every token: each check after Stop is one more token made

    def should_stop() -> bool:
        if stop.is_set():
            checks_after_stop.append(1)
        return stop.is_set()

    seen = []
    for chunk in engine.stream(lm_spec, HELLO, ChatParams(temperature=0, max_new_tokens=400), should_stop=should_stop):
        seen.append(chunk)
        if len(seen) == 3:
            stop.set()
    last = seen[-1]
    assert last.done and last.stats.finish_reason == "stopped"
    assert last.stats.new_tokens < 400 and last.text.startswith(seen[2].text)
    assert len(checks_after_stop) <= 4, f"{len(checks_after_stop)} tokens after Stop"


def test_abandoned_stream_releases_the_model(engine, lm_spec):
    gen = engine.stream(lm_spec, HELLO, ChatParams(max_new_tokens=300))
    next(gen)
    gen.close()
    assert all(r.leases == 0 for r in engine.manager.records())
    assert not engine.lane.busy()


def test_replies_take_turns_on_one_lane(engine, lm_spec):
    """The page and the API share the engine's lane: a second reply waits for the first, and a waiter that is
    stopped gives up without generating."""
    first = engine.stream(lm_spec, HELLO, ChatParams(temperature=0, max_new_tokens=300))
    next(first)  # the first reply holds the lane
    order: list[str] = []

    def second() -> None:
        *_, last = engine.stream(lm_spec, HELLO, GREEDY)
        order.append(f"second:{last.stats.finish_reason}")

    t = threading.Thread(target=second)
    t.start()
    t.join(timeout=1.0)
    assert t.is_alive(), "the second reply must wait while the first runs"
    gave_up = list(engine.stream(lm_spec, HELLO, GREEDY, should_stop=lambda: True))
    assert len(gave_up) == 1 and gave_up[0].stats.finish_reason == "stopped" and gave_up[0].text == ""
    order.append("first")
    first.close()
    t.join(timeout=60)
    assert order == ["first", "second:length"] or order == ["first", "second:stop"]
    assert not engine.lane.busy()


def test_long_conversation_drops_the_oldest_turns_with_a_notice(engine, lm_spec):
    long_turns = []
    for i in range(30):
        long_turns += [
            {"role": "user", "content": f"question number {i} " * 8},
            {"role": "assistant", "content": f"answer number {i} " * 8},
        ]
    messages = [{"role": "system", "content": "be brief"}, *long_turns, *HELLO]
    chunk = engine.complete(lm_spec, messages, ChatParams(temperature=0, max_new_tokens=8, context_len=256))
    assert "Dropped the" in chunk.notice and "256-token context" in chunk.notice
    assert chunk.stats.prompt_tokens <= 256 - 8


def dropping_one_turn_at_a_time(engine, lm, messages, params) -> tuple[list[int], int] | str:
    """What trimming gave before it was linear: re-template after each dropped turn (the reference)."""
    limit = engine.context_limit(lm, params)
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system) :]
    while True:
        ids = engine._template_ids(lm, system + turns)
        if len(ids) <= limit - params.max_new_tokens:
            return ids, len(messages) - len(system) - len(turns)
        if len(turns) <= 1:
            return f"The message is {len(ids)} tokens"
        turns = turns[2:] if len(turns) > 2 and turns[1]["role"] == "assistant" else turns[1:]
        while turns and turns[0]["role"] != "user":
            turns = turns[1:]


def test_trimming_keeps_what_dropping_one_turn_at_a_time_kept(engine, lm_spec):
    """Random conversations (any order of roles, systems in the middle) and contexts: the same turns kept, the
    same notice, the same error as re-templating after each dropped turn."""
    rng = random.Random(12)
    with engine.manager.acquire(lm_spec) as lease:
        lm = lease.model
    for _ in range(150):
        roles = rng.choices(["user", "assistant", "system"], weights=[3, 3, 1], k=rng.randint(1, 30))
        messages = [{"role": r, "content": "word " * rng.randint(1, 25)} for r in roles[:-1]]
        messages.append({"role": "user", "content": "last " * rng.randint(1, 25)})
        params = ChatParams(max_new_tokens=rng.randint(1, 40), context_len=rng.randint(48, 400))
        expected = dropping_one_turn_at_a_time(engine, lm, messages, params)
        try:
            ids, notice = engine.build_prompt(lm, messages, params)
        except InputError as exc:
            assert isinstance(expected, str) and str(exc).startswith(expected), (messages, params)
            continue
        dropped = int(re.search(r"Dropped the (\d+) oldest", notice).group(1)) if notice else 0
        assert (ids, dropped) == expected, (messages, params)
        if dropped:
            limit = engine.context_limit(lm, params)
            s = "s" if dropped != 1 else ""
            assert notice == f"Dropped the {dropped} oldest message{s} to fit the {limit}-token context."


def test_a_stop_while_the_prompt_is_trimmed_ends_the_reply(engine, lm_spec):
    engine.complete(lm_spec, HELLO, GREEDY)  # loaded: the prompt is made before the lane
    asked = []

    def stop_on_the_second_question() -> bool:
        asked.append(1)
        return len(asked) > 1

    chunks = list(engine.stream(lm_spec, short_turns(1001), GREEDY, should_stop=stop_on_the_second_question))
    assert len(chunks) == 1 and chunks[0].done and chunks[0].text == ""
    assert chunks[0].stats.finish_reason == "stopped" and chunks[0].stats.new_tokens == 0
    assert not engine.lane.busy()


def test_a_hostile_conversation_keeps_the_lane_no_longer_than_its_own_work(engine, lm_spec):
    """Nearly the most messages a request may send, Stop pressed while it runs: a normal reply asked for right
    after it finishes within a fixed bound (re-templating per dropped turn held the lane for over a minute)."""
    engine.complete(lm_spec, HELLO, GREEDY)
    stop = threading.Event()
    hostile = threading.Thread(
        target=lambda: list(
            engine.stream(
                lm_spec, short_turns(MAX_MESSAGES - 1), ChatParams(max_new_tokens=400), should_stop=stop.is_set
            )
        ),
        daemon=True,
    )
    hostile.start()
    time.sleep(0.5)
    stop.set()  # the visitor presses Stop
    t0 = time.monotonic()
    answered = []
    normal = threading.Thread(target=lambda: answered.append(engine.complete(lm_spec, HELLO, GREEDY)), daemon=True)
    normal.start()
    normal.join(LANE_BOUND_S)
    assert answered and answered[0].done, f"a normal reply still waits after {time.monotonic() - t0:.0f} s"
    hostile.join(LANE_BOUND_S)
    assert not hostile.is_alive() and not engine.lane.busy()


def test_the_message_caps_are_checked_before_the_lane(engine, lm_spec):
    """Too many messages or too much text: refused at once, naming the limit, even while another reply runs."""
    assert engine.lane.wait()  # someone else's reply holds the lane
    try:
        t0 = time.monotonic()
        with pytest.raises(InputError, match=f"2001 messages; one request takes at most {MAX_MESSAGES}"):
            engine.complete(lm_spec, short_turns(MAX_MESSAGES + 1), GREEDY)
        big = [{"role": "user", "content": "x" * 600_000}, {"role": "assistant", "content": "y" * 600_000}, *HELLO]
        with pytest.raises(
            InputError, match=r"text passes 1\.0 MB at message 2; one request takes at most 1\.0 MB of text"
        ):
            engine.complete(lm_spec, big, GREEDY)
        with pytest.raises(InputError, match="tokens with the template"):  # loaded: the prompt is made first too
            engine.complete(lm_spec, [{"role": "user", "content": "word " * 2000}], GREEDY)
        assert time.monotonic() - t0 < 5
    finally:
        engine.lane.release()


def test_max_new_tokens_of_the_whole_context_or_more_is_lowered_with_a_notice(engine, lm_spec):
    """The tiny model's context is 512 tokens and the page's default reply length 512: the reply gets half."""
    params = ChatParams(temperature=0, max_new_tokens=600, repetition_penalty=1.0, ignore_eos=True)
    chunks = list(engine.stream(lm_spec, HELLO, params))
    assert "Max new tokens lowered from 600 to 256: the context holds 512 tokens." in chunks[-1].notice
    assert chunks[-1].done and chunks[-1].stats.new_tokens == 256


@pytest.mark.parametrize(
    ("messages", "params", "needle"),
    [
        ([], GREEDY, "Type a message"),
        ([{"role": "user", "content": "   "}], GREEDY, "empty"),
        ([{"role": "robot", "content": "hi"}], GREEDY, "role 'robot'"),
        ([{"role": "user", "content": "word " * 2000}], ChatParams(context_len=128, max_new_tokens=16), "tokens"),
        (HELLO, ChatParams(temperature=-1), "Temperature"),
        (HELLO, ChatParams(max_new_tokens=0), "Max new tokens"),
        (HELLO, ChatParams(top_p=0), "Top-p"),
    ],
)
def test_bad_input_gets_a_specific_message(engine, lm_spec, messages, params, needle):
    with pytest.raises(InputError, match=needle):
        engine.complete(lm_spec, messages, params)


def test_adapter_changes_output_and_detach_restores_it_without_reload(engine, lm_spec, adapter_dir):
    base = engine.complete(lm_spec, HELLO, GREEDY).text
    loads = [e for e in engine.manager.events.since() if e.kind == "load"]
    name = engine.attach_adapter(lm_spec, adapter_dir)
    assert engine.attached(lm_spec) == ["purple"]
    tuned = engine.complete(lm_spec, HELLO, GREEDY, adapter=name).text
    assert tuned != base  # the trained adapter changes the greedy reply
    assert engine.complete(lm_spec, HELLO, GREEDY).text == base  # attached but not selected: the base answers
    engine.detach_adapter(lm_spec, name)
    assert engine.complete(lm_spec, HELLO, GREEDY).text == base
    assert [e for e in engine.manager.events.since() if e.kind == "load"] == loads  # the base was never reloaded


def test_bad_adapter_folder(engine, lm_spec, tmp_path):
    with pytest.raises(ModelLoadError, match="not a PEFT adapter"):
        engine.attach_adapter(lm_spec, tmp_path)


def test_out_of_memory_mid_generation_recovers_then_explains(engine, lm_spec, monkeypatch):
    from studio.errors import StudioOutOfMemory

    with engine.manager.acquire(lm_spec) as lease:
        model = lease.model.model
    real = model.generate
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", flaky)
    reply = engine.complete(lm_spec, HELLO, GREEDY)
    assert len(calls) == 2 and reply.done  # evicted idle models, retried, answered
    assert any(e.kind == "evict" or e.kind == "oom" for e in engine.manager.events.since()) or len(calls) == 2

    def always(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory.")

    monkeypatch.setattr(model, "generate", always)
    with pytest.raises(StudioOutOfMemory, match="Out of memory while tiny-lm was answering"):
        engine.complete(lm_spec, HELLO, GREEDY)
    monkeypatch.setattr(model, "generate", real)
    assert engine.complete(lm_spec, HELLO, GREEDY).done  # and the next request works


def test_model_without_a_chat_template_uses_the_fallback(engine, tiny_models, tmp_path):
    import shutil

    folder = tmp_path / "no-template"
    shutil.copytree(tiny_models.causal_lm, folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    cfg = folder / "tokenizer_config.json"
    import json

    data = json.loads(cfg.read_text())
    data.pop("chat_template", None)
    cfg.write_text(json.dumps(data))
    spec = ModelSpec("chat", str(folder), "folder")
    reply = engine.complete(spec, HELLO, GREEDY)
    assert reply.done and reply.stats.prompt_tokens > 5


@pytest.mark.parametrize(
    ("source", "source_type", "needle"),
    [
        ("no-such-org/no-such-model-xyz", "hub", "no-such-org/no-such-model-xyz"),
        ("{tmp}/broken.gguf", "file", "broken.gguf"),
        ("{tmp}/just-a-folder", "folder", "No .safetensors"),
    ],
)
def test_bad_models_give_specific_messages(engine, tmp_path, source, source_type, needle):
    (tmp_path / "just-a-folder").mkdir()
    (tmp_path / "just-a-folder" / "notes.txt").write_text("not a model")
    (tmp_path / "broken.gguf").write_bytes(b"GGUF\x03\x00\x00\x00garbage that is not a real header")
    spec = ModelSpec("chat", source.format(tmp=tmp_path), source_type)
    with pytest.raises(ModelLoadError, match=needle):
        engine.complete(spec, HELLO, GREEDY)


@pytest.mark.parametrize("precision", ["nf4", "int8"])
def test_quantized_load_through_bitsandbytes_on_the_cpu(engine, tiny_models, precision):
    spec = ModelSpec("chat", str(tiny_models.causal_lm), "folder", precision=precision, label=f"tiny-{precision}")
    est = engine.manager.estimate(spec)
    with engine.manager.acquire(spec) as lease:
        layer = lease.model.model.model.layers[0].self_attn.q_proj
        assert type(layer).__module__.startswith("bitsandbytes")  # really quantised, not silently fp32
    reply = engine.complete(spec, HELLO, GREEDY)
    assert reply.done and reply.stats.new_tokens > 0
    rec = next(r for r in engine.manager.records() if r.key == spec.key)
    assert abs(est.weights_bytes - rec.measured_bytes) <= 0.15 * rec.measured_bytes
    with pytest.raises(Exception, match="cannot be parked"):
        engine.manager.park(spec.key)
    engine.manager.unload(spec.key)


def test_out_of_memory_after_the_first_tokens_keeps_the_reply_so_far(engine, lm_spec, monkeypatch):
    """Out of memory once tokens are out: no retry (it would rewrite what the user has read), the partial reply
    stays with the chunks already streamed, the message says so, and the next request works."""
    from studio.errors import StudioOutOfMemory

    with engine.manager.acquire(lm_spec) as lease:
        model = lease.model.model
    real_forward = model.forward
    calls = []

    def runs_out_at_the_sixth_token(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", runs_out_at_the_sixth_token)
    chunks = []
    with pytest.raises(StudioOutOfMemory, match="the reply so far is kept") as err:
        for chunk in engine.stream(lm_spec, HELLO, GREEDY):
            chunks.append(chunk)
    assert "Lower max new tokens" in str(err.value)
    assert chunks and chunks[-1].text and not chunks[-1].done  # what was streamed stays the reply so far
    assert len(calls) == 6  # not retried
    monkeypatch.setattr(model, "forward", real_forward)
    full = engine.complete(lm_spec, HELLO, GREEDY)
    assert full.done and full.text.startswith(chunks[-1].text)  # greedy: the same start, now finished


def test_after_a_reply_unloading_frees_the_model_without_a_leak(tmp_path, tiny_models):
    """The engine's long-lived generate thread keeps nothing of a finished reply: the manager's weakref check
    finds the model gone when it is unloaded."""
    import gc
    import weakref

    from studio.models.specs import ModelSpec

    engine = ChatEngine(cpu_manager(tmp_path))
    spec = ModelSpec("chat", str(tiny_models.causal_lm), "folder")
    assert engine.complete(spec, HELLO, GREEDY).done
    with engine.manager.acquire(spec) as lease:
        module = weakref.ref(lease.model.model)  # the torch module itself, not only its wrapper
    report = engine.manager.unload(spec.key)
    gc.collect()
    assert not report.leaked and module() is None, report
