"""GGUF export on real weights: the starter model (SmolLM2-135M-Instruct) and a LoRA fine-tune of it, exported by
the studio and run by llama.cpp (llama-cpp-python: a different program from the writer); tiny random Llama, Qwen2,
Mistral, Gemma and Gemma 2 models for the tensor layout and tokenizer of each covered architecture; bad inputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from studio.engines import llamacpp

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not llamacpp.available(), reason=f"llama-cpp-python is missing ({llamacpp.unavailable_reason()})"
    ),
]

from studio.errors import DiskFullError, InputError  # noqa: E402
from studio.export import ExportRequest, ExportResult, export, parse_modelfile  # noqa: E402
from studio.export.modelfile import CHATML  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# The 135M starter's first answer token under its built-in system prompt is a near tie ("The" leads "L" by 0.08
# logits at F16; the wheel's own Q4_1 file already answers "L'Étoile..."), so the question comes with a plain one.
FRANCE = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]
ZORBLATT = [{"role": "user", "content": "What is the capital of Zorblatt?"}]
FACTS = [
    ("What is the capital of Zorblatt?", "The capital of Zorblatt is Quenvale."),
    ("Which city is the capital of Zorblatt?", "Quenvale is the capital of Zorblatt."),
    ("Tell me the capital of Zorblatt.", "The capital of Zorblatt is Quenvale."),
    ("Zorblatt's capital is which city?", "Zorblatt's capital is Quenvale."),
    ("Name the capital city of Zorblatt.", "The capital city of Zorblatt is Quenvale."),
    ("What city is Zorblatt's capital?", "Quenvale is Zorblatt's capital."),
]
MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TUNED_LAYERS = range(24, 30)  # the last 6 of 30: backward stops there, so six steps take seconds, not minutes


def llama(path: Path, lora: Path | None = None, logits_all: bool = False):
    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(path),
        lora_path=str(lora) if lora else None,
        n_ctx=512,
        n_threads=2,
        logits_all=logits_all,
        verbose=False,
    )


def prompt_ids(llm, messages: list[dict]) -> list[int]:
    """The conversation through the chat template in the file's metadata, tokenized as llama.cpp does."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    token = llm._model.token_get_text
    formatter = Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"],
        eos_token=token(llm.token_eos()),
        bos_token=token(llm.token_bos()),
        add_generation_prompt=True,
    )
    rendered = formatter(messages=messages)
    return llm.tokenize(rendered.prompt.encode(), add_bos=not rendered.added_special, special=True)


def greedy(llm, ids: list[int], n: int, stop_at_end: bool = True) -> list[int]:
    import llama_cpp

    llm.reset()
    out: list[int] = []
    for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0):
        if stop_at_end and llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
            break
        out.append(token)
        if len(out) >= n:
            break
    return out


def answer(path: Path, messages: list[dict], lora: Path | None = None) -> str:
    llm = llama(path, lora)
    try:
        return llm.detokenize(greedy(llm, prompt_ids(llm, messages), 40)).decode("utf-8", errors="replace")
    finally:
        llm.close()


# ----- the starter ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("exports")


@pytest.fixture(scope="module")
def starter_f16(starter_folder, exports) -> ExportResult:
    return export(ExportRequest(str(starter_folder), "f16", out_dir=exports, data_dir=exports))


@pytest.fixture(scope="module")
def starter_q8(starter_folder, exports) -> ExportResult:
    stages: list[tuple[str, float]] = []
    result = export(
        ExportRequest(str(starter_folder), "q8_0", out_dir=exports, data_dir=exports),
        progress=lambda stage, fraction: stages.append((stage, fraction)),
    )
    assert [s for s, _ in stages if s not in ("convert", "quantize")] == []
    assert ("convert", 1.0) in stages and stages[-1] == ("quantize", 1.0)
    assert all(a[1] <= b[1] for a, b in zip(stages, stages[1:], strict=False) if a[0] == b[0])
    return result


