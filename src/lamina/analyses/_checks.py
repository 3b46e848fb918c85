"""Checks shared by the analyses, run before any computation: :func:`single_token` (each
error names the Python argument, and the command-line option in its ``cli`` wording), and
:func:`noted_group_stats`, which turns the similarity engine's warnings into result notes."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from lamina.errors import TokenizationError

if TYPE_CHECKING:
    from lamina.models import Model
    from lamina.similarity import GroupStats


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
