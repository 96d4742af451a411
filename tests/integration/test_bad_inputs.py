"""Bad input, table-driven, against one real `python launch.py`: every tab's Gradio endpoints and every /v1 route get
malformed files, wrong types, out-of-range and huge numbers, empty values and Unicode edge cases. Each answer is an
error with a specific message (never a bare "error", a traceback or an exception's class), and the studio keeps
serving after every one.

Gradio only shows a client the message of a gr.Error; anything else arrives as `{"error": null}`. So a case whose
payload has no message, or the generic "Something went wrong", is a product bug, not a flaky test.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import wave
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.ui.conftest import gradio_call, start_studio, stop_studio

NEEDS_FFMPEG = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
# what must never reach a client: tracebacks, internal exception classes, the catch-all message
LEAKS = (
    "Traceback",
    'File "',
    "ComponentProcessingError",
    "ValidationError",
    "pydantic",
    "gradio.exceptions",
    "<class ",
    "Something went wrong",
    "Internal error",
)
LM, WHISPER = "<tiny-lm>", "<tiny-whisper>"  # replaced by the tiny models' paths
NONE_ADAPTER = "(none: base model)"


@dataclass(frozen=True)
class Up:
    """A file from the `bad_files` folder, uploaded to the studio before the call (as the page does)."""

    name: str


# ----- the studio and its helpers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def studio(tmp_path_factory, tiny_models):
    s = start_studio(tmp_path_factory.mktemp("bad-inputs-data"), "--device", "cpu", "--budget-gb", "2")
    s.tiny = tiny_models
    try:
        # the tiny LM answers the chat cases and /v1/chat; the tiny Whisper is a speech model the API serves
        for kind, path in (("chat", tiny_models.causal_lm), ("speech", tiny_models.whisper_pt)):
            event, data = gradio_call(s, "models_load", [kind, str(path), "fp32"])
            assert event == "complete" and "loaded:" in data, data
        yield s
    finally:
        stop_studio(s)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> Path:
    """Malformed files: text renamed .wav, a truncated WAV, a non-image .png, binary junk and broken datasets."""
    folder = tmp_path_factory.mktemp("bad-files")
    (folder / "notes.wav").write_text("these are meeting notes, not audio\n")
    with wave.open(str(folder / "full.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(struct.pack("<h", 0) * 16000)
    (folder / "cut.wav").write_bytes((folder / "full.wav").read_bytes()[:30])  # ends inside its header
    (folder / "empty.wav").write_bytes(b"")
    (folder / "photo.png").write_text("this is not a png")
    (folder / "junk.jsonl").write_bytes(bytes(range(256)) * 16)
    (folder / "broken.jsonl").write_text('{"text": "a good row"}\n{"text": "cut off\n')
    (folder / "empty.jsonl").write_text("")
    (folder / "utf16.csv").write_text("instruction,output\nhi,there\n", encoding="utf-16")
    (folder / "good.csv").write_text("instruction,output\nSay hi,hi\n")
    (folder / "no-weights").mkdir()
    (folder / "no-weights" / "config.json").write_text("{}")
    # a row nested 100,000 deep, and one holding a whole number of 5,000 digits
    (folder / "deep.jsonl").write_text('{"text": "fine"}\n' + '{"a": ' * 100_000 + "1" + "}" * 100_000 + "\n")
    (folder / "digits.jsonl").write_text('{"text": "fine", "n": ' + "9" * 5000 + "}\n")
    # PNGs whose parameters hold numbers no setting can take, a 200 MB zTXt chunk, a 100000x100000 header
    for name, field in (
        ("seed-1e999", "Seed: 1e999"),
        ("steps-400-digits", "Steps: " + "9" * 400),
        ("cfg-nan", "CFG scale: nan"),
    ):
        text = f"parameters\0a lighthouse\n{field}, Sampler: Euler a, Size: 64x64"
        write_png(folder / f"{name}.png", 8, 8, png_chunk(b"tEXt", text.encode()))
    squeeze = zlib.compressobj(9)
    huge = squeeze.compress(b"a" * (200 << 20)) + squeeze.flush()  # 200 MB of text in about 200 kB
    write_png(folder / "ztxt-200mb.png", 8, 8, png_chunk(b"zTXt", b"parameters\0\0" + huge))
    write_png(folder / "bomb.png", 100_000, 100_000)
    return folder


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(path: Path, width: int, height: int, *chunks: bytes) -> None:
    """A PNG with this header and these chunks before one tiny IDAT (the pixels do not match a large header)."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    pixels = png_chunk(b"IDAT", zlib.compress(b"\0" * 25))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + b"".join(chunks) + pixels + png_chunk(b"IEND", b""))