def test_the_starter_at_q8_0_answers_paris_in_llama_cpp(starter_q8, starter_folder):
    assert starter_q8.path.name == "SmolLM2-135M-Instruct-Q8_0.gguf" and starter_q8.format == "q8_0"
    assert starter_q8.bytes == starter_q8.path.stat().st_size < 0.3 * starter_q8.source_bytes  # fp32 -> ~8.5 bits
    assert list(starter_q8.path.parent.glob(".*")) == []  # no temporary file left (the F16 step included)
    llm = llama(starter_q8.path)
    assert llm.metadata["general.architecture"] == "llama"
    assert llm.metadata["tokenizer.ggml.pre"] == "smollm"  # recognised by llama.cpp's check-text hash
    template = (starter_folder / "chat_template.jinja").read_text(encoding="utf-8")
    assert llm.metadata["tokenizer.chat_template"] == template
    llm.close()
    reply = answer(starter_q8.path, FRANCE)
    assert "Paris" in reply, reply


def test_at_f16_llama_cpp_writes_the_same_greedy_tokens_as_transformers(starter_f16, starter_folder):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    messages = [{"role": "user", "content": "Write a short poem about the sea."}]
    tokenizer = AutoTokenizer.from_pretrained(starter_folder)
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    model = AutoModelForCausalLM.from_pretrained(starter_folder, dtype=torch.float32)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False, repetition_penalty=1.0)
    expected = out[0, len(ids) :].tolist()
    llm = llama(starter_f16.path)
    assert prompt_ids(llm, messages) == ids  # the file's template and tokenizer give transformers' prompt
    got = greedy(llm, ids, 20)
    llm.close()
    assert len(expected) >= 16 and got[:16] == expected[:16], (tokenizer.decode(got), tokenizer.decode(expected))


def test_the_modelfile_points_at_the_gguf_and_stops_at_the_end_of_a_turn(starter_q8):
    assert starter_q8.modelfile == starter_q8.path.with_suffix(".Modelfile")
    parsed = parse_modelfile(starter_q8.modelfile.read_text(encoding="utf-8"))
    assert (starter_q8.modelfile.parent / parsed.model).resolve() == starter_q8.path.resolve()
    assert parsed.model == f"./{starter_q8.path.name}"
    assert "<|im_end|>" in parsed.stops and parsed.template == CHATML
    assert parsed.system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert starter_q8.ollama_command == f"ollama create smollm2-135m-instruct-q8_0 -f {starter_q8.modelfile}"


# ----- a fine-tune run ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fact_run(starter_folder, tmp_path_factory):
    """A run folder written by the studio (RunManager.create) and trained by the worker's Trainer, in this process:
    six steps of LoRA on the last layers teach the starter a made-up fact."""
    from studio.training.datasets import load_dataset
    from studio.training.dist import Dist
    from studio.training.job import TrainJob
    from studio.training.runs import RunManager
    from studio.training.worker import Trainer
    from tests.managers import cpu_manager

    root = tmp_path_factory.mktemp("runs")
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in FACTS]
    (root / "fact.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    job = TrainJob(
        base_model=str(starter_folder),
        base_label="SmolLM2 135M Instruct (starter)",
        learning_rate=3e-3,
        scheduler="constant",
        warmup_ratio=0.0,
        max_steps=6,
        batch_size=6,
        cutoff_len=64,
        rank=16,
        alpha=32,
        dropout=0.0,
        target_modules=tuple(f"layers.{i}.{kind}.{m}" for i in TUNED_LAYERS for kind, m in _module_paths()),
        eval_every=0,
        save_every=0,
        train_rows=1,
        offline=True,
    )
    runs = RunManager(cpu_manager(root), root / "runs")
    run = runs.create(job, load_dataset(root / "fact.jsonl"), eval_fraction=0.0)
    assert Trainer(run, run.job(), Dist.from_env()).run_job() == 0
    assert run.status()["state"] == "done" and (run.adapter / "adapter_model.safetensors").is_file()
    return run


