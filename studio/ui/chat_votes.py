"""Votes in the Chat tab: Left is better / Right is better / Both bad side by side, 👍/👎 on a reply. Each vote is a
line of preference data in the data dir's preferences/ folder (studio/training/votes.py), on disk before the page
says "saved". Thin handlers: widgets -> the vote's prompt and replies -> VoteBook -> the status line. No torch here.
"""

from __future__ import annotations

import functools
from typing import Any

import gradio as gr

from studio.errors import InputError, StudioError
from studio.training.votes import NOTHING_YET, VoteBook, VoteMeta
from studio.ui import messages as msg
from studio.ui.session import StopFlags, session_key

PAIR_CHOICES = ("left", "right", "both bad")
STILL_WRITING = "The {which} is still being written: vote when it has ended."
WAS_STOPPED = "The {which} was stopped before it ended: regenerate it to vote on a whole reply."
NOT_A_REPLY = "Nothing to vote on yet: the last question has no {which}. Ask a question and wait for the reply."
NOT_SIDE_BY_SIDE = (
    "Nothing to compare yet: the right pane has no reply to this question. Tick 'Side by side' and ask again."
)
DIFFERENT_QUESTIONS = (
    "The two panes answer different conversations, so their replies cannot be compared. Ask again with "
    "'Side by side' ticked."
)
NOT_A_MODEL_REPLY = "Only the model's replies can be voted on, not message {n}."
NO_SUCH_MESSAGE = "Message {n} is no longer in the conversation: vote on a reply that is there."
UNVOTED = (
    "Only un-marked in the page: the vote saved before stays in {name} ({rows} rows). Each 👍/👎 click adds a row."
)
TWO_SAMPLES_STATS = "Left: {first} · right, a second sample: {second}"
SIDE_LABEL = "Without the adapter (no adapter: a second sample)"


class ChatVotes:
    """The vote handlers of one Chat tab; `flags` are the tab's own (a reply still being written is refused)."""

    def __init__(self, ctx: Any, flags: StopFlags) -> None:
        self.ctx = ctx
        self.flags = flags
        self.book = VoteBook(ctx.paths.preferences)

    def _meta(self, choice: str | None, precision: str, use_adapter: str | None, source: str) -> VoteMeta:
        from studio.ui.chat_tab import NO_ADAPTER, resolve_spec

        try:
            name = resolve_spec(self.ctx, choice, precision).name
        except StudioError:
            name = (choice or "").strip() or "unknown model"
        adapter = None if use_adapter in (None, "", NO_ADAPTER) else use_adapter
        return VoteMeta(model=name, adapter=adapter, source=source)

    def pair(
        self,
        choice: str,
        history: list | None,
        side: list | None,
        system: str | None,
        model: str | None,
        precision: str,
        use_adapter: str | None,
        request: Any = None,
    ) -> str:
        """Left is better / Right is better / Both bad: the left pane (the adapter's reply, or the first sample)
        against the right (the base's, or the second sample). Raises InputError for a vote that cannot be kept."""
        if choice not in PAIR_CHOICES:
            raise InputError(f"A side-by-side vote is one of {', '.join(PAIR_CHOICES)}, not {choice!r}.")
        if self.flags.busy(session_key(request)):
            raise InputError(STILL_WRITING.format(which="reply"))
        left_prompt, left = split_reply(system, history, "left reply")
        if not shown(side) or shown(side)[-1].get("role") != "assistant":
            raise InputError(NOT_SIDE_BY_SIDE)
        right_prompt, right = split_reply(system, side, "right reply")
        if left_prompt != right_prompt:
            raise InputError(DIFFERENT_QUESTIONS)
        meta = self._meta(
            model, precision, use_adapter, "side-by-side" if self._adapter(use_adapter) else "two-samples"
        )
        if choice == "both bad":
            return self.book.add_both_bad(left_prompt, left, right, meta).message()
        chosen, rejected = (left, right) if choice == "left" else (right, left)
        return self.book.add_pair(left_prompt, chosen, rejected, meta).message()

    def thumbs(
        self,
        liked: bool | str,
        index: int | tuple | list,
        history: list | None,
        system: str | None,
        model: str | None,
        precision: str,
        use_adapter: str | None,
        request: Any = None,
    ) -> str:
        """👍 (liked True) or 👎 (False) on the reply at `index` of the conversation: a KTO row."""
        if liked == "":  # the thumb clicked again: the page un-marks it; the file keeps what was saved
            saved = self.book.count("chat-feedback.jsonl")
            return UNVOTED.format(name=saved.path.name, rows=saved.rows)
        history = list(history or [])
        if not shown(history):
            raise InputError(NOTHING_YET)
        n = index[0] if isinstance(index, (tuple, list)) else index
        if not isinstance(n, int) or not 0 <= n < len(history):
            raise InputError(NO_SUCH_MESSAGE.format(n=n + 1 if isinstance(n, int) else n))
        # the page groups a note with the replies beside it and names the group by its first message: the reply
        while isinstance(history[n], dict) and _is_note(history[n]) and n + 1 < len(history):
            if history[n + 1].get("role") != "assistant":
                break
            n += 1
        message = history[n]
        if not isinstance(message, dict) or message.get("role") != "assistant" or _is_note(message):
            raise InputError(NOT_A_MODEL_REPLY.format(n=n + 1))
        if n == len(history) - 1 and self.flags.busy(session_key(request)):
            raise InputError(STILL_WRITING.format(which="reply"))
        prompt, completion = split_reply(system, history[: n + 1], "reply")
        meta = self._meta(model, precision, use_adapter, "thumbs")
        return self.book.add_feedback(prompt, completion, liked is True, meta).message()

    @staticmethod
    def _adapter(use_adapter: str | None) -> bool:
        from studio.ui.chat_tab import NO_ADAPTER

        return use_adapter not in (None, "", NO_ADAPTER)


