"""The Models tab's figures on a real manager: Unload reports what came back, a fine-tune reservation is a row,
the budget field shows the default's figure, each model keeps its colour in the bar."""

from __future__ import annotations

import re
import time
from types import SimpleNamespace

import pytest

from studio.config import GIB, StudioConfig
from studio.context import build_context
from studio.models.records import LOADED, ModelRecord
from studio.models.specs import ModelSpec
from studio.text import fmt_bytes
from studio.ui import memory_bar, models_tab

LOCAL = SimpleNamespace(client=SimpleNamespace(host="127.0.0.1"), headers={})  # the owner's own page


@pytest.fixture
def ctx(tmp_path):
    c = build_context(StudioConfig(device="cpu", data_dir=tmp_path / "data"), start_monitor=False)
    yield c
    c.close()


def test_unload_says_what_came_back_as_the_event_log_does(ctx, tiny_models):
    spec = ModelSpec("image", str(tiny_models.sd_pipeline), "folder", "fp32", "cpu")
    ctx.manager.load(spec)
    ctx.manager.park(spec.key)  # parked: no longer accounted on the device, but its RAM comes back on unload
    text = models_tab.ModelsTab(ctx).unload(spec.key, request=LOCAL)
    event = ctx.events.last(1)[0]
    back = re.search(r": (.+) came back", event.detail).group(1)
    assert text.startswith(f"{spec.name} unloaded: {back} came back."), (text, event.detail)


def test_a_fine_tune_reservation_is_a_row_of_the_table(ctx):
    reservation = ctx.manager.reserve("fine-tune run-7", 300 * 1024**2)
    rows = models_tab.ModelsTab(ctx).refresh(None, "")[0]
    row = next(r for r in rows if r[0] == "fine-tune run-7")
    assert row[1] == "reservation" and row[4] == "reserved" and row[7] == fmt_bytes(300 * 1024**2)
    assert len(row) == len(models_tab.COLUMNS)
    reservation.release()
    assert not [r for r in models_tab.ModelsTab(ctx).refresh(None, "")[0] if r[0] == "fine-tune run-7"]


def test_the_budget_field_shows_the_default_figure_and_applying_it_keeps_the_default(ctx):
    default = ctx.manager.default_budget()
    assert default > 0 and models_tab.budget_value(ctx) == round(default / GIB, 2)  # not 0
    assert f"default {round(default / GIB, 2):g} GB here" in models_tab.budget_hint(ctx)
    models_tab.ModelsTab(ctx).set_budget(models_tab.budget_value(ctx), 0.5, request=LOCAL)
    assert ctx.manager.configured_budget is None  # still the default
    models_tab.ModelsTab(ctx).set_budget(1.0, 0.5, request=LOCAL)
    assert ctx.manager.configured_budget == GIB and models_tab.budget_value(ctx) == 1.0


def _record(key: str) -> ModelRecord:
    return ModelRecord(
        key=key,
        name=key,
        kind="chat",
        precision="fp32",
        device="cpu",
        state=LOADED,
        estimated_bytes=GIB,
        measured_bytes=GIB,
        accounted_bytes=GIB,
        leases=0,
        last_used=time.time(),
        load_seconds=1.0,
        estimate_method="test",
    )


def test_each_model_keeps_its_colour_whatever_else_is_loaded(ctx):
    snap = ctx.manager.probe.snapshot()
    keys = [f"model-{i}" for i in range(6)]
    alone = {s.label: s.color for k in keys for s in memory_bar.segments(snap, [_record(k)], [])}
    together = {s.label: s.color for s in memory_bar.segments(snap, [_record(k) for k in reversed(keys)], [])}
    assert alone == together
    assert len(set(alone.values())) > 1  # not one colour for all


@pytest.mark.parametrize("hub", ["unreachable", "reachable", "offline"])
def test_a_made_up_hub_id_says_whether_the_hub_can_be_reached(ctx, tmp_path, monkeypatch, hub):
    import socket

    from huggingface_hub import constants

    listener = socket.create_server(("127.0.0.1", 0))  # a Hub that answers connections
    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()  # nothing listens there
    port = listener.getsockname()[1] if hub == "reachable" else closed_port
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    if hub == "offline":
        offline = build_context(
            StudioConfig(device="cpu", data_dir=tmp_path / "offline", offline=True), start_monitor=False
        )
        ctx = offline
    tab = models_tab.ModelsTab(ctx)
    try:
        for action in (tab.plan, tab.load):
            with pytest.raises(Exception) as err:
                action("chat", "someone/made-up-model-42", "fp32", request=LOCAL)
            text = str(err.value)
            assert "someone/made-up-model-42 is not downloaded yet" in text, text
            assert "Download it first" not in text
            if hub == "unreachable":
                assert "Hugging Face Hub is out of reach: 127.0.0.1 cannot be reached" in text, text
            elif hub == "reachable":
                assert "the Hugging Face Hub is reachable" in text and "hf download someone/made-up-model-42" in text
            else:
                assert "the studio runs offline (--offline)" in text, text
    finally:
        listener.close()
        if hub == "offline":
            offline.close()


def test_the_starter_picked_at_another_precision_loads_at_it(tmp_path, starter_folder):
    """Chat's precision for the starter was dropped (fp32 whatever was picked): nf4 now loads an nf4 copy."""
    from studio.models.starter import starter_folder as folder_in
    from studio.ui.chat_tab import STARTER_PREFIX, resolve_spec

    data = tmp_path / "data"
    link = folder_in(data / "models")  # the converted starter, not converted again
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(starter_folder, target_is_directory=True)
    c = build_context(StudioConfig(device="cpu", data_dir=data), start_monitor=False)
    try:
        choice = STARTER_PREFIX + "starter"
        fp32, nf4 = resolve_spec(c, choice, "fp32"), resolve_spec(c, choice, "nf4")
        assert (fp32.precision, nf4.precision) == ("fp32", "nf4") and fp32.key != nf4.key
        with pytest.raises(Exception, match="Precision must be one of"):
            resolve_spec(c, choice, "fp8-ish")
        c.manager.load(fp32)
        c.manager.load(nf4)
        loaded = {r.key: r for r in c.manager.records()}
        assert loaded[nf4.key].precision == "nf4" and loaded[nf4.key].state == LOADED
        assert loaded[nf4.key].measured_bytes < loaded[fp32.key].measured_bytes / 2
    finally:
        c.close()