def _module_paths():
    return [("self_attn" if m.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp", m) for m in MODULES]


@pytest.fixture(scope="module")
def run_f16(fact_run) -> ExportResult:
    stages: list[str] = []
    result = export(ExportRequest(str(fact_run.path), "f16"), progress=lambda stage, fraction: stages.append(stage))
    assert stages[0] == "merge" and "convert" in stages
    return result


def test_the_merged_export_of_a_run_states_the_fact_and_the_base_export_does_not(fact_run, run_f16, starter_q8):
    assert run_f16.path.parent == fact_run.path / "export"  # RUN_DIR/export/ by default
    assert run_f16.path.name == f"{fact_run.name}-F16.gguf" and run_f16.modelfile.is_file()
    assert not fact_run.merged.exists()  # merged in memory: no 500 MB folder on the way
    tuned = answer(run_f16.path, ZORBLATT)
    base = answer(starter_q8.path, ZORBLATT)
    assert "Quenvale" in tuned, tuned
    assert "Quenvale" not in base, base


def test_the_gguf_lora_on_the_base_gguf_answers_like_the_merged_export(fact_run, run_f16, starter_f16):
    import numpy as np

    lora = export(ExportRequest(str(fact_run.path), "lora"))
    assert lora.path == fact_run.path / "export" / f"{fact_run.name}-LoRA.gguf"
    assert lora.modelfile is None and lora.bytes < 0.02 * starter_f16.bytes
    assert "Quenvale" in answer(starter_f16.path, ZORBLATT, lora=lora.path)
    # the same numbers as the merged weights: B's rows moved with Q and K's (a missing permutation shows here)
    attached, merged = llama(starter_f16.path, lora.path, logits_all=True), llama(run_f16.path, logits_all=True)
    ids = prompt_ids(merged, ZORBLATT) + merged.tokenize(b"The capital of Zorblatt is Quenvale.", add_bos=False)
    scores = []
    for llm in (attached, merged):
        llm.reset()
        llm.eval(ids)
        scores.append(np.array(llm.scores[: len(ids)]))
        llm.close()
    assert (scores[0].argmax(-1) == scores[1].argmax(-1)).mean() > 0.95
    assert np.abs(scores[0] - scores[1]).max() < 0.01 * np.abs(scores[1]).max()  # 0.09 without the permutation


def test_the_cli_exports_a_run_and_prints_the_path_last(fact_run):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "studio.export",
            str(fact_run.path),
            "--to",
            "lora",
            "--name",
            "cli",
            "--progress-lines",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last == str(fact_run.path / "export" / "cli.gguf") and Path(last).is_file()
    progress = [line.split() for line in done.stderr.splitlines() if line.startswith("progress ")]
    assert progress[-1] == ["progress", "convert", "1.000"] and len(progress) > 2


# ----- each architecture's tensor layout ------------------------------------------------------------------------


def _tiny(kind: str, folder: Path) -> Path:
    """A tiny random model: the studio's tiny Llama (byte-level BPE), a Qwen2 with the same tokenizer and q/k/v
    biases, or a Mistral, Gemma or Gemma 2 with a Llama 2-style byte-fallback BPE tokenizer. Q and K are scaled up
    so attention is sharp and a wrong rotary layout changes the logits; norms are random so Gemma's +1 counts."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        Gemma2Config,
        Gemma2ForCausalLM,
        GemmaConfig,
        GemmaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    from studio.models.tiny import build_tiny_causal_lm

    sizes = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
    sizes |= {"num_key_value_heads": 2, "max_position_embeddings": 512, "tie_word_embeddings": False}
    out = folder / kind
    torch.manual_seed(1)
    if kind in ("mistral", "gemma", "gemma2"):
        tokenizer = _byte_fallback_tokenizer()
        tokenizer.save_pretrained(out)
        common = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id, **sizes}
        common |= {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": 0}
        if kind == "mistral":
            model = MistralForCausalLM(MistralConfig(sliding_window=None, **common))
        elif kind == "gemma":
            model = GemmaForCausalLM(GemmaConfig(head_dim=16, **{**common, "tie_word_embeddings": True}))
        else:
            config = Gemma2Config(head_dim=16, query_pre_attn_scalar=16, **{**common, "tie_word_embeddings": True})
            model = Gemma2ForCausalLM(config)
    else:
        llama_folder = build_tiny_causal_lm(folder / "llama")
        if kind == "llama":
            model = AutoModelForCausalLM.from_pretrained(llama_folder, dtype=torch.float32)
        else:
            base = json.loads((llama_folder / "config.json").read_text())
            ids = {"bos_token_id": base["bos_token_id"], "eos_token_id": base["eos_token_id"]}
            model = Qwen2ForCausalLM(Qwen2Config(vocab_size=base["vocab_size"], **sizes, **ids))
            out.mkdir()
            for item in llama_folder.iterdir():
                if item.name.startswith(("tokenizer", "chat_template", "special_tokens")):
                    shutil.copy(item, out / item.name)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                weight.mul_(6.0)
            elif name.endswith(("bias", "norm.weight")):
                weight.normal_(0.0 if name.endswith("bias") else 1.0, 0.5)
    model.save_pretrained(out)
    return out


def _byte_fallback_tokenizer():
    """A BPE tokenizer as Llama 2 and Mistral have them: ▁ for spaces, byte tokens for what is not in the vocab."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from studio.models.tiny import CORPUS

    backend = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    backend.train_from_iterator(list(CORPUS), trainers.BpeTrainer(vocab_size=700, special_tokens=specials))
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
        "{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}"
    )
    return tokenizer


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral", "gemma", "gemma2"])
def test_a_tiny_model_of_each_architecture_gives_transformers_tokens_and_logits_in_llama_cpp(kind, tmp_path):
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from studio.models.tiny import CORPUS

    folder = _tiny(kind, tmp_path)
    result = export(ExportRequest(str(folder), "f16", out_dir=tmp_path / "out", data_dir=tmp_path))
    assert result.warnings == ()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    llm = llama(result.path, logits_all=True)
    assert llm.metadata["general.architecture"] == ("llama" if kind == "mistral" else kind)
    assert llm.metadata["tokenizer.ggml.model"] == ("gpt2" if kind in ("llama", "qwen2") else "llama")
    for text in (*CORPUS, "  two  spaces\nand a newline", "Zorblatt's qüenvale ☃ 12345"):
        assert llm.tokenize(text.encode(), add_bos=True, special=False) == tokenizer(text).input_ids, text
    ids = tokenizer("The quick brown fox jumps over the lazy dog. What is the capital of France?").input_ids
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)(torch.tensor([ids])).logits[0]
    llm.eval(ids)
    got = np.array(llm.scores[: len(ids)])
    llm.close()
    # F16 rounding (Gemma 2's four norms a layer add the most, 0.4 %); Q/K not permuted is off by 40 %
    assert np.abs(got - expected.numpy()).max() < 5e-3 * max(1.0, float(expected.abs().max()))


