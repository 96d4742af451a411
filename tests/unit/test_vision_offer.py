"""The Chat tab's offer of a vision model (studio/ui/vision_offer.py) when a text-only model is sent images: when it
shows, what it names, and what taking it sets."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from studio.config import StudioConfig
from studio.context import build_context
from studio.models.specs import CATALOG, ModelSpec
from studio.ui import messages as msg
from studio.ui import vision_offer as vo
from studio.ui.chat_tab import ChatTab, model_choices
from tests.fakes import FakeGpuProbe

HERE = SimpleNamespace(client=SimpleNamespace(host="127.0.0.1"), headers={"host": "127.0.0.1:7860"})  # the owner
AWAY = SimpleNamespace(client=SimpleNamespace(host="203.0.113.5"), headers={"host": "studio.example"})  # a visitor
RECOMMENDED = [e.label for e in CATALOG if e.kind == "chat" and e.images]


def _image_question(text: str = "what is it?") -> dict:
    return {
        "role": "user",
        "content": [{"type": "file", "file": {"path": "/x/a.png"}}, {"type": "text", "text": text}],
    }


def _folder(root: Path, name: str, config: dict) -> Path:
    (root / name).mkdir(parents=True)
    (root / name / "config.json").write_text(json.dumps(config))
    return root / name


def test_it_is_wanted_for_an_unanswered_question_in_a_conversation_with_images():
    assert vo.wants_vision([_image_question()])
    later = [_image_question(), {"role": "assistant", "content": "a cat"}, {"role": "user", "content": "and now?"}]
    assert vo.wants_vision(later)  # the earlier image goes to the model with the new question
    assert not vo.wants_vision([_image_question(), {"role": "assistant", "content": "a cat"}])  # answered
    assert not vo.wants_vision([{"role": "user", "content": "hi"}]) and not vo.wants_vision(None)


def test_it_offers_the_loaded_vision_models_first_and_the_recommended_ones_to_the_owner():
    loaded = [ModelSpec("vision", "/models/my-vlm", "folder"), ModelSpec("vision", CATALOG[-1].hub_id, "hub")]
    mine = vo.offered(loaded, CATALOG, owner=True)
    assert mine[0] == ("my-vlm (loaded)", "/models/my-vlm")
    assert [label for label, _ in mine[2:]] == [e.label for e in CATALOG if e.images and e.hub_id != loaded[1].source]
    assert len({value for _, value in mine}) == len(mine)  # a loaded recommended model is offered once
    assert [v for _, v in vo.offered(loaded, CATALOG, owner=False)] == [s.source for s in loaded]  # loaded only
    text = vo.offer_text("tiny-lm", mine[:1] + mine[2:3])
    assert text.startswith("**tiny-lm cannot see the images") and "loaded: my-vlm;" in text
    assert f"recommended for 12 GB (downloaded when first used): {mine[2][0]}" in text
    assert vo.use_label(mine, "/models/my-vlm") == "Use my-vlm" and vo.use_label(mine, None) == "Use "


def test_the_offer_shows_for_a_text_only_model_and_hides_otherwise(tmp_path):
    ctx = build_context(StudioConfig(data_dir=tmp_path / "data"), probe=FakeGpuProbe(), start_monitor=False)
    offer = vo.VisionOffer(ChatTab(ctx), model_choices)
    lm = _folder(tmp_path, "my-lm", {"architectures": ["LlamaForCausalLM"], "model_type": "llama"})
    vlm = _folder(tmp_path, "my-vlm", {"architectures": ["LlavaForConditionalGeneration"], "vision_config": {}})
    row, text, pick, button = offer.offer([_image_question()], str(lm), "fp32", HERE)
    assert row.visible is True and text.startswith("**my-lm cannot see the images")
    assert [label for label, _ in pick.choices] == RECOMMENDED and pick.value == CATALOG_FIRST_VISION
    assert button.value == f"Use {RECOMMENDED[0]}"
    for history, model in [
        ([_image_question()], str(vlm)),  # it sees images
        ([_image_question(), {"role": "assistant", "content": "x"}], str(lm)),  # answered
        ([{"role": "user", "content": "hi"}], str(lm)),  # no images
        ([_image_question()], ""),  # no model picked
    ]:
        row, *rest = offer.offer(history, model, "fp32", HERE)
        assert row.visible is False and all(isinstance(r, type(gr.skip())) for r in rest)

    # a remote visitor may not use that folder (the reply says so) nor load the recommended models: no offer
    assert offer.offer([_image_question()], str(lm), "fp32", AWAY)[0].visible is False

    # taking the offer picks the model (a recommended one keeps the precision picked) and hides the row
    picker, precision, row = offer.use(CATALOG_FIRST_VISION, str(lm), "fp32", HERE)
    assert picker.value == CATALOG_FIRST_VISION and isinstance(precision, type(gr.skip())) and row.visible is False
    assert CATALOG_FIRST_VISION in [v for _, v in picker.choices]
    try:
        offer.use("", str(lm), "fp32", HERE)
    except gr.Error as exc:
        assert msg.PICK_MODEL.format(what="a vision model") in str(exc)
    else:
        raise AssertionError("Use without a model must say so")


CATALOG_FIRST_VISION = next(e.hub_id for e in CATALOG if e.images)
