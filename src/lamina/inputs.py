"""What :meth:`lamina.Model.collect` accepts, checked before any forward pass: inputs (strings
or token ids), positions and batch sizes. Each error names the Python argument, and the CLI
option in its ``cli`` wording."""

from __future__ import annotations

import operator
import warnings
from collections.abc import Mapping, Sequence, Set
from typing import Any, Protocol

import numpy as np
import torch

from lamina.checks import check_int
from lamina.errors import ContextLengthError, LaminaError, TokenizationError


class Tokenizes(Protocol):
    """What :func:`tokenize` needs of a model (a :class:`lamina.Model` has it)."""

    tokenizer: Any
    vocab_size: int
    max_length: int | None

Positions = str | int | Sequence[int]
POSITION_WORDS = ("last", "first", "all")


def _int(value: object) -> int | None:
    """``value`` as an int if it is an integer (not a bool, not a float), else ``None``."""
    if isinstance(value, (bool, np.bool_)):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def check_batch_size(batch_size: object) -> int:
    """``batch_size`` if it is an int of at least 1, else a :class:`LaminaError`."""
    return check_int(batch_size, "batch_size", 1, option="--batch-size")


def check_positions(positions: object) -> None:
    """Refuse a ``positions`` request that is not 'last', 'first', 'all', an int or a
    sequence of ints (lengths are checked later, against the inputs)."""
    if isinstance(positions, str):
        if positions not in POSITION_WORDS:
            raise LaminaError(
                f"Unknown positions {positions!r}: use 'all', 'last', 'first', an int, or one "
                "int per input.",
                cli=f"Unknown --positions {positions}: use last, first, all or an int.")
        return
    if _int(positions) is not None:
        return
    if isinstance(positions, (Sequence, torch.Tensor, np.ndarray)) and all(
            _int(p) is not None for p in positions):
        return
    raise LaminaError(f"positions={positions!r} is not a position: use 'all', 'last', 'first', "
                      "an int (negative counts from the end), or one int per input.")


def pick_positions(positions: Positions, lengths: torch.Tensor) -> torch.Tensor | None:
    """Real-token index to capture for each input (``None`` = all positions)."""
    check_positions(positions)
    n = len(lengths)
    if isinstance(positions, str):
        if positions == "all":
            return None
        if positions == "last":
            return lengths - 1
        return torch.zeros(n, dtype=torch.long)
    single = _int(positions)
    if single is not None:
        asked = torch.full((n,), single, dtype=torch.long)
    else:
        asked = torch.as_tensor([_int(p) for p in positions], dtype=torch.long)
        if asked.shape != (n,):
            raise LaminaError(
                f"positions has {asked.numel()} entries for {n} inputs: give one int per input.")
    picks = torch.where(asked < 0, asked + lengths, asked)
    bad = ((picks < 0) | (picks >= lengths)).nonzero().flatten()
    if len(bad):
        i = int(bad[0])
        raise LaminaError(
            f"Position {int(asked[i])} is outside input {i}, which has {int(lengths[i])} tokens "
            f"(valid: {-int(lengths[i])} to {int(lengths[i]) - 1}).",
            cli=f"--positions {int(asked[i])} is outside input {i}, which has "
            f"{int(lengths[i])} tokens.")
    return picks


def _as_list(inputs: Any) -> list[Any]:
    if isinstance(inputs, str):
        return [inputs]
    if isinstance(inputs, (torch.Tensor, np.ndarray)):
        t = torch.as_tensor(inputs)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or t.ndim not in (1, 2):
            raise LaminaError(f"A tensor of inputs must hold integer token ids, as [seq] or "
                              f"[n, seq], not {t.dtype} of shape {tuple(t.shape)}.")
        return t.tolist() if t.ndim == 2 else [t.tolist()]
    if inputs is None or isinstance(inputs, (bytes, Mapping, Set)) or not hasattr(
            inputs, "__iter__"):
        raise LaminaError(f"inputs must be a string, a list of strings or a list of token-id "
                          f"lists, not {type(inputs).__name__}.")
    return list(inputs)


def _token_ids(i: int, x: Any) -> list[int]:
    if isinstance(x, (torch.Tensor, np.ndarray)):
        x = x.tolist() if x.ndim == 1 else None
    ids = [_int(t) for t in x] if isinstance(x, (list, tuple)) else [None]
    if any(t is None for t in ids):
        raise LaminaError(f"Input {i} is {type(x).__name__} {str(x)[:40]}: each input must be "
                          "a string or a sequence of integer token ids.")
    return ids  # type: ignore[return-value]


def tokenize(model: Tokenizes, inputs: Any, *, truncate: bool = False) -> list[list[int]]:
    """Token ids of each input: strings go through the tokenizer as it does by default
    (special tokens included); token-id sequences pass through unchanged."""
    items = _as_list(inputs)
    if not items:
        raise LaminaError("No inputs were given: pass a non-empty list of strings or token ids.",
                          cli="No inputs were given: --lines has no lines.")
    kinds = {isinstance(x, str) for x in items}
    if kinds == {True, False}:
        raise LaminaError("Inputs mix strings and token ids: pass one kind only.")
    if kinds == {True}:
        if model.tokenizer is None:
            raise LaminaError("This model has no tokenizer: pass token ids instead of strings.")
        try:
            encoded = model.tokenizer(items, add_special_tokens=True)["input_ids"]
        except Exception as err:  # a character tokenizer meeting an unknown character
            unknown = sorted(set("".join(items)) - set(model.tokenizer.get_vocab()))
            raise TokenizationError(
                f"The tokenizer cannot encode these inputs ({err}). Characters not in its "
                f"vocabulary: {unknown[:20]}. Remove or replace them."
            ) from None
        ids = [list(x) for x in encoded]
    else:
        ids = [_token_ids(i, x) for i, x in enumerate(items)]
    vocab = model.vocab_size
    for i, seq in enumerate(ids):
        if not seq:
            raise LaminaError(f"Input {i} has no tokens: remove empty inputs.")
        if vocab > 0 and (min(seq) < 0 or max(seq) >= vocab):
            raise LaminaError(
                f"Input {i} has a token id outside the vocabulary [0, {vocab}): {seq[:10]}...")
    limit = model.max_length
    too_long = [i for i, seq in enumerate(ids) if limit and len(seq) > limit]
    if too_long:
        i = too_long[0]
        if not truncate:
            what = (f"{len(too_long)} input(s) are longer than the model's context of {limit} "
                    f"tokens (input {i} has {len(ids[i])}). Shorten them, or ")
            raise ContextLengthError(
                what + f"pass truncate=True to keep the first {limit} tokens.",
                cli=what + f"pass --truncate to keep the first {limit} tokens.")
        warnings.warn(
            f"Truncated {len(too_long)} input(s) to the model's context of {limit} tokens.",
            stacklevel=3,
        )
        ids = [seq[:limit] for seq in ids]
    return ids
