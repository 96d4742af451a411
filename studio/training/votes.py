"""Votes cast in the Chat tab, kept as preference data: one JSONL line per vote, in TRL's conversational formats.

    preferences/chat-votes.jsonl     pairs (DPO, ORPO): {"prompt": [...], "chosen": [...], "rejected": [...]}
    preferences/chat-feedback.jsonl  single replies (KTO): {"prompt": [...], "completion": [...], "label": bool}

Each line also carries "meta" (model, adapter, time, source), which readers drop. A vote is on disk (flushed and
fsync'ed) before `VoteBook` returns, so the page says "saved" only for what is saved. "Both bad" has no pair to
prefer: it is kept as two bad examples, two KTO rows labelled false. Pure Python: no torch, no gradio.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from studio.errors import InputError

try:  # a lock between processes too (two studios on one data dir); Windows has none, the thread lock still holds
    import fcntl
except ImportError:  # pragma: no cover - not on Linux
    fcntl = None

PAIRS_FILE = "chat-votes.jsonl"  # side-by-side votes: chosen and rejected
FEEDBACK_FILE = "chat-feedback.jsonl"  # thumbs (and "both bad"): one completion with a label
SOURCES = ("side-by-side", "thumbs", "two-samples")
ROLES = ("system", "user", "assistant")

NOTHING_YET = "Nothing to vote on yet: ask a question and wait for the reply first."
NO_QUESTION = "Nothing to vote on yet: the conversation has no question before this reply."
EMPTY_REPLY = "The {which} is empty: there is nothing in it to vote on. Regenerate it, or vote on another reply."
SAME_REPLIES = (
    "The two replies are the same, so neither is better. Vote 👍/👎 on the reply instead, or regenerate one of them."
)
BAD_MESSAGE = "Message {n} of the conversation cannot be kept: {why}."
BAD_SOURCE = "A vote's source must be one of {sources}, not {source!r}."


@dataclass(frozen=True)
class VoteMeta:
    """Where a vote came from; kept as the row's "meta" (readers of the datasets drop it)."""

    model: str  # the chat model's name
    adapter: str | None  # the adapter that wrote the reply (None: the base model)
    source: str  # one of SOURCES
    time: str = ""  # when the vote was cast, UTC ISO 8601; filled in on save when empty

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise InputError(BAD_SOURCE.format(sources=", ".join(SOURCES), source=self.source))

    def stamped(self) -> dict[str, Any]:
        meta = asdict(self)
        meta["time"] = self.time or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return meta


@dataclass(frozen=True)
class Saved:
    """What a vote left on disk: the file it went to, and how many rows (pairs, or good and bad replies) it holds."""

    path: Path
    rows: int  # lines in the file now
    good: int = 0  # for the feedback file: rows labelled true
    bad: int = 0  # ... and false

    def message(self) -> str:
        if self.path.name == PAIRS_FILE:
            return f"Saved: {self.path.name} now has {self.rows} pair{'s' if self.rows != 1 else ''}."
        return f"Saved: {self.path.name} now has {self.rows} rows ({self.good} good, {self.bad} bad)."


def prompt_of(messages: Sequence[Any] | None) -> list[dict[str, str]]:
    """The prompt of a vote: the conversation up to the user's last question (system prompt first when set), as
    {"role", "content"} messages with text content. Refuses a conversation with no question."""
    prompt = []
    for n, m in enumerate(messages or [], start=1):
        if not isinstance(m, dict):
            raise InputError(BAD_MESSAGE.format(n=n, why="it is not a message with a role and a content"))
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise InputError(BAD_MESSAGE.format(n=n, why=f"its role is {role!r}, not one of {', '.join(ROLES)}"))
        if not isinstance(content, str):
            raise InputError(BAD_MESSAGE.format(n=n, why="its content is not text"))
        prompt.append({"role": role, "content": content})
    if not prompt:
        raise InputError(NOTHING_YET)
    if prompt[-1]["role"] != "user" or not prompt[-1]["content"].strip():
        raise InputError(NO_QUESTION)
    return prompt


def reply_of(text: str | None, which: str = "reply") -> list[dict[str, str]]:
    """A reply as the one assistant message of "chosen", "rejected" or "completion"; an empty one is refused."""
    if not isinstance(text, str) or not text.strip():
        raise InputError(EMPTY_REPLY.format(which=which))
    return [{"role": "assistant", "content": text}]


def pair_row(prompt: Sequence[Any], chosen: str, rejected: str, meta: VoteMeta) -> dict[str, Any]:
    """A pair in the shared contract's format (DPO, ORPO)."""
    row = {
        "prompt": prompt_of(prompt),
        "chosen": reply_of(chosen, "better reply"),
        "rejected": reply_of(rejected, "worse reply"),
    }
    if chosen.strip() == rejected.strip():
        raise InputError(SAME_REPLIES)
    return {**row, "meta": meta.stamped()}


def feedback_row(prompt: Sequence[Any], completion: str, label: bool, meta: VoteMeta) -> dict[str, Any]:
    """An unpaired example in the shared contract's format (KTO): the reply and whether it was good."""
    row = {"prompt": prompt_of(prompt), "completion": reply_of(completion), "label": bool(label)}
    return {**row, "meta": meta.stamped()}


class VoteBook:
    """The preference files of one data dir's preferences/ folder. Appends are serialised (a lock per book, and a
    file lock for other processes), each on disk before the call returns."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._lock = threading.Lock()

    def add_pair(self, prompt: Sequence[Any], chosen: str, rejected: str, meta: VoteMeta) -> Saved:
        """One side-by-side vote: `chosen` was the better reply to `prompt`."""
        return self._append(PAIRS_FILE, [pair_row(prompt, chosen, rejected, meta)])

    def add_feedback(self, prompt: Sequence[Any], completion: str, label: bool, meta: VoteMeta) -> Saved:
        """A 👍 (label true) or 👎 (false) on one reply."""
        return self._append(FEEDBACK_FILE, [feedback_row(prompt, completion, label, meta)])

    def add_both_bad(self, prompt: Sequence[Any], left: str, right: str, meta: VoteMeta) -> Saved:
        """ "Both bad" side by side: no pair to prefer, so two bad examples (KTO rows labelled false)."""
        rows = [feedback_row(prompt, left, False, meta), feedback_row(prompt, right, False, meta)]
        return self._append(FEEDBACK_FILE, rows)

    def count(self, name: str) -> Saved:
        """How many rows a preference file holds (0 when it does not exist yet)."""
        return _tally(self.folder / name)

    def _append(self, name: str, rows: list[dict[str, Any]]) -> Saved:
        lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / name
        with self._lock, _locked(path) as f:
            if os.fstat(f.fileno()).st_size and not _ends_with_newline(path):
                lines = "\n" + lines  # a line cut by a crash stays its own (bad) line, never glued to this one
            f.write(lines.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
            return _tally(path)


@contextmanager
def _locked(path: Path) -> Iterator[Any]:
    with open(path, "ab") as f:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield f
        finally:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _tally(path: Path) -> Saved:
    rows = good = bad = 0
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            rows += 1
            try:
                label = json.loads(line).get("label")
            except (ValueError, AttributeError):
                continue
            good += label is True
            bad += label is False
    return Saved(path, rows, good, bad)
