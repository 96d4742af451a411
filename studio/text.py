"""Text shared by the engines, the API and the UI (no heavy imports): checks on text the user typed or sent, and
how sizes are written.

Unicode has characters that print nothing (zero-width spaces, direction marks) and code points that are not text
at all (lone surrogates, which JSON can carry as "\\ud800"). A prompt made only of the first is empty to the user;
the second breaks tokenizers and file writers deep inside a run. Both are caught here, before any model runs.
"""

from __future__ import annotations

import sys
import unicodedata


def blank(text: str | None) -> bool:
    """True when `text` shows nothing: empty, or only spaces and invisible format characters (ZWSP, RLM, ...)."""
    return not any(not ch.isspace() and unicodedata.category(ch) != "Cf" for ch in text or "")


def lone_surrogate(text: str) -> int | None:
    """The index of the first lone surrogate (a code point that is not text), or None when `text` is valid."""
    for i, ch in enumerate(text):
        if "\ud800" <= ch <= "\udfff":
            return i
    return None


def control_char(text: str) -> int | None:
    """The index of the first control character (NUL, ESC, ...; tabs and newlines do not count), or None."""
    for i, ch in enumerate(text):
        if unicodedata.category(ch) == "Cc" and ch not in "\t\n\r":
            return i
    return None


def invalid_text(text: str, what: str) -> str | None:
    """A one-line reason why `text` cannot be used as `what`, or None when it can."""
    at = lone_surrogate(text)
    if at is not None:
        return (
            f"{what} is not valid Unicode text: character {at + 1} is a lone surrogate "
            f"(U+{ord(text[at]):04X}). Send it as UTF-8 text."
        )
    return None


def fmt_bytes(n: int | float | None) -> str:
    """1.9 GB / 350 MB / 12 KB: the units the UI and messages use (GiB-based, as NVML tools show)."""
    if n is None:
        return "?"
    n = float(n)
    if n == 0:
        return "0 B"
    for unit, size in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if abs(n) >= size or unit == "KB":
            value = n / size
            return f"{value:.1f} {unit}" if abs(value) < 100 or unit == "KB" else f"{value:.0f} {unit}"
    return f"{n:.0f} B"


def fmt_idle(seconds: float) -> str:
    """'5 min', '1.5 min', '30 s': an idle time (keep-alive) as the page and the event log say it."""
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def json_limit(exc: BaseException) -> str | None:
    """Why `json.loads` refused a text that may well be valid JSON, in words: nesting deeper than Python's reader
    recurses, or an integer longer than Python converts. None for any other failure (a syntax error says its own)."""
    if isinstance(exc, RecursionError):
        return "it nests arrays or objects too deeply to read (about 900 levels at most)"
    if type(exc) is ValueError and "digits" in str(exc):  # not JSONDecodeError: Python's int-length limit
        return f"it holds a whole number longer than {sys.get_int_max_str_digits()} digits"
    return None
