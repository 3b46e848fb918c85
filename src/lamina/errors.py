"""Errors lamina raises on bad input: each says what was wrong and what to do."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LaminaError(ValueError):
    """Base class of lamina's user-facing errors (a ``ValueError``)."""


class UnknownSiteError(LaminaError, KeyError):
    """A site name that the model does not have."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class UnsupportedArchitectureError(LaminaError):
    """Canonical sites were asked of a model family lamina has no adapter for."""


class ContextLengthError(LaminaError):
    """An input is longer than the model's context window."""


class TokenizationError(LaminaError):
    """A word that must be a single token is not."""


def suggest(name: str, candidates: Iterable[str], n: int = 5) -> str:
    """Return ``" Did you mean: a, b?"`` for the closest candidates, or ``""``."""
    close = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""
