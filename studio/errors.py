"""Errors the user can read: one line that says what is wrong, and a tip that says what to do."""

from __future__ import annotations


class StudioError(Exception):
    """Base of every error shown to the user. `message` is one line; `tip` says what to do about it."""

    def __init__(self, message: str, tip: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.tip = tip

    def __str__(self) -> str:
        return f"{self.message} {self.tip}".strip() if self.tip else self.message


class ConfigError(StudioError):
    """A setting (CLI flag, environment variable or studio.toml entry) has a bad value."""


class InputError(StudioError):
    """Something the user typed or uploaded cannot be used."""


class ModelLoadError(StudioError):
    """A model could not be found, read or loaded."""


class BudgetError(StudioError):
    """A model or job does not fit in the memory budget, even after evicting what can be evicted."""


class StudioOutOfMemory(StudioError):
    """The device ran out of memory and the manager's recovery did not help."""