def upload(studio, path: Path) -> dict[str, Any]:
    with httpx.Client(base_url=studio.url, timeout=60) as client, path.open("rb") as f:
        r = client.post("gradio_api/upload", files=[("files", (path.name, f))])
        r.raise_for_status()
    return {"path": r.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


def resolve(studio, bad_files: Path, value: Any) -> Any:
    """The case's data with the placeholders filled in: tiny model paths and uploaded files."""
    if isinstance(value, Up):
        return upload(studio, bad_files / value.name)
    if value == LM:
        return str(studio.tiny.causal_lm)
    if value == WHISPER:
        return str(studio.tiny.whisper_pt)
    if isinstance(value, list):
        return [resolve(studio, bad_files, v) for v in value]
    if isinstance(value, dict):
        return {k: resolve(studio, bad_files, v) for k, v in value.items()}
    return value


def assert_specific(message: Any, expected: tuple[str, ...]) -> None:
    assert isinstance(message, str) and message.strip(), f"no message reached the client: {message!r}"
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"
    for leak in LEAKS:
        assert leak not in message, f"{leak!r} leaked into {message!r}"


def assert_still_serving(studio) -> None:
    assert studio.proc.poll() is None, f"the studio died:\n{studio.log.read_text()[-3000:]}"
    assert httpx.get(studio.url, timeout=10).status_code == 200
    assert httpx.get(studio.url + "v1/models", timeout=10).status_code == 200


# ----- the table: Gradio endpoints of every tab ----------------------------------------------------------------


def chat(**changes) -> list:
    """The `chat` endpoint's 14 inputs for the tiny LM, with `changes` applied."""
    values = {
        "history": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
        "side": [],
        "model": LM,
        "precision": "fp32",
        "system": "",
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 50,
        "repetition": 1.1,
        "max_new": 8,
        "seed": -1,
        "context": 0,
        "adapter": NONE_ADAPTER,
        "side_by_side": False,
    }
    unknown = set(changes) - set(values)
    assert not unknown, unknown
    return list({**values, **changes}.values())


def said(text: str) -> list:
    return [{"role": "user", "content": [{"type": "text", "text": text}]}]


def image(**changes) -> list:
    """The `image_check` endpoint's 14 inputs for the test pipeline, with `changes` applied."""
    values = {
        "model": "tiny-sd",
        "precision": "fp32",
        "prompt": "a lighthouse at dusk",
        "negative": "",
        "sampler": "Euler a",
        "steps": 4,
        "cfg": 7,
        "width": 64,
        "height": 64,
        "seed": -1,
        "batch_size": 1,
        "batch_count": 1,
        "init": None,
        "strength": 0.75,
    }
    unknown = set(changes) - set(values)
    assert not unknown, unknown
    return list({**values, **changes}.values())


def speech(audio: Any = None, **changes) -> list:
    """The `speech_transcribe` endpoint's 11 inputs for the tiny Whisper checkpoint, with `changes` applied."""
    values = {
        "video": None,
        "model": WHISPER,
        "precision": "int8",
        "language": "auto",
        "task": "transcribe",
        "prompt": "",
        "beam": 5,
        "fallback": True,
        "words": False,
        "vad": True,
    }
    unknown = set(changes) - set(values)
    assert not unknown, unknown
    return [audio, *{**values, **changes}.values()]


def analyse(path: Any, **changes) -> list:
    """The `ft_analyse` endpoint's 14 inputs (base model: the tiny LM), with `changes` applied."""
    values = {"base": LM, "cutoff": 1024, "shape": "auto", "columns": [""] * 6, "skip": False, "learn": False}
    values |= {"objective": "sft", "votes": ""}
    values.update(changes)
    return [
        path,
        values["base"],
        values["cutoff"],
        values["shape"],
        *values["columns"],
        values["skip"],
        values["learn"],
        values["objective"],
        values["votes"],
    ]


def job(**changes) -> list:
    """The fine-tune settings (23 values, as `ft_estimate` takes them), with `changes` applied."""
    values = {
        "base": LM,
        "method": "lora",
        "rank": 16,
        "alpha": 32,
        "dropout": 0.05,
        "targets": "",
        "lr": 2e-4,
        "schedule": "cosine",
        "warmup": 0.03,
        "epochs": 1,
        "max_steps": 0,
        "batch": 2,
        "accum": 1,
        "cutoff": 256,
        "packing": True,
        "checkpointing": False,
        "learn_prompt": False,
        "eval_every": 50,
        "seed": 42,
        "keep": 2,
        "objective": "sft",
        "beta": 0.1,
        "loss_type": "sigmoid",
    }
    unknown = set(changes) - set(values)
    assert not unknown, unknown
    return list({**values, **changes}.values())


def start(path: Any, share: Any = 0.1, **changes) -> list:
    """The `ft_start` endpoint's 34 inputs."""
    return [path, "auto", "", "", "", "", "", "", False, share, *job(**changes), ""]


P = pytest.param
GRADIO_CASES = [
    # --- Chat
    P("chat_add_user", ["", []], ("the message is empty",), id="chat-empty-message"),
    P("chat_add_user", ["\u200b \u200f\u2060", []], ("the message is empty",), id="chat-invisible-only-message"),
    P("chat_add_user", ["hi", "not a list"], ("Conversation takes a list of messages",), id="chat-history-not-a-list"),
    P(
        "chat_add_user",
        ["hi", [{"role": "user", "content": 5}]],  # OpenAI-style string content is taken; a number is not
        ("Conversation takes a list of messages", '"type": "text"'),
        id="chat-history-content-a-number",
    ),
    P("chat", chat(temperature=99), ("Temperature", "at most 2, not 99"), id="chat-temperature-99"),
    P("chat", chat(top_p=5), ("Top-p must be at most 1, not 5",), id="chat-top-p-5"),
    P("chat", chat(max_new=10**9), ("Max new tokens must be between 1 and 32768",), id="chat-max-tokens-1e9"),
    P("chat", chat(max_new="ten"), ("Max new tokens must be a number", '"ten"'), id="chat-max-tokens-string"),
    P("chat", chat(max_new=12.5), ("Max new tokens must be a whole number, not 12.5",), id="chat-max-tokens-fraction"),
    P("chat", chat(seed=2**70), ("Seed must be -1 (random)",), id="chat-seed-2-pow-70"),
    P("chat", chat(context=-5), ("Context length must be 0", "not -5"), id="chat-context-negative"),
    P(
        "chat",
        chat(history=said("x" * 1_000_000)),
        ("tokens with the template", "context holds"),
        id="chat-1mb-message",
    ),
    P(
        "chat",
        chat(history=said("hi") * 2001),
        ("2001 messages; one request takes at most 2000",),
        id="chat-2001-messages",
    ),
    P(
        "chat",
        chat(history=said("x" * 600_000) * 2),
        ("passes 1.0 MB at message 2; one request takes at most 1.0 MB of text",),
        id="chat-over-1mb-of-text",
    ),
    P("chat", chat(history=said("\ud800 hi")), ("lone surrogate (U+D800)",), id="chat-lone-surrogate"),
    P("chat", chat(history=said("\u200d\u200b")), ("the message is empty",), id="chat-zero-width-message"),
    P("chat", chat(model="tiny\x00lm"), ("U+0000", "character 5"), id="chat-nul-in-model-name"),
    P("chat", chat(model="/no/such/model"), ("/no/such/model: no such file or folder",), id="chat-missing-model-path"),
    P(
        "chat",
        chat(adapter="not-an-adapter"),
        ("not-an-adapter", "not in the list of choices"),
        id="chat-unknown-adapter",
    ),
    P("chat", chat()[:2], ("'chat' takes 16 values but 2 were sent",), id="chat-too-few-values"),
    P("chat_attach", [LM, "fp32", "/no/such/adapter"], ("not a PEFT adapter",), id="chat-attach-missing-adapter"),
    P("chat_export", [[], "", LM, "fp32"], ("Nothing to export yet",), id="chat-export-empty"),
    P("drop_last_reply", [[]], ("Nothing to regenerate yet",), id="chat-regenerate-empty"),
    # --- Image
    P("image_check", image(prompt=""), ("the prompt is empty",), id="image-empty-prompt"),
    P("image_check", image(prompt="\u200b\u200e\ufeff"), ("the prompt is empty",), id="image-invisible-prompt"),
    P(
        "image_check",
        image(prompt="🌅🏝️", width=63),
        ("Width must be a multiple of 8, not 63", "Try 56 or 64"),
        id="image-width-63",
    ),
    P("image_check", image(width=100000), ("Width 100000 is beyond", "64 to"), id="image-width-100000"),
    P("image_check", image(width="wide"), ("Width must be a number", '"wide"'), id="image-width-string"),
    P("image_check", image(height=float("inf")), ("Height must be a finite number, not inf",), id="image-height-inf"),
    P("image_check", image(width=64.5), ("Width must be a whole number, not 64.5",), id="image-width-fraction"),
    P("image_check", image(steps=-5), ("Steps must be at least 1, not -5",), id="image-steps-negative"),
    P("image_check", image(steps=None), ("Steps needs a number",), id="image-steps-missing"),
    P("image_check", image(cfg=99), ("CFG scale", "at most 30, not 99"), id="image-cfg-99"),
    P("image_check", image(batch_count=10**6), ("Batch count must be between 1 and 100",), id="image-batch-count-1e6"),
    P("image_check", image(seed=10**30), ("Seed must be -1 (random)",), id="image-seed-1e30"),
    P("image_check", image(prompt="x" * 1_000_000), ("The prompt is 1000000 characters",), id="image-1mb-prompt"),
    P("image_check", image(prompt="\udfff"), ("lone surrogate (U+DFFF)",), id="image-lone-surrogate"),
    P("image_check", image(sampler="Heun"), ("Heun", "not in the list of choices"), id="image-unknown-sampler"),
    P("image_check", image(model="/no/such.safetensors"), ("no such file or folder",), id="image-missing-model"),
    P("image_check", image(model="sd\x00turbo"), ("U+0000",), id="image-nul-in-model-name"),
    P(
        "image_check",
        image(init=Up("photo.png")),
        ("photo.png is not an image the studio can read",),
        id="image-init-not-an-image",
    ),
    P(
        "image_check",
        image(init={"path": "/etc/hostname"}),
        ("was not uploaded to this studio",),
        id="image-init-server-path",
    ),
    P("image_check", image(init="photo.png"), ("takes a file uploaded to this studio",), id="image-init-string"),
    P(
        "image_restore",
        [Up("photo.png"), "tiny-sd", "fp32", "a", "", "Euler a", 4, 7, 64, 64, -1, 0.75],
        ("photo.png: not an image file",),
        id="image-restore-not-a-png",
    ),
    P(
        "image_restore",
        [Up("broken.jsonl"), "tiny-sd", "fp32", "a", "", "Euler a", 4, 7, 64, 64, -1, 0.75],
        ("Invalid file type", ".png"),
        id="image-restore-wrong-type",
    ),
    *(
        P(
            "image_restore",
            [Up(f"{name}.png"), "tiny-sd", "fp32", "a", "", "Euler a", 4, 7, 64, 64, -1, 0.75],
            expected,
            id=f"image-restore-{name}",
        )
        for name, expected in (
            ("seed-1e999", ("seed-1e999.png's parameters text says Seed: 1e999", "not a number the studio can use")),
            ("steps-400-digits", ("says Steps: 99999", "(400 characters)", "not a number the studio can use")),
            ("cfg-nan", ("says CFG scale: nan, which is not a number",)),
            ("ztxt-200mb", ("ztxt-200mb.png: its parameters text is larger than the 1 MB the studio reads",)),
            ("bomb", ("bomb.png holds no generation parameters",)),
        )
    ),
    P("image_select", [], ("'image_select' answers a click on the page",), id="image-select-through-the-api"),
    P("image_select", [{"index": 0}], ("an API call cannot send that",), id="image-select-with-a-value"),
    P(
        "image_load",
        ["tiny-sd", "fp32", 64, float("nan")],
        ("Height must be a finite number, not nan",),
        id="image-load-nan",
    ),
    P(
        "image_reuse",
        ["tiny-sd", "fp32", "a", "", "Euler a", 4, 7, 64, 64, -1, 0.75],
        ("Click an image",),
        id="image-reuse-none",
    ),
    # --- Speech
    P("speech_transcribe", speech(), ("Upload a recording",), id="speech-no-file"),
    P(
        "speech_transcribe",
        speech(Up("notes.wav")),
        ("notes.wav is not audio that ffmpeg can read",),
        id="speech-text-renamed-wav",
        marks=NEEDS_FFMPEG,
    ),
    P("speech_transcribe", speech(Up("cut.wav")), ("cut.wav is a truncated WAV file",), id="speech-truncated-wav"),
    P("speech_transcribe", speech(Up("empty.wav")), ("empty.wav is empty (0 bytes)",), id="speech-empty-wav"),
    P(
        "speech_transcribe",
        speech(Up("full.wav"), beam="five"),
        ("Beam size", "must be a number"),
        id="speech-beam-string",
    ),
    P("speech_transcribe", speech(Up("full.wav"), beam=0), ("Beam size", "at least 1, not 0"), id="speech-beam-0"),
    P(
        "speech_transcribe",
        speech(Up("full.wav"), prompt="word " * 20_000),
        ("Whisper reads at most about",),
        id="speech-huge-prompt",
    ),
    P(
        "speech_transcribe",
        speech(Up("full.wav"), prompt="names: \udc80"),
        ("The initial prompt is not valid Unicode", "U+DC80"),
        id="speech-lone-surrogate-prompt",
    ),
    P(
        "speech_transcribe",
        speech(Up("full.wav"), language="xx"),
        ("xx", "not in the list of choices"),
        id="speech-bad-language",
    ),
    P(
        "speech_transcribe",
        speech(Up("full.wav"), model="/no/such/whisper.pt"),
        ("no such file or folder",),
        id="speech-missing-model",
    ),
    P(
        "speech_transcribe",
        speech({"path": "/etc/hostname"}),
        ("was not uploaded to this studio",),
        id="speech-server-path",
    ),
    P("speech_send_to_chat", ["  "], ("Nothing to send yet",), id="speech-send-empty"),
    P("speech_send_to_chat", ["\u200b\u200c"], ("Nothing to send yet",), id="speech-send-zero-width"),
    # --- Fine-tune
    P("ft_analyse", analyse(Up("junk.jsonl")), ("junk.jsonl looks like binary data",), id="ft-binary-junk"),
    P("ft_analyse", analyse(Up("broken.jsonl")), ("line 2 is not a JSON object",), id="ft-bad-jsonl"),
    P("ft_analyse", analyse(Up("empty.jsonl")), ("empty.jsonl is empty",), id="ft-empty-dataset"),
    P(
        "ft_analyse",
        analyse(Up("deep.jsonl")),
        ("deep.jsonl: line 2 cannot be read: it nests arrays or objects too deeply",),
        id="ft-jsonl-nested-100000-deep",
    ),
    P(
        "ft_analyse",
        analyse(Up("digits.jsonl")),
        ("digits.jsonl: line 1 cannot be read: it holds a whole number longer than 4300 digits",),
        id="ft-jsonl-5000-digit-number",
    ),
    P("ft_analyse", analyse(Up("utf16.csv")), ("UTF-16", "must be UTF-8"), id="ft-utf16-csv"),
    P("ft_analyse", analyse(Up("notes.wav")), ("Invalid file type", ".jsonl"), id="ft-wav-as-dataset"),
    P("ft_analyse", analyse({"path": "/etc/hostname"}), ("was not uploaded to this studio",), id="ft-server-path"),
    P(
        "ft_analyse",
        analyse(Up("good.csv"), cutoff=-5),
        ("Cutoff length must be between 16 and 131072",),
        id="ft-cutoff-negative",
    ),
    P("ft_estimate", job(rank="sixteen"), ("Rank must be a number",), id="ft-rank-string"),
    P("ft_estimate", job(rank=0), ("LoRA rank must be between 1 and 1024, not 0",), id="ft-rank-0"),
    P("ft_estimate", job(lr=1e9), ("Learning rate must be between 0 and 1",), id="ft-learning-rate-1e9"),
    P("ft_estimate", job(dropout=2), ("LoRA dropout must be in [0, 1)",), id="ft-dropout-2"),
    P("ft_estimate", job(batch=0), ("Batch size must be at least 1, not 0",), id="ft-batch-0"),
    P("ft_estimate", job(cutoff=0), ("Cutoff length must be between 16 and 131072",), id="ft-cutoff-0"),
    P("ft_estimate", job(targets="q_proj, \x00, 🙂"), ("is not a module name",), id="ft-junk-target-modules"),
    P("ft_estimate", job(base="base\x00model"), ("U+0000",), id="ft-nul-in-base-model"),
    P("ft_estimate", job(base="/no/such/base"), ("no such model folder",), id="ft-missing-base-model"),
    P("ft_start", start(None), ("Drop a dataset file first",), id="ft-start-no-file"),
    P("ft_estimate", job(objective="dpo", beta=0), ("Beta must be in (0, 10], not 0",), id="ft-beta-0"),
    P("ft_estimate", job(objective="dpo", loss_type="x"), ("Value: x is not in the list of choices",), id="ft-loss-x"),
    P("ft_analyse", analyse(None, votes="../runs"), ("No collected vote file named '../runs'",), id="ft-votes-path"),
    P(
        "ft_start",
        start(Up("good.csv"), share=5),
        ("evaluation share must be between 0 and 0.9",),
        id="ft-start-share-5",
    ),
    P("ft_stop", [""], ("Pick a run in the Runs list first",), id="ft-stop-no-run"),
    P("ft_stop", ["20990101-000000-nothing"], ("No run named '20990101-000000-nothing'",), id="ft-stop-unknown-run"),
    # --- Models
    P(
        "models_plan",
        ["chat", "", "fp32"],
        ("Type a folder, a file path or a Hugging Face id",),
        id="models-empty-source",
    ),
    P("models_plan", ["chat", "/no/such/model", "fp32"], ("no such file or folder",), id="models-missing-path"),
    P("models_plan", ["chat", "org/\u202emodel\x07", "fp32"], ("U+0007",), id="models-control-char-in-name"),
    P("models_plan", ["sound", "x", "fp32"], ("sound", "not in the list of choices"), id="models-unknown-kind"),
    P("models_budget", ["abc", 1], ("Budget (GB) must be a number",), id="models-budget-string"),
    P("models_budget", [-1, 1], ("Budget must be more than 0 GB, not -1",), id="models-budget-negative"),
    P("models_budget", [1e308, 0.5], ("Budget must be at most 100000 GB",), id="models-budget-1e308"),
    P("models_budget", [2, float("inf")], ("Reserve (GB) must be a finite number",), id="models-reserve-inf"),
    P("models_budget", [2, None], ("Reserve must be a number of GB",), id="models-reserve-empty"),
]


@pytest.mark.parametrize(("api_name", "data", "expected"), GRADIO_CASES)
def test_gradio_endpoint_refuses_bad_input(studio, bad_files, api_name, data, expected):
    event, payload = gradio_call(studio, api_name, resolve(studio, bad_files, data))
    assert event == "error", f"{api_name} accepted it: {payload[:300]}"
    assert_specific(json.loads(payload).get("error"), expected)
    assert_still_serving(studio)


def test_a_folder_without_weights_is_refused_by_name(studio, bad_files):
    event, payload = gradio_call(studio, "models_load", ["chat", str(bad_files / "no-weights"), "fp32"])
    assert event == "error"
    assert_specific(json.loads(payload).get("error"), ("No .safetensors, .gguf, .pt or model.bin found",))
    assert_still_serving(studio)


# ----- the table: /v1 routes -----------------------------------------------------------------------------------

HELLO = [{"role": "user", "content": "hello"}]
TINY_LM = "causal-lm-seed0"  # the id /v1/models gives the tiny LM (its folder's name)


def completion(**changes) -> dict:
    return {"model": TINY_LM, "messages": HELLO, "max_tokens": 4, **changes}


def drawing(**changes) -> dict:
    return {"model": "tiny-sd", "prompt": "a lighthouse", "size": "64x64", "steps": 2, **changes}


CHAT, IMAGES = "v1/chat/completions", "v1/images/generations"
SPEECH, TRANSLATE = "v1/audio/transcriptions", "v1/audio/translations"
V1_CASES = [
    # --- /v1/chat/completions
    P(CHAT, {"raw": b"{not json"}, 400, ("not valid JSON",), id="v1-chat-invalid-json"),
    P(
        CHAT,
        {"json": completion(messages=HELLO * 2001)},
        400,
        ("2001 messages; one request takes at most 2000",),
        id="v1-chat-2001-messages",
    ),
    P(CHAT, {"raw": b"\xff\xfe\x00\x01binary"}, 400, ("not valid JSON",), id="v1-chat-binary-body"),
    P(CHAT, {"json": [1, 2]}, 400, ("must be a JSON object",), id="v1-chat-array-body"),
    P(CHAT, {"raw": b"[" * 100_000}, 400, ("nests arrays or objects too deeply",), id="v1-chat-100000-brackets"),
    P(
        CHAT,
        {"raw": b'{"model": "x", "n": ' + b"9" * 5000 + b"}"},
        400,
        ("a whole number longer than 4300 digits",),
        id="v1-chat-5000-digit-number",
    ),
    P(
        CHAT,
        {"json": completion(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}])},
        400,
        ("Message 1's content part 1 has 'text' 5",),
        id="v1-chat-part-text-number",
    ),
    P(
        CHAT,
        {"json": completion(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"text": None}]}])},
        400,
        ("Message 1's content part 2 has 'text' null",),
        id="v1-chat-part-text-null",
    ),
    P(CHAT, {"json": {"messages": HELLO}}, 400, ("'model' is required",), id="v1-chat-no-model"),
    P(CHAT, {"json": completion(model="gpt-9")}, 404, ("'gpt-9' is not available",), id="v1-chat-unknown-model"),
    P(CHAT, {"json": completion(messages=[])}, 400, ("'messages' is empty",), id="v1-chat-empty-messages"),
    P(CHAT, {"json": completion(messages="hello")}, 400, ("'messages' must be a list",), id="v1-chat-messages-string"),
    P(
        CHAT,
        {"json": completion(temperature="hot")},
        400,
        ("'temperature' must be a number",),
        id="v1-chat-temp-string",
    ),
    P(
        CHAT,
        {"json": completion(temperature=99)},
        400,
        ("Temperature must be between 0 and 5, not 99",),
        id="v1-chat-temp-99",
    ),
    P(CHAT, {"json": completion(top_p=5)}, 400, ("Top-p must be more than 0 and at most 1",), id="v1-chat-top-p-5"),
    P(
        CHAT,
        {"json": completion(max_tokens=10**9)},
        400,
        ("Max new tokens must be between 1 and 32768",),
        id="v1-chat-max-1e9",
    ),
    P(
        CHAT,
        {"json": completion(max_tokens=float("nan"))},
        400,
        ("'max_tokens' must be a whole number",),
        id="v1-chat-max-nan",
    ),
    P(
        CHAT,
        {"json": completion(messages=[{"role": "wizard", "content": "hi"}])},
        400,
        ("role 'wizard'",),
        id="v1-chat-role",
    ),
    P(
        CHAT,
        {"json": completion(messages=[{"role": "user", "content": 42}])},
        400,
        ("content must be text",),
        id="v1-chat-content-number",
    ),
    P(
        CHAT,
        {"json": completion(messages=[{"role": "user", "content": "\ud800"}])},
        400,
        ("lone surrogate (U+D800)",),
        id="v1-chat-lone-surrogate",
    ),
    P(
        CHAT,
        {"json": completion(messages=[{"role": "user", "content": "\u200b\u200f\u2066"}])},
        400,
        ("the message is empty",),
        id="v1-chat-invisible-message",
    ),
    P(
        CHAT,
        {"json": completion(messages=[{"role": "user", "content": "x" * 1_000_000}])},
        400,
        ("tokens with the template",),
        id="v1-chat-1mb-message",
    ),
    P(CHAT, {"json": completion(stop=["a", "b", "c", "d", "e"])}, 400, ("up to 4",), id="v1-chat-five-stops"),
    # --- /v1/images/generations
    P(IMAGES, {"json": {"model": "tiny-sd"}}, 400, ("'prompt' is required",), id="v1-images-no-prompt"),
    P(IMAGES, {"raw": b"[" * 100_000}, 400, ("nests arrays or objects too deeply",), id="v1-images-100000-brackets"),
    P(
        IMAGES,
        {"json": drawing(prompt="\u200b\u2060")},
        400,
        ("'prompt' is required",),
        id="v1-images-invisible-prompt",
    ),
    P(IMAGES, {"json": drawing(prompt=42)}, 400, ("'prompt' must be text",), id="v1-images-prompt-number"),
    P(IMAGES, {"json": drawing(size="100000x100000")}, 400, ("Width 100000 is beyond",), id="v1-images-size-100000"),
    P(
        IMAGES,
        {"json": drawing(size="65x64")},
        400,
        ("Width must be a multiple of 8, not 65",),
        id="v1-images-size-65",
    ),
    P(
        IMAGES,
        {"json": drawing(size="9" * 5000 + "x64")},
        400,
        ("'size' must look like",),
        id="v1-images-size-5000-digits",
    ),
    P(IMAGES, {"json": drawing(steps=-3)}, 400, ("Steps must be 1 or more, not -3",), id="v1-images-steps-negative"),
    P(IMAGES, {"json": drawing(steps="many")}, 400, ("'steps' must be a whole number",), id="v1-images-steps-string"),
    P(IMAGES, {"json": drawing(n=10**6)}, 400, ("'n' must be between 1 and 8",), id="v1-images-n-1e6"),
    P(
        IMAGES,
        {"json": drawing(cfg_scale=float("nan"))},
        400,
        ("CFG scale must be between 0 and 30, not nan",),
        id="v1-images-cfg-nan",
    ),
    P(
        IMAGES,
        {"json": drawing(prompt="x" * 1_000_000)},
        400,
        ("The prompt is 1000000 characters",),
        id="v1-images-1mb-prompt",
    ),
    P(
        IMAGES,
        {"json": drawing(model="dall-e-3")},
        404,
        ("'dall-e-3' is not available",),
        id="v1-images-unknown-model",
    ),
    # --- /v1/audio/transcriptions and /translations
    P(SPEECH, {"json": {"file": "x"}}, 400, ("'file' is required",), id="v1-audio-json-body"),
    P(SPEECH, {"data": {"model": "whisper-1"}}, 400, ("'file' is required",), id="v1-audio-no-file"),
    P(
        SPEECH,
        {"file": "notes.wav"},
        400,
        ("notes.wav is not audio that ffmpeg can read",),
        id="v1-audio-text-renamed-wav",
        marks=NEEDS_FFMPEG,
    ),
    P(SPEECH, {"file": "cut.wav"}, 400, ("cut.wav is a truncated WAV file",), id="v1-audio-truncated-wav"),
    P(SPEECH, {"file": "empty.wav"}, 400, ("empty.wav is empty (0 bytes)",), id="v1-audio-empty-file"),
    P(
        SPEECH,
        {"file": "cut.wav", "filename": "cut.w\x00av"},
        400,
        ("is a truncated WAV file",),
        id="v1-audio-nul-in-file-name",
    ),
    P(
        SPEECH,
        {"file": "full.wav", "data": {"response_format": "docx"}},
        400,
        ("'response_format' must be one of",),
        id="v1-audio-format",
    ),
    P(
        SPEECH,
        {"file": "full.wav", "data": {"temperature": "hot"}},
        400,
        ("'temperature' must be a number",),
        id="v1-audio-temp-string",
    ),
    P(
        SPEECH,
        {"file": "full.wav", "data": {"temperature": "5"}},
        400,
        ("Temperature must be between 0 and 1",),
        id="v1-audio-temp-5",
    ),
    P(SPEECH, {"file": "full.wav", "data": {"language": "klingon"}}, 400, ("ISO-639-1",), id="v1-audio-language"),
    P(
        SPEECH,
        {"file": "full.wav", "data": {"model": "whisper-9"}},
        404,
        ("'whisper-9' is not available",),
        id="v1-audio-unknown-model",
    ),
    P(
        SPEECH,
        {"file": "full.wav", "data": {"prompt": "word " * 20_000}},
        400,
        ("Whisper reads at most about",),
        id="v1-audio-huge-prompt",
    ),
    P(TRANSLATE, {"file": "cut.wav"}, 400, ("cut.wav is a truncated WAV file",), id="v1-translate-truncated-wav"),
]