def _is_note(message: dict) -> bool:
    from studio.ui.chat_tab import is_note

    return is_note(message)


def shown(history: list | None) -> list[dict]:
    """The conversation's messages without the page's own notes."""
    return [m for m in history or [] if isinstance(m, dict) and not _is_note(m)]


def split_reply(system: str | None, history: list | None, which: str) -> tuple[list[dict], str]:
    """(prompt, reply) of a pane whose last message is the model's reply: the prompt is the conversation before it,
    as the model read it (system prompt first when set), the reply its text."""
    from studio.ui.chat_tab import _text, conversation

    messages = shown(history)
    if not messages:
        raise InputError(NOT_A_REPLY.format(which=which))
    last = messages[-1]
    if last.get("role") != "assistant":
        raise InputError(NOT_A_REPLY.format(which=which))
    text = _text(last.get("content"))
    if text == msg.CHAT_STOPPED_EMPTY or text.endswith(msg.CHAT_STOPPED_MARK):
        raise InputError(WAS_STOPPED.format(which=which))
    return conversation(system or "", messages[:-1]), text


# ----- layout and wiring ----------------------------------------------------------------------------------------


def layout(w: dict[str, Any]) -> None:
    """The vote buttons (shown with the side-by-side pane) and the line that says where a vote went."""
    with gr.Row(visible=False, elem_id="chat-vote-row") as w["vote_row"]:
        w["vote_left"] = gr.Button("Left is better", size="sm", elem_id="chat-vote-left")
        w["vote_right"] = gr.Button("Right is better", size="sm", elem_id="chat-vote-right")
        w["vote_both_bad"] = gr.Button("Both bad", size="sm", elem_id="chat-vote-both-bad")
    w["vote_status"] = gr.Markdown(elem_id="chat-vote-status")


def _page(action: Any) -> Any:
    """The page's version of a vote: a refusal is a warning and the status line says why (nothing was saved)."""

    @functools.wraps(action)  # Gradio reads the signature (the request, the like data) through the wrapper
    def run(*args: Any, **kwargs: Any) -> str:
        try:
            return action(*args, **kwargs)
        except StudioError as exc:
            gr.Warning(str(exc))
            return f"Not saved: {exc}"

    return run


LIGHT = {"queue": False, "show_progress": "hidden"}


def show_buttons(on: bool) -> gr.Row:
    """The side-by-side votes show with the side-by-side pane."""
    return gr.Row(visible=bool(on))


def _pair_vote(votes: ChatVotes, choice: str) -> Any:
    # named as /chat names the same widgets, for API clients
    def vote(chatbot, side, system, model, precision, use_adapter, request: gr.Request = None) -> str:
        return votes.pair(choice, chatbot, side, system, model, precision, use_adapter, request=request)

    return vote


def wire(tab: Any, w: dict[str, Any]) -> None:
    """The votes' events: each button on the page, the same votes for API clients (refusals are errors there), and
    the thumbs on the conversation's replies (page only: the click says which reply)."""
    votes = ChatVotes(tab.ctx, tab.flags)
    tab.votes = votes  # for tests
    quick = {"concurrency_id": "ui", "concurrency_limit": None, "show_progress": "hidden"}
    pair_inputs = [w[n] for n in ("chatbot", "side", "system", "model", "precision", "use_adapter")]
    for choice, name in zip(PAIR_CHOICES, ("vote_left", "vote_right", "vote_both_bad"), strict=True):
        vote = _pair_vote(votes, choice)
        gr.on([], msg.user_errors(vote), pair_inputs, [w["vote_status"]], api_name=f"chat_{name}", **quick)
        w[name].click(_page(vote), pair_inputs, [w["vote_status"]], api_visibility="private", **quick)

    def thumbs(history, system, model, precision, use_adapter, like: gr.LikeData, request: gr.Request = None) -> str:
        return votes.thumbs(like.liked, like.index, history, system, model, precision, use_adapter, request=request)

    like_inputs = [w[n] for n in ("chatbot", "system", "model", "precision", "use_adapter")]
    w["chatbot"].like(_page(thumbs), like_inputs, [w["vote_status"]], api_visibility="private", **quick)
    w["side_by_side"].change(show_buttons, [w["side_by_side"]], [w["vote_row"]], api_visibility="private", **LIGHT)
