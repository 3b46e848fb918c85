"""Checks of scalar arguments shared by every public function: an integer count or a finite
number in a range, refused with a :class:`LaminaError` that names the Python parameter and,
for command-line users, the option. A bool is not an integer and NaN is never compared."""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from lamina.errors import LaminaError


def _scalar(value: object) -> object:
    """A 0-d numpy array or tensor as its Python scalar; anything else unchanged."""
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 0:
        return value.item()
    return value


def _bound(x: float) -> str:
    """``x`` for a message: ``2**63 - 1`` rather than 9223372036854775807."""
    if isinstance(x, int) and x >= 2**16 and (x + 1) & x == 0:
        return f"2**{(x + 1).bit_length() - 1} - 1"
    return f"{x:g}"


def check_int(value: object, name: str, least: int = 1, *, most: int | None = None,
              option: str | None = None, why: str = "", cli_why: str | None = None,
              error: type[LaminaError] = LaminaError) -> int:
    """``value`` as an int if it is an integer in ``[least, most]``, else ``error`` naming
    ``name`` (and ``option`` on the command line); ``why`` is appended to the message
    (``cli_why`` instead on the command line, when given)."""
    value = _scalar(value)
    ok = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    if ok and least <= int(value) and (most is None or int(value) <= most):  # type: ignore[arg-type]
        return int(value)  # type: ignore[arg-type]
    bound = f">= {least}" if most is None else f"from {least} to {_bound(most)}"
    cli_why = why if cli_why is None else cli_why
    raise error(f"{name} must be an integer {bound}, not {value!r}{why}.",
                cli=f"{option} must be an integer {bound}, not {value}{cli_why}."
                if option else None)


def check_number(value: object, name: str, low: float = -math.inf, high: float = math.inf, *,
                 option: str | None = None, low_open: bool = False, why: str = "",
                 error: type[LaminaError] = LaminaError) -> float:
    """``value`` as a float if it is a finite real number in ``[low, high]`` (``(low, high]``
    with ``low_open``), else ``error``; NaN and infinities are refused."""
    value = _scalar(value)
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    if ok:
        x = float(value)  # type: ignore[arg-type]
        if math.isfinite(x) and (low < x if low_open else low <= x) and x <= high:
            return x
    what = "a finite number"
    if math.isfinite(low) and math.isfinite(high):
        what += f" in {'(' if low_open else '['}{low:g}, {high:g}]"
    elif math.isfinite(low):
        what += f" {'>' if low_open else '>='} {low:g}"
    elif math.isfinite(high):
        what += f" <= {high:g}"
    raise error(f"{name} must be {what}, not {value!r}{why}.",
                cli=f"{option} must be {what}, not {value}{why}." if option else None)