def multipart_raw(filename: str, data: bytes) -> tuple[bytes, str]:
    """A multipart body with one 'file' field whose file name goes byte for byte, and its content type."""
    boundary = "bad-inputs-boundary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n\r\n'
    return head.encode() + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize(("route", "request_", "status", "expected"), V1_CASES)
def test_v1_route_refuses_bad_input(studio, bad_files, route, request_, status, expected):
    with httpx.Client(base_url=studio.url, timeout=120) as client:
        if "filename" in request_:  # sent as written: httpx would percent-encode a NUL in it
            body, content_type = multipart_raw(request_["filename"], (bad_files / request_["file"]).read_bytes())
            r = client.post(route, content=body, headers={"content-type": content_type})
        elif "raw" in request_ or "json" in request_:
            raw = request_.get("raw")
            if raw is None:
                raw = json.dumps(request_["json"], allow_nan=True).encode()
            r = client.post(route, content=raw, headers={"content-type": "application/json"})
        else:
            files = None
            if "file" in request_:
                path = bad_files / request_["file"]
                files = {"file": (path.name, path.read_bytes())}
            else:
                files = {"unused": ("", b"")}  # multipart without a 'file' field
            r = client.post(route, files=files, data=request_.get("data") or {})
    assert r.status_code == status, r.text[:500]
    error = r.json()["error"]
    assert error["type"] in ("invalid_request_error", "server_error") and "code" in error and "param" in error
    assert_specific(error["message"], expected)
    assert_still_serving(studio)