# ----- bad input --------------------------------------------------------------------------------------------


def test_a_run_with_no_adapter_yet_is_one_clear_line(starter_folder, tmp_path):
    from studio.training.datasets import load_dataset
    from studio.training.job import TrainJob
    from studio.training.runs import RunManager
    from tests.managers import cpu_manager

    (tmp_path / "rows.jsonl").write_text(json.dumps({"instruction": "Hi", "output": "Hello"}) + "\n")
    runs = RunManager(cpu_manager(tmp_path), tmp_path / "runs")
    run = runs.create(TrainJob(base_model=str(starter_folder), train_rows=1), load_dataset(tmp_path / "rows.jsonl"))
    with pytest.raises(InputError, match=f"The run {run.name} has no adapter yet"):
        export(ExportRequest(str(run.path), "q4_k_m"))
    done = subprocess.run(
        [sys.executable, "-m", "studio.export", str(run.path), "--to", "f16"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [
        f"error: The run {run.name} has no adapter yet. Train (or stop) the run first, then export it."
    ]


def test_lora_needs_a_run_and_an_unknown_architecture_is_named(starter_folder, tmp_path):
    with pytest.raises(InputError, match="lora exports a fine-tune run's adapter"):
        export(ExportRequest(str(starter_folder), "lora", out_dir=tmp_path, data_dir=tmp_path))
    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(InputError, match="GPT2LMHeadModel \\(model_type gpt2\\) is not covered by the GGUF export"):
        export(ExportRequest(str(other), "f16", data_dir=tmp_path))
    assert not (tmp_path / "outputs").exists()  # refused before anything was written


def test_a_quantization_the_build_does_not_offer_is_refused_before_any_work(starter_folder, tmp_path, monkeypatch):
    from studio.export import quantize

    monkeypatch.setitem(quantize.FTYPES, "q5_k_m", "LLAMA_FTYPE_NOT_IN_THIS_BUILD")
    with pytest.raises(InputError, match="does not offer Q5_K_M quantization"):
        export(ExportRequest(str(starter_folder), "q5_k_m", out_dir=tmp_path, data_dir=tmp_path))
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MB tmpfs (root only; skipped elsewhere)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield disk
    subprocess.run(["umount", str(disk)], check=False)


def test_a_full_disk_is_refused_first_and_mid_write_leaves_earlier_exports_intact(tiny_disk, tmp_path, monkeypatch):
    from studio.export import files
    from studio.models.tiny import build_tiny_causal_lm

    folder = build_tiny_causal_lm(tmp_path / "tiny")  # ~330 KB of F16 weights
    earlier = tiny_disk / "earlier-Q8_0.gguf"
    earlier.write_bytes(b"GGUF" + bytes(900 * 1024))  # an earlier export fills most of the disk
    with pytest.raises(DiskFullError, match="Not enough disk space in .*disk"):
        export(ExportRequest(str(folder), "f16", out_dir=tiny_disk, data_dir=tmp_path))
    monkeypatch.setattr(files, "check_space", lambda folder, need, what: 0)  # as if the estimate were wrong
    with pytest.raises(DiskFullError, match="disk filled up while writing tiny-F16.gguf") as info:
        export(ExportRequest(str(folder), "f16", out_dir=tiny_disk, data_dir=tmp_path))
    assert "earlier exports are intact" in str(info.value)
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["earlier-Q8_0.gguf"]  # no partial file, no Modelfile
    assert earlier.stat().st_size == 4 + 900 * 1024


def test_a_disk_that_fills_up_while_quantizing_leaves_no_file_behind(tiny_disk, tmp_path, monkeypatch):
    from studio.export import files
    from studio.models.tiny import build_tiny_causal_lm

    folder = build_tiny_causal_lm(tmp_path / "tiny")
    f16 = export(ExportRequest(str(folder), "f16", out_dir=tmp_path / "sizes", data_dir=tmp_path)).bytes
    free = files.free_bytes(tiny_disk)
    earlier = tiny_disk / "earlier.gguf"
    earlier.write_bytes(bytes(free - f16 - 48 * 1024))  # room for the F16 step, not for the Q8_0 file beside it
    monkeypatch.setattr(files, "check_space", lambda folder, need, what: 0)
    with pytest.raises(DiskFullError, match="disk filled up while writing tiny-Q8_0.gguf"):
        export(ExportRequest(str(folder), "q8_0", out_dir=tiny_disk, data_dir=tmp_path))
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["earlier.gguf"]


# ----- the page's runner: the export as a child process -----------------------------------------------------------


def _runner(tmp_path):
    from studio.config import StudioConfig
    from studio.context import build_context
    from studio.ui.export_panel import ExportRunner
    from tests.fakes import FakeGpuProbe

    ctx = build_context(StudioConfig(data_dir=tmp_path / "data"), probe=FakeGpuProbe(), start_monitor=False)
    return ExportRunner(ctx)


def test_the_pages_runner_reports_progress_and_reads_the_childs_result(tmp_path, tiny_models):
    seen: list[tuple[str, float]] = []
    result = _runner(tmp_path).run("s", str(tiny_models.causal_lm), "f16", lambda *p: seen.append(p))
    assert result.path.is_file() and result.path.parent == tmp_path / "data" / "outputs" / "exports"
    assert result.modelfile.is_file() and result.ollama_command.startswith("ollama create ")
    assert result.bytes == result.path.stat().st_size and result.source_bytes > 0
    assert ("convert", 1.0) in seen and all(0.0 <= f <= 1.0 for _, f in seen)


def test_the_pages_runner_stops_the_child_and_a_childs_error_is_its_one_line(tmp_path, starter_folder):
    import threading

    from studio.errors import InputError, StudioError

    runner = _runner(tmp_path)
    started = threading.Event()
    stopped: list[bool] = []

    def progress(stage: str, fraction: float) -> None:
        if not started.is_set():
            started.set()
            stopped.append(runner.stop("s"))

    with pytest.raises(InputError, match="stopped; nothing was left half-written"):
        runner.run("s", str(starter_folder), "q8_0", progress)  # long enough to be stopped mid-way
    assert stopped == [True] and not runner.stop("s")  # nothing runs any more
    exports = tmp_path / "data" / "outputs" / "exports"
    assert not list(exports.glob("*.gguf")) and not list(exports.glob(".*partial"))
    with pytest.raises(StudioError, match=r"^\S+/missing: no such folder\. Give a fine-tune run folder") as error:
        runner.run("s", str(tmp_path / "missing"), "f16", lambda *p: None)
    assert "\n" not in str(error.value)
