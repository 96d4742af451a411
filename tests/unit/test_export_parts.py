"""The export's pieces that need no model: the Modelfile, the pre-tokenizer shapes, the checks and the safe writes."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest

from studio.errors import DiskFullError, InputError
from studio.export import ExportRequest, files, modelfile, parse_modelfile
from studio.export.convert import architecture
from studio.export.lora import check_adapter, effective_alpha
from studio.export.vocab import pre_by_shape

ROOT = Path(__file__).resolve().parents[2]
SMOLLM_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{- bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + "
    "m['content'] + '<|eot_id|>' }}{% endfor %}"
)


# ----- the Modelfile --------------------------------------------------------------------------------------------


def test_a_chatml_model_gets_ollamas_chatml_template_its_system_prompt_and_stop_token():
    fmt = modelfile.chat_format(SMOLLM_TEMPLATE, {"bos": "<|im_start|>", "eos": "<|im_end|>"})
    text = modelfile.render("m-Q8_0.gguf", fmt, [("temperature", "0.2"), ("top_p", "0.9")])
    parsed = parse_modelfile(text)
    assert parsed.model == "./m-Q8_0.gguf"
    assert parsed.template == modelfile.CHATML
    assert parsed.system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert parsed.stops == ["<|im_end|>"]
    assert ("temperature", "0.2") in parsed.parameters and ("top_p", "0.9") in parsed.parameters


def test_a_llama3_model_stops_at_eot_and_other_templates_are_left_to_ollama():
    llama3 = modelfile.chat_format(LLAMA3_TEMPLATE, {"eos": "<|end_of_text|>"})
    assert llama3.template == modelfile.LLAMA3 and llama3.stops == ("<|eot_id|>", "<|end_of_text|>")
    gemma = modelfile.chat_format("{{ '<start_of_turn>user\n' + m['content'] + '<end_of_turn>\n' }}", {"eos": "<eos>"})
    assert gemma.template is None and gemma.stops == ("<end_of_turn>", "<eos>")
    other = modelfile.chat_format("{{ '[INST] ' + messages[0]['content'] + ' [/INST]' }}", {"eos": "</s>"})
    parsed = parse_modelfile(modelfile.render("m.gguf", other))
    assert parsed.template is None and parsed.stops == ["</s>"]


def test_the_modelfile_reader_takes_ollamas_syntax_and_refuses_what_is_not():
    text = 'FROM ./a.gguf\n# a comment\nSYSTEM """two\nlines"""\nPARAMETER stop "<|im_end|>"\nPARAMETER num_ctx 4096\n'
    parsed = parse_modelfile(text + "ADAPTER ./lora.gguf\n")
    assert parsed.system == "two\nlines" and parsed.parameters == (("stop", "<|im_end|>"), ("num_ctx", "4096"))
    assert parsed.adapters == ("./lora.gguf",)
    with pytest.raises(ValueError, match="no FROM"):
        parse_modelfile('PARAMETER stop "x"\n')
    with pytest.raises(ValueError, match="never ends"):
        parse_modelfile('FROM ./a.gguf\nTEMPLATE """open')
    with pytest.raises(ValueError, match="unknown Modelfile instruction"):
        parse_modelfile("FROM ./a.gguf\nBOGUS 1\n")


def test_sampling_defaults_come_from_generation_config(tmp_path):
    (tmp_path / "generation_config.json").write_text('{"do_sample": true, "temperature": 0.6, "top_k": 20}')
    assert modelfile.sampling_defaults(tmp_path) == [("temperature", "0.6"), ("top_k", "20")]
    (tmp_path / "generation_config.json").write_text('{"do_sample": false, "temperature": 0.6}')
    assert modelfile.sampling_defaults(tmp_path) == []
    assert modelfile.sampling_defaults(tmp_path / "missing") == []


def test_ollama_names_are_lowercase_and_safe():
    assert modelfile.ollama_name("SmolLM2-135M-Instruct-Q4_K_M") == "smollm2-135m-instruct-q4_k_m"
    assert modelfile.ollama_name("My Run (2)") == "my-run-2"
    assert modelfile.ollama_command("A b", Path("/x y/A b.Modelfile")) == "ollama create a-b -f '/x y/A b.Modelfile'"


# ----- the tokenizer ----------------------------------------------------------------------------------------


def test_pre_tokenizers_are_recognised_by_their_shape():
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    assert pre_by_shape({"pre_tokenizer": byte_level}) == "gpt-2"
    digits = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    assert pre_by_shape({"pre_tokenizer": digits}) == "smollm"
    llama3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    qwen2 = llama3.replace(r"\p{N}{1,3}", r"\p{N}")

    def split(pattern: str) -> dict:
        bl = {"type": "ByteLevel", "use_regex": False}
        return {
            "pre_tokenizer": {
                "type": "Sequence",
                "pretokenizers": [{"type": "Split", "pattern": {"Regex": pattern}}, bl],
            }
        }

    assert pre_by_shape(split(llama3)) == "llama-bpe"
    assert pre_by_shape(split(qwen2)) == "qwen2"
    assert pre_by_shape({"pre_tokenizer": {"type": "Metaspace"}}) is None