# ----- Gradio's own routes: an event the studio does not have ----------------------------------------------------

UNKNOWN_EVENTS = [
    P("gradio_api/call/no_such_action", {"data": []}, "no action named 'no_such_action'", id="call-unknown-name"),
    P("gradio_api/call/v2/no_such_action", {}, "no action named 'no_such_action'", id="call-v2-unknown-name"),
    P("gradio_api/run/no_such_action", {"data": []}, "no action named 'no_such_action'", id="run-unknown-name"),
    P(
        "gradio_api/queue/join",
        {"data": [], "fn_index": 99_999, "session_hash": "bad-inputs"},
        "no event with fn_index 99999",
        id="queue-unknown-fn-index",
    ),
]


@pytest.mark.parametrize(("route", "body", "expected"), UNKNOWN_EVENTS)
def test_an_unknown_gradio_event_is_a_404_that_names_it(studio, route, body, expected):
    r = httpx.post(studio.url + route, json=body, timeout=30)
    assert r.status_code == 404, r.text[:500]
    assert_specific(r.json()["detail"], (expected, "GET /gradio_api/info"))
    assert_still_serving(studio)


# ----- good input still works after all that -------------------------------------------------------------------


def test_good_input_still_answers(studio, bad_files):
    """The checks refuse only what is wrong: a reply, a drawing check and a dataset analysis go through."""
    event, data = gradio_call(studio, "chat", resolve(studio, bad_files, chat()))
    assert event == "complete" and "tokens" in data, data[:500]
    event, data = gradio_call(studio, "image_check", image(prompt="🌅 مرحبا 你好", width=64.0))
    assert event == "complete", data[:500]
    event, data = gradio_call(studio, "ft_analyse", resolve(studio, bad_files, analyse(Up("good.csv"))))
    assert event == "complete" and "good.csv" in data, data[:500]
    r = httpx.post(studio.url + CHAT, json=completion(messages=[{"role": "user", "content": "🙂 שלום"}]), timeout=120)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant", r.text[:500]
    assert_still_serving(studio)
    assert os.path.getsize(studio.log) > 0
