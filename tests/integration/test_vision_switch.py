"""The Chat tab's vision offer with the tiny VLM really loaded through the manager: it is offered first, and taking
it keeps the picked precision when that is the loaded model, or switches to the precision it is loaded with."""

from __future__ import annotations

import json
from types import SimpleNamespace

import gradio as gr

from studio.config import StudioConfig
from studio.context import build_context
from studio.models.specs import ModelSpec
from studio.models.tiny import ensure_tiny_vlm
from studio.ui import vision_offer as vo
from studio.ui.chat_tab import ChatTab, model_choices

HERE = SimpleNamespace(client=SimpleNamespace(host="127.0.0.1"), headers={"host": "127.0.0.1:7860"})


def test_the_loaded_vision_model_is_offered_first_and_taken_at_its_precision(tmp_path, tmp_path_factory):
    vlm = ensure_tiny_vlm(tmp_path_factory.getbasetemp() / "tiny-models")
    ctx = build_context(StudioConfig(data_dir=tmp_path / "data", device="cpu"), start_monitor=False)
    ctx.chat.load(ModelSpec("chat", str(vlm), "folder", precision="fp32", device="cpu"))
    lm = tmp_path / "my-lm"
    lm.mkdir()
    (lm / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    offer = vo.VisionOffer(ChatTab(ctx), model_choices)
    question = {"role": "user", "content": [{"type": "file", "file": {"path": "/x/a.png"}}, "what is it?"]}
    row, text, pick, button = offer.offer([question], str(lm), "auto", HERE)
    assert row.visible is True and f"loaded: {vlm.name};" in text
    assert pick.choices[0] == (f"{vlm.name} (loaded)", str(vlm)) and pick.value == str(vlm)
    assert button.value == f"Use {vlm.name}"

    picker, precision, row = offer.use(str(vlm), str(lm), "auto", HERE)  # auto is fp32 on the CPU: the loaded one
    assert picker.value == str(vlm) and isinstance(precision, type(gr.skip())) and row.visible is False
    assert any(value == str(vlm) and "(loaded)" in label for label, value in picker.choices)  # named as loaded
    _picker, precision, _row = offer.use(str(vlm), str(lm), "bf16", HERE)  # bf16 would load it again
    assert precision == "fp32"