# ----- checks -----------------------------------------------------------------------------------------------


def test_an_architecture_not_covered_is_named():
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}
    with pytest.raises(InputError, match="GPT2LMHeadModel \\(model_type gpt2\\) is not covered") as info:
        architecture(config, "gpt2-folder")
    assert "Qwen2ForCausalLM" in str(info.value) and "\n" not in str(info.value)


def test_requests_are_checked_when_made(tmp_path):
    with pytest.raises(InputError, match="must be one of f16, q8_0, q4_k_m, q5_k_m, lora, not 'q3'"):
        ExportRequest("starter", "q3", data_dir=tmp_path)
    with pytest.raises(InputError, match="cannot be a file name"):
        ExportRequest("starter", "f16", name="../x", data_dir=tmp_path)
    assert ExportRequest("starter", "Q8_0", data_dir=tmp_path).format == "q8_0"


def test_adapters_a_gguf_lora_cannot_hold_are_refused():
    with pytest.raises(InputError, match="DoRA"):
        check_adapter({"peft_type": "LORA", "use_dora": True}, "run")
    with pytest.raises(InputError, match="rank_pattern"):
        check_adapter({"peft_type": "LORA", "rank_pattern": {"q_proj": 4}}, "run")
    check_adapter({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "bias": "none"}, "run")
    assert effective_alpha({"r": 16, "lora_alpha": 32}) == 32
    assert effective_alpha({"r": 16, "lora_alpha": 32, "use_rslora": True}) == 128  # 128 / 16 == 32 / sqrt(16)


def test_a_quantization_the_build_does_not_offer_is_one_line(monkeypatch):
    from studio.export import quantize

    monkeypatch.setitem(quantize.FTYPES, "q4_k_m", "LLAMA_FTYPE_NOT_IN_THIS_BUILD")
    reason = quantize.offered("q4_k_m")
    assert "does not offer Q4_K_M quantization" in reason
    with pytest.raises(InputError, match="does not offer Q4_K_M") as info:
        quantize.check_offered("q4_k_m")
    assert "\n" not in str(info.value)


# ----- disk and atomic writes -------------------------------------------------------------------------------


def test_the_disk_check_says_what_is_needed_and_what_is_free(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "free_bytes", lambda folder: 100 * 1024**2)
    with pytest.raises(DiskFullError, match="Not enough disk space .* needs about .* and 100 MB is free"):
        files.check_space(tmp_path, 500 * 1024**2, "the Q8_0 export")
    assert files.check_space(tmp_path, 1024, "a small export") == 100 * 1024**2


def test_a_failed_write_leaves_the_earlier_file_and_no_partial(tmp_path):
    target = tmp_path / "m.gguf"
    target.write_bytes(b"earlier export")
    with pytest.raises(RuntimeError), files.staged(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("the converter failed")
    assert target.read_bytes() == b"earlier export" and list(tmp_path.iterdir()) == [target]
    with (
        pytest.raises(DiskFullError, match="disk filled up while writing m.gguf") as info,
        files.staged(target) as tmp,
    ):
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert "earlier exports are intact" in str(info.value)
    assert target.read_bytes() == b"earlier export" and list(tmp_path.iterdir()) == [target]
    with files.staged(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and list(tmp_path.iterdir()) == [target]


def test_partials_of_dead_exports_are_swept_and_live_ones_kept(tmp_path):
    import os

    dead, live = tmp_path / f".a.gguf.999999999{files.PARTIAL}", files.partial_path(tmp_path / "b.gguf")
    dead.write_bytes(b"x")
    live.write_bytes(b"y")
    files.remove_partials(tmp_path)
    assert not dead.exists() and live.exists() and str(os.getpid()) in live.name


# ----- the command line -------------------------------------------------------------------------------------


def test_the_cli_says_what_is_wrong_in_one_line_and_exits_1(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "studio.export", *args, "--data-dir", str(tmp_path)]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)

    for args, words in (
        (("starter", "--to", "q3_k"), "must be one of f16, q8_0"),
        ((str(tmp_path / "nothing"), "--to", "f16"), "no such folder"),
        ((str(tmp_path), "--to", "f16"), "neither a run folder (job.json) nor a model folder"),
        (("starter",), "the following arguments are required: --to"),
    ):
        done = run(*args)
        assert done.returncode == 1, done
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], done.stderr
        assert done.stdout == ""
