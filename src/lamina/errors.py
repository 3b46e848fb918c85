"""Errors lamina raises on bad input: each says what was wrong and what to do.

Every user-facing error is a :class:`LaminaError` (a ``ValueError``). A message names the
Python parameters (``truncate=True``); where the command line spells the remedy differently
the error carries that wording too (``cli=``), and the CLI prints it instead, so each user is
told about the interface they used.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LaminaError(ValueError):
    """Base class of lamina's user-facing errors (a ``ValueError``).

    Args:
        message: what was wrong and what to do, in the words of the Python API.
        cli: the same message in the words of the command line (its options), when they
            differ; :attr:`cli_message` falls back to ``message``.
    """

    def __init__(self, *args: object, cli: str | None = None) -> None:
        super().__init__(*args)
        self.cli = cli

    @property
    def cli_message(self) -> str:
        """The message for command-line users."""
        return self.cli if self.cli is not None else str(self)


class UnknownSiteError(LaminaError, KeyError):
    """A site name that the model does not have."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class UnsupportedArchitectureError(LaminaError):
    """Canonical sites were asked of a model family lamina has no family record for."""


class ContextLengthError(LaminaError):
    """An input is longer than the model's context window."""


class TokenizationError(LaminaError):
    """A word that must be a single token is not."""


class OutputError(LaminaError):
    """An output path that cannot be written (checked before the work starts)."""


class StoreError(LaminaError):
    """An activation store that is damaged, incomplete, locked or of other settings."""


class StoreCorruptError(StoreError):
    """A store whose manifest, shards or strings do not match what was committed."""


class StoreLockedError(StoreError):
    """Another process is writing the store."""


class IncompleteStoreError(StoreError):
    """An analysis was asked of a store whose collection has not finished."""


class StoreIndexError(StoreError, IndexError):
    """A row index outside a store, or an index of the wrong type (numpy's rules)."""


def suggest(name: str, candidates: Iterable[str], n: int = 5) -> str:
    """Return ``" Did you mean: a, b?"`` for the closest candidates, or ``""``."""
    close = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""
