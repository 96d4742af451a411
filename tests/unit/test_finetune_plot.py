"""The loss plot's points from a run's metrics.jsonl records, and the chat note Try in Chat leaves (no browser)."""

from __future__ import annotations

import math

from studio.ui.chat_tab import conversation, note
from studio.ui.finetune_views import LOSS_TITLE, METRIC_TITLE, metrics_frame, plot_update

RECORDS = [
    {"step": 0, "eval_loss": 3.2},
    {"event": "start", "step": 0, "total_steps": 3},
    {"step": 1, "epoch": 0.1, "loss": 3.0, "lr": 1e-4},
    {"step": 2, "loss": math.nan},  # a diverged step is left out, not drawn at 0
    {"step": 2, "loss": 2.5},
    {"step": 3, "loss": 2.0, "eval_loss": 2.4},
    {"event": "stopped", "step": 3},
]


def test_train_and_eval_losses_by_step_with_typed_columns():
    frame = metrics_frame(RECORDS)
    assert list(frame.itertuples(index=False, name=None)) == [
        (0, 3.2, "eval"),
        (1, 3.0, "train"),
        (2, 2.5, "train"),
        (3, 2.0, "train"),
        (3, 2.4, "eval"),
    ]
    # the plot reads its axis types from the columns: integer steps and float values, also with no points
    for f in (frame, metrics_frame([])):
        assert str(f["step"].dtype) == "int64" and str(f["loss"].dtype) == "float64"


def test_preference_metrics_are_drawn_when_a_run_logs_them():
    records = [
        {"step": 1, "loss": 0.69, "rewards/margins": 0.1, "rewards/accuracies": 0.5},
        {"step": 2, "eval_loss": 0.6, "eval_rewards/margins": 0.4},
    ]
    frame = metrics_frame(records)
    assert set(frame["series"]) == {"train", "reward margin", "reward accuracy", "eval", "eval reward margin"}
    update = plot_update(records)
    assert update.y_title == METRIC_TITLE
    assert update.colors_in_legend == ["train", "eval", "reward margin", "reward accuracy", "eval reward margin"]


def test_the_plot_update_names_its_series_and_sends_no_empty_chart():
    update = plot_update(RECORDS)
    assert update.y_title == LOSS_TITLE and update.colors_in_legend == ["train", "eval"]
    assert update.value["data"][0] == [0, 3.2, "eval"]
    empty = plot_update([{"event": "start", "step": 0}])
    assert empty.value is None and empty.colors_in_legend is None


def test_the_try_in_chat_note_is_shown_but_never_sent_to_the_model():
    history = [{"role": "user", "content": "hi"}, note("Attached the adapter run-1", "details")]
    assert conversation("", history) == [{"role": "user", "content": "hi"}]
