"""The Chat tab's vote handlers without a browser: which pane is left, what the prompt is, what is refused."""

from __future__ import annotations

import json

import pytest

from studio.config import StudioConfig
from studio.context import build_context
from studio.errors import InputError
from studio.training.votes import FEEDBACK_FILE, PAIRS_FILE
from studio.ui import messages as msg
from studio.ui.chat_tab import NO_ADAPTER, note
from studio.ui.chat_votes import ChatVotes
from studio.ui.session import StopFlags

Q = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "2+2?"}]


@pytest.fixture
def votes(tmp_path):
    ctx = build_context(StudioConfig(data_dir=tmp_path, device="cpu"), start_monitor=False)
    return ChatVotes(ctx, StopFlags())


def _rows(votes, name):
    path = votes.ctx.paths.preferences / name
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _pair(votes, choice, left="4", right="5", adapter="poems", system="Be brief.", side=None):
    history = [*Q, {"role": "assistant", "content": [{"type": "text", "text": left}]}]
    side = [*Q, {"role": "assistant", "content": right}] if side is None else side
    model = votes.ctx.paths.models / "tiny-lm"  # a model folder: the vote names the model by the folder's name
    model.mkdir(exist_ok=True)
    return votes.pair(choice, history, side, system, str(model), "auto", adapter)


def test_left_is_the_conversation_and_right_the_side_pane(votes):
    assert _pair(votes, "left") == "Saved: chat-votes.jsonl now has 1 pair."
    assert _pair(votes, "right", adapter=NO_ADAPTER) == "Saved: chat-votes.jsonl now has 2 pairs."
    first, second = _rows(votes, PAIRS_FILE)
    assert first["prompt"] == [{"role": "system", "content": "Be brief."}, *Q]
    assert (first["chosen"][0]["content"], first["rejected"][0]["content"]) == ("4", "5")
    assert (second["chosen"][0]["content"], second["rejected"][0]["content"]) == ("5", "4")
    assert first["meta"]["source"] == "side-by-side" and first["meta"]["adapter"] == "poems"
    assert second["meta"]["source"] == "two-samples" and second["meta"]["adapter"] is None
    assert first["meta"]["model"] == "tiny-lm"


def test_both_bad_keeps_two_bad_examples(votes):
    assert _pair(votes, "both bad") == "Saved: chat-feedback.jsonl now has 2 rows (0 good, 2 bad)."
    assert [(r["completion"][0]["content"], r["label"]) for r in _rows(votes, FEEDBACK_FILE)] == [
        ("4", False),
        ("5", False),
    ]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"side": []}, "the right pane has no reply to this question"),
        ({"side": Q}, "the right pane has no reply to this question"),
        ({"side": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "5"}]}, "different"),
        ({"left": ""}, "The better reply is empty"),
        ({"right": "4"}, "The two replies are the same"),
        ({"left": "4" + msg.CHAT_STOPPED_MARK}, "The left reply was stopped before it ended"),
        ({"right": msg.CHAT_STOPPED_EMPTY}, "The right reply was stopped"),
    ],
)
def test_side_by_side_votes_that_cannot_be_kept_are_refused(votes, kwargs, words):
    with pytest.raises(InputError, match=words):
        _pair(votes, "left", **kwargs)
    assert not (votes.ctx.paths.preferences / PAIRS_FILE).exists()


def test_a_vote_on_an_empty_conversation_says_there_is_nothing_yet(votes):
    with pytest.raises(InputError, match="Nothing to vote on yet"):
        votes.pair("left", [], [], "", None, "auto", NO_ADAPTER)
    with pytest.raises(InputError, match="Nothing to vote on yet"):
        votes.pair("right", Q, Q, "", None, "auto", NO_ADAPTER)  # asked, not answered
    with pytest.raises(InputError, match="Nothing to vote on yet"):
        votes.thumbs(False, 0, [note("Adapter", "attached")], "", None, "auto", NO_ADAPTER)
    with pytest.raises(InputError, match="Only the model's replies can be voted on, not message 2"):
        votes.thumbs(False, 1, [*Q[:1], note("Adapter", "attached")], "", None, "auto", NO_ADAPTER)


