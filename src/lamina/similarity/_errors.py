"""Errors of the similarity engine; each is a :class:`lamina.errors.LaminaError` (ValueError)."""

from __future__ import annotations

from lamina.errors import LaminaError


class SimilarityInputError(LaminaError):
    """Bad input: wrong shape, empty, NaN, unknown metric, mismatched labels, bad ``topk``."""


class TooManyPairsError(LaminaError):
    """A threshold selects more pairs than the memory limit allows."""


class MemoryLimitError(LaminaError):
    """A dense result (the full matrix) would not fit the memory limit."""


class UndefinedStatisticWarning(RuntimeWarning):
    """A statistic is undefined for these data (e.g. no across-group pairs when every row has
    the same label) and is reported as NaN; the result's ``notes`` say which and why."""
