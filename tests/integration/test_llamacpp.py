"""Chat through llama.cpp on the starter model's real GGUF file, under the real model manager."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from studio.engines import llamacpp

pytestmark = pytest.mark.skipif(
    not llamacpp.available(), reason=f"llama-cpp-python is not installed ({llamacpp.unavailable_reason()})"
)

from studio.engines.chat import ChatEngine, ChatParams  # noqa: E402
from studio.errors import BudgetError, InputError, ModelLoadError  # noqa: E402
from studio.models.records import LOADED  # noqa: E402
from studio.models.specs import ModelSpec  # noqa: E402
from tests.fakes import FakeGpuProbe  # noqa: E402
from tests.managers import cpu_manager  # noqa: E402

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = ChatParams(temperature=0, max_new_tokens=40)
MIB = 1024**2


@pytest.fixture(scope="module")
def starter_gguf() -> Path:
    from studio.models.starter import cache_root, ensure_starter_gguf

    return ensure_starter_gguf(cache_root() / "models")


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> ChatEngine:
    return ChatEngine(cpu_manager(tmp_path_factory.mktemp("llamacpp"), budget=2 * 1024**3))


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    from studio.models.starter import starter_llamacpp_spec

    return starter_llamacpp_spec("cpu")


def file_spec(path: Path, device: str = "cpu") -> ModelSpec:
    return ModelSpec("chat", str(path), "file", device=device, backend="llama.cpp")


def test_the_starter_gguf_answers_paris_through_llama_cpp(engine, spec):
    chunks = list(engine.stream(spec, FRANCE, GREEDY))
    last = chunks[-1]
    assert "Paris" in last.text
    assert last.stats.finish_reason == "stop" and last.stats.new_tokens > 1 and last.stats.tokens_per_s > 0
    assert "".join(c.delta for c in chunks) == last.text  # the deltas add up to the reply
    (record,) = [r for r in engine.manager.records() if r.state == LOADED]
    assert record.engine == "llama.cpp · Q4_1 · ctx 4096"
    assert record.measured_bytes == llamacpp.layout(spec).weights_bytes  # on the CPU every tensor is in RAM
    assert "GGUF header, Q4_1, KV cache f16 for 4096 tokens" in record.estimate_method


def test_the_chat_template_comes_from_the_gguf_metadata(engine, spec, starter_gguf):
    with engine.manager.acquire(llamacpp.llamacpp_spec(spec)) as lease:
        lm = lease.model
        ids = lm.template_ids([{"role": "system", "content": "Be brief."}, *FRANCE])
        text = lm.llm.detokenize(ids, special=True).decode()
    assert "tokenizer.chat_template" in lm.llm.metadata
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>") and text.endswith("<|im_start|>assistant\n")
    assert text.count("<|im_start|>") == 3  # one per message plus the generation prompt, none doubled


def test_stop_ends_the_reply_within_a_few_tokens(engine, spec):
    seen, asks = [], []

    def stop() -> bool:  # the engine asks once per token (and a few times before the first)
        asks.append(len(seen) >= 3)
        return asks[-1]

    long = ChatParams(temperature=0.8, seed=3, max_new_tokens=400, ignore_eos=True)
    for chunk in engine.stream(spec, [{"role": "user", "content": "Tell me a long story."}], long, should_stop=stop):
        seen.append(chunk)
    last = seen[-1]
    assert last.stats.finish_reason == "stopped"
    # stopped after the current token, not at 400 (chunks carry up to 40 ms of tokens: the engine's asks count)
    assert last.stats.new_tokens <= asks.index(True) + 1 < 400


def test_seeds_reproduce_and_differ(engine, spec):
    ask = [{"role": "user", "content": "Write one sentence about the sea."}]

    def reply(seed: int) -> str:
        return engine.complete(spec, ask, ChatParams(temperature=1.0, top_p=1.0, seed=seed, max_new_tokens=24)).text

    first = reply(11)
    assert reply(11) == first
    assert any(reply(seed) != first for seed in (12, 13, 14))


def test_max_new_tokens_and_the_length_reason(engine, spec):
    last = engine.complete(spec, FRANCE, ChatParams(temperature=0.7, seed=1, max_new_tokens=4, ignore_eos=True))
    assert last.stats.new_tokens == 4 and last.stats.finish_reason == "length"


def test_a_long_conversation_is_trimmed_with_a_notice(engine, spec):
    turns = []
    for i in range(40):
        turns += [
            {"role": "user", "content": f"Question {i}: " + "tell me about the weather " * 6},
            {"role": "assistant", "content": "It is sunny and warm today. " * 6},
        ]
    turns.append({"role": "user", "content": "What is the capital of France?"})
    params = ChatParams(temperature=0, max_new_tokens=16, context_len=512)
    last = engine.complete(spec, turns, params)
    assert last.notice.startswith("Dropped the ") and "512-token context" in last.notice
    assert last.stats.prompt_tokens <= 512 - 16
    # a context of its own is another load of the file: the 4096-token one went, only one stays
    loaded = [r for r in engine.manager.records() if r.state == LOADED]
    assert [r.engine for r in loaded] == ["llama.cpp · Q4_1 · ctx 512"]


def test_json_output_through_a_grammar(engine, spec):
    import json

    params = replace(GREEDY, max_new_tokens=60, response_format={"type": "json_object"})
    ask = [{"role": "user", "content": "Give the capital of France as JSON with a key 'capital'."}]
    text = engine.complete(spec, ask, params).text
    assert isinstance(json.loads(text), dict)
    schema = {
        "type": "object",
        "properties": {"capital": {"type": "string"}},
        "required": ["capital"],
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}
    text = engine.complete(spec, ask, replace(GREEDY, max_new_tokens=60, response_format=fmt)).text
    assert isinstance(json.loads(text)["capital"], str)


def test_json_output_on_the_transformers_path_too(engine, tiny_models):
    """llguidance constrains the tiny random LM (which writes garbage otherwise) to the schema."""
    import json

    spec = ModelSpec("chat", str(tiny_models.causal_lm), "folder")
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 150}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": schema, "strict": True}}
    last = engine.complete(spec, FRANCE, replace(GREEDY, max_new_tokens=200, response_format=fmt))
    value = json.loads(last.text)
    assert set(value) == {"name", "age"} and isinstance(value["age"], int) and last.stats.finish_reason == "stop"


def test_a_forced_tool_call_through_a_llama_cpp_grammar(engine, spec):
    """tool_choice naming a function decodes through llama.cpp's grammar as a call of it; the tools reach the
    prompt (SmolLM2's template does not render tools: the Hermes system prompt carries them)."""
    import json

    from studio.engines.tools import call_format, check_tools, parse_calls

    tools = check_tools(
        [
            {
                "type": "function",
                "function": {
                    "name": "get_capital",
                    "description": "The capital city of a country",
                    "parameters": {
                        "type": "object",
                        "properties": {"country": {"type": "string", "maxLength": 20}},
                        "required": ["country"],
                        "additionalProperties": False,
                    },
                },
            }
        ]
    )
    params = replace(GREEDY, max_new_tokens=60, tools=tools, response_format=call_format(tools, "get_capital"))
    last = engine.complete(spec, FRANCE, params)
    parsed = parse_calls(last.text, ["get_capital"])
    assert parsed is not None, last.text
    args = json.loads(parsed[1][0]["function"]["arguments"])
    assert set(args) == {"country"} and isinstance(args["country"], str)
    lease = engine.manager.lease_if_loaded(engine.runtime_spec(spec, params)[0].key)
    with lease:
        prompt = lease.model.llm.detokenize(engine._template_ids(lease.model, FRANCE, tools)).decode()
    assert "get_capital" in prompt and "The capital city of a country" in prompt


# ----- bad input ----------------------------------------------------------------------------------------------


def test_a_context_above_the_models_is_refused(engine, spec):
    with pytest.raises(InputError, match="trained for \\(8192\\)"):
        engine.complete(spec, FRANCE, replace(GREEDY, context_len=100_000))


def test_a_quantized_kv_cache_needs_flash_attention(engine, spec):
    with pytest.raises(InputError, match="needs flash attention"):
        engine.complete(spec, FRANCE, replace(GREEDY, kv_cache_type="q8_0"))
    last = engine.complete(spec, FRANCE, replace(GREEDY, kv_cache_type="q8_0", flash_attn=True))
    assert last.stats.new_tokens > 1
    with pytest.raises(InputError, match="KV cache type must be one of f16, q8_0, q4_0"):
        replace(GREEDY, kv_cache_type="q3").check_inputs()


def test_a_file_that_is_not_gguf(engine, tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"not a model at all" * 100)
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        engine.complete(file_spec(fake), FRANCE, GREEDY)


def test_a_truncated_gguf(engine, tmp_path, starter_gguf):
    cut = tmp_path / "cut.gguf"
    with open(starter_gguf, "rb") as src, open(cut, "wb") as out:
        out.write(src.read(starter_gguf.stat().st_size // 2))
    with pytest.raises(ModelLoadError, match="cut short"):
        engine.complete(file_spec(cut), FRANCE, GREEDY)


def test_an_architecture_llama_cpp_cannot_run(engine, tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "madeup.gguf"
    writer = gguf.GGUFWriter(str(path), "madeupformer")
    writer.add_block_count(1)
    writer.add_context_length(128)
    writer.add_embedding_length(8)
    writer.add_head_count(2)
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((8, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match="'madeupformer'"):
        engine.complete(file_spec(path), FRANCE, GREEDY)
    assert engine.complete(llamacpp_starter(), FRANCE, GREEDY).text  # and the engine still answers


def llamacpp_starter() -> ModelSpec:
    from studio.models.starter import starter_llamacpp_spec

    return starter_llamacpp_spec("cpu")


# ----- the manager: partial offload, eviction, memory coming back ------------------------------------------------


def gpu_manager(folder: Path, budget: int):
    from studio.memory.timeline import EventLog
    from studio.models.calibration import Calibration
    from studio.models.kinds import default_registry
    from studio.models.manager import ModelManager

    return ModelManager(
        probe=FakeGpuProbe(),
        kinds=default_registry(),
        calibration=Calibration(folder / "calibration.json"),
        events=EventLog(),
        device="cuda",
        budget_bytes=budget,
        reserve_bytes=0,
    )


def test_the_manager_plans_a_partial_offload_when_the_whole_model_does_not_fit(tmp_path, starter_gguf):
    spec = llamacpp.llamacpp_spec(file_spec(starter_gguf, "cuda"))
    lay = llamacpp.layout(spec)
    whole = llamacpp.estimate(spec, llamacpp.Workload())
    per_layer = lay.per_layer + lay.kv_bytes(4096, "f16", layers=1)
    fixed = lay.compute_bytes(4096, False)
    budget = fixed + 12 * per_layer + per_layer // 2  # room for 12 of the 30 layers
    assert whole.total > budget

    manager = gpu_manager(tmp_path, budget)
    plan = manager.plan(spec)
    assert plan.fits
    assert "12 of 30 layers on the GPU; the rest on the CPU will slow replies" in plan.message
    assert plan.estimate.total <= budget

    engine = ChatEngine(manager)
    last = engine.complete(spec, FRANCE, GREEDY)  # this llama.cpp build is the CPU one: the split is planned,
    assert "Paris" in last.text  # and the answer is the same
    with manager.acquire(spec) as lease:
        assert lease.model.gpu_layers == 12
    (record,) = manager.records()
    assert record.measured_bytes == 12 * lay.per_layer
    assert "12 of 30 layers on the GPU" in record.estimate_method
    assert any("12 of 30 layers on the GPU" in e.detail for e in manager.events.last(10))
    # room for the whole model: every layer goes to the GPU
    roomy = gpu_manager(tmp_path / "roomy", whole.total + MIB)
    assert "layers on the GPU" not in roomy.plan(spec).message


def test_a_model_larger_than_the_budget_and_ram_is_refused(tmp_path, starter_gguf):
    spec = llamacpp.llamacpp_spec(file_spec(starter_gguf, "cuda"))
    manager = gpu_manager(tmp_path, 20 * MIB)  # not even the compute buffer and one layer
    plan = manager.plan(spec)
    assert not plan.fits and "does not fit" in plan.message
    with pytest.raises(BudgetError, match="Not enough memory"):
        ChatEngine(manager).complete(spec, FRANCE, GREEDY)


def test_a_llama_cpp_model_is_evicted_for_an_image_model_and_back(tmp_path, tiny_models, spec):
    from studio.models.specs import spec_from_form

    chat_est = llamacpp.estimate(llamacpp.llamacpp_spec(spec), llamacpp.Workload())
    manager = cpu_manager(tmp_path, budget=chat_est.total + 32 * MIB)  # one or the other
    engine = ChatEngine(manager)
    assert "Paris" in engine.complete(spec, FRANCE, GREEDY).text
    image = spec_from_form("cpu", "image", str(tiny_models.sd_pipeline), "fp32")
    image_est = manager.estimate(image)
    if image_est.total + chat_est.total <= manager.budget_bytes():
        manager.set_budget(image_est.total + chat_est.total - MIB, 0)
    plan = manager.plan(image)
    assert [e.action for e in plan.evictions] == ["unload"]  # llama.cpp models are not parked: they reload fast
    manager.load(image)
    states = {r.kind: r.state for r in manager.records()}
    assert states == {"chat": "unloaded", "image": "loaded"}
    assert "Paris" in engine.complete(spec, FRANCE, GREEDY).text  # and back: the image model goes
    states = {r.kind: r.state for r in manager.records()}
    assert states["chat"] == "loaded" and states["image"] != "loaded"


def test_unloading_gives_the_memory_back(tmp_path, starter_gguf):
    from studio.memory.probes import HostProbe

    probe = HostProbe()
    copy = tmp_path / "own.gguf"  # a file of its own: no other test's mapping of the starter shares its pages
    shutil.copyfile(starter_gguf, copy)
    manager = cpu_manager(tmp_path)
    engine = ChatEngine(manager)
    spec = file_spec(copy)
    before = probe.snapshot().this_process
    engine.complete(spec, FRANCE, ChatParams(temperature=0, max_new_tokens=8))
    loaded = probe.snapshot().this_process
    assert loaded - before > 50 * MIB  # the weights and the KV cache
    ((record, loaded_spec),) = manager.models("chat", (LOADED,))
    report = manager.unload(record.key)
    assert not report.leaked
    after = probe.snapshot().this_process
    assert loaded - after > 0.6 * (loaded - before), (before, loaded, after)
    assert report.observed is not None and report.observed > 0.6 * (loaded - before)


def test_lora_adapters_move_the_model_to_transformers_and_say_so(tmp_path, spec, starter_folder):
    """llama.cpp does not run PEFT adapters: with one attached, the starter answers through transformers (the
    reply says so), and detached it runs through llama.cpp again."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(starter_folder)
    adapter = tmp_path / "probe-adapter"
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter)
    engine = ChatEngine(cpu_manager(tmp_path, budget=3 * 1024**3))
    assert engine.complete(spec, FRANCE, GREEDY).notice == ""
    name = engine.attach_adapter(spec, adapter)
    assert engine.attached(spec) == [name]
    last = engine.complete(spec, FRANCE, GREEDY, adapter=name)
    assert "answers through transformers while LoRA adapters are attached" in last.notice
    assert "Paris" in engine.complete(spec, FRANCE, GREEDY).text  # the base, on the transformers path
    engines = {r.engine for r in engine.manager.records() if r.state == LOADED}
    assert "transformers · FP32" in engines
    engine.detach_adapter(spec, name)
    last = engine.complete(spec, FRANCE, GREEDY)
    assert last.notice == "" and "Paris" in last.text
    loaded = [r for r in engine.manager.records() if r.state == LOADED and r.engine.startswith("llama.cpp")]
    assert loaded


def test_cpu_threads_from_the_flag_reach_llama_cpp(starter_gguf):
    from studio.config import load_config
    from studio.errors import ConfigError
    from studio.models.kinds import LoadOptions, _load_lm

    config = load_config(["--cpu-threads", "1"], {})
    assert config.cpu_threads == 1 and load_config([], {"STUDIO_CPU_THREADS": "3"}).cpu_threads == 3
    for bad in ("-1", "two"):
        with pytest.raises(ConfigError, match="cpu.threads"):
            load_config(["--cpu-threads", bad], {})
    spec = llamacpp.llamacpp_spec(file_spec(starter_gguf))
    lm = _load_lm(spec, LoadOptions(cpu_threads=config.cpu_threads))
    try:
        assert lm.llm.n_threads == 1 and lm.llm.n_threads_batch == 1
    finally:
        lm.close()
    lm = _load_lm(spec, LoadOptions())  # 0: one per core
    try:
        assert lm.llm.n_threads == llamacpp.cpu_cores()
    finally:
        lm.close()