def test_a_reply_still_being_written_is_refused(votes):
    history = [*Q, {"role": "assistant", "content": "4 and"}]
    with votes.flags.running("local"):
        with pytest.raises(InputError, match="still being written"):
            votes.pair("left", history, [*Q, {"role": "assistant", "content": "5"}], "", None, "auto", NO_ADAPTER)
        with pytest.raises(InputError, match="still being written"):
            votes.thumbs(True, 3, history, "", None, "auto", NO_ADAPTER)
        # an earlier reply is finished: it can be voted on meanwhile
        assert "1 good" in votes.thumbs(True, 1, history, "", None, "auto", NO_ADAPTER)


def test_thumbs_keep_the_reply_clicked_and_the_conversation_before_it(votes):
    history = [*Q, {"role": "assistant", "content": "4"}]
    assert votes.thumbs(False, 3, history, "sys", None, "auto", "poems").endswith("(0 good, 1 bad).")
    assert votes.thumbs(True, 1, history, "", None, "auto", NO_ADAPTER).endswith("(1 good, 1 bad).")
    bad, good = _rows(votes, FEEDBACK_FILE)
    assert bad["prompt"] == [{"role": "system", "content": "sys"}, *Q] and bad["completion"][0]["content"] == "4"
    assert bad["label"] is False and bad["meta"]["source"] == "thumbs" and bad["meta"]["adapter"] == "poems"
    assert good["prompt"] == Q[:1] and good["completion"][0]["content"] == "hello" and good["label"] is True
    with pytest.raises(InputError, match="Only the model's replies"):
        votes.thumbs(True, 0, history, "", None, "auto", NO_ADAPTER)
    with pytest.raises(InputError, match="Message 10 is no longer in the conversation"):
        votes.thumbs(True, 9, history, "", None, "auto", NO_ADAPTER)
    # a note and the reply after it are one bubble group, named by the note's index: the vote is the reply's
    grouped = [*Q, note("Adapter", "attached"), {"role": "assistant", "content": "four"}]
    assert votes.thumbs(True, 3, grouped, "", None, "auto", NO_ADAPTER).endswith("(2 good, 1 bad).")
    assert _rows(votes, FEEDBACK_FILE)[-1]["completion"][0]["content"] == "four"
    assert _rows(votes, FEEDBACK_FILE)[-1]["prompt"] == Q
    # the thumb clicked again: un-marked in the page, nothing written or removed
    assert "stays in chat-feedback.jsonl (3 rows)" in votes.thumbs("", 3, history, "", None, "auto", NO_ADAPTER)
    assert len(_rows(votes, FEEDBACK_FILE)) == 3


def test_api_clients_get_the_votes_with_refusals_as_errors(tmp_path):
    import gradio as gr

    from studio.ui.layout import build_app

    ctx = build_context(StudioConfig(data_dir=tmp_path, device="cpu"), start_monitor=False)
    app = build_app(ctx)
    chat = app.studio_components["chat"]
    names = ("chatbot", "side", "system", "model", "precision", "use_adapter")
    for api_name in ("chat_vote_left", "chat_vote_right", "chat_vote_both_bad"):
        (fn,) = [f for f in app.fns.values() if f.api_name == api_name]
        assert [b._id for b in fn.inputs] == [chat[n]._id for n in names], api_name
        with pytest.raises(gr.Error, match="Nothing to vote on yet"):
            fn.fn([], [], "", None, "auto", NO_ADAPTER)
    (fn,) = [f for f in app.fns.values() if f.api_name == "chat_vote_left"]
    history = [*Q, {"role": "assistant", "content": "4"}]
    assert fn.fn(history, [*Q, {"role": "assistant", "content": "5"}], "", None, "auto", NO_ADAPTER).startswith(
        "Saved: chat-votes.jsonl now has 1 pair"
    )
