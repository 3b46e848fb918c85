"""Argument checks shared by the analyses, run before any computation (each error names the
Python argument, and the command-line option in its ``cli`` wording where there is one), and
:func:`noted_group_stats`, which turns the similarity engine's warnings into result notes."""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from lamina.errors import LaminaError, TokenizationError

if TYPE_CHECKING:
    from lamina.models import Model
    from lamina.similarity import GroupStats


def check_count(value: object, name: str, least: int, *, option: str | None = None,
                why: str = "") -> int:
    """``value`` if it is an int of at least ``least`` (a bool is not), else a
    :class:`LaminaError` naming ``name`` (and ``option`` on the command line)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or (
            value < least):
        raise LaminaError(f"{name} must be an int of at least {least}, not {value!r}{why}.",
                          cli=f"{option} must be at least {least}, not {value}{why}."
                          if option else None)
    return int(value)


def check_number(value: object, name: str, low: float, high: float, *,
                 option: str | None = None, low_open: bool = False, why: str = "") -> float:
    """``value`` as a float if it is a finite number in ``[low, high]`` (``(low, high]`` with
    ``low_open``), else a :class:`LaminaError`; NaN is refused, never compared."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)) and math.isfinite(float(value))
    ok = ok and (low < float(value) if low_open else low <= float(value)) and (
        float(value) <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise LaminaError(f"{name} must be a number in {interval}, not {value!r}{why}.",
                          cli=f"{option} must be a number in {interval}, not {value}{why}."
                          if option else None)
    return float(value)


def single_token(model: Model, word: str, name: str, option: str) -> int:
    """The token id of ``word``, or a :class:`TokenizationError` naming the argument
    (``name``, ``option`` on the command line) and the word's pieces."""
    ids = model.tokenizer(word, add_special_tokens=False)["input_ids"] if isinstance(
        word, str) and word else []
    if len(ids) == 1:
        return int(ids[0])
    pieces = model.tokenizer.convert_ids_to_tokens(ids) if ids else []
    what = f"{word!r} is {len(ids)} tokens {pieces}, not one: choose a single-token word."
    raise TokenizationError(f"The {name} word {what}", cli=f"The {option} word {what}")


def noted_group_stats(x: Any, labels: Any, notes: list[str], prefix: str = "",
                      **kwargs: Any) -> GroupStats:
    """:func:`lamina.similarity.group_stats` without its warnings: each note on an undefined
    statistic (a single pair, no variation) is added to ``notes`` (once) instead, so that an
    analysis states it in its summary."""
    from lamina.similarity import UndefinedStatisticWarning, group_stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedStatisticWarning)
        gs = group_stats(x, labels, **kwargs)
    notes += [prefix + n for n in gs.notes if prefix + n not in notes]
    return gs
