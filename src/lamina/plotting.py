"""Small helpers shared by the figures."""

from __future__ import annotations

import html
from typing import Any


def token_label(token: object, max_len: int = 12) -> str:
    """A token string made safe for a matplotlib label: visible whitespace, no mathtext
    (``$`` escaped), bounded length."""
    s = "" if token is None else str(token)
    s = s.replace("\n", "⏎").replace("\t", "⇥").replace(" ", "␣").replace("Ġ", "␣")
    s = s.replace("$", r"\$")
    return s if len(s) <= max_len else s[: max_len - 1] + "…"


def token_html(token: object) -> str:
    """A token string escaped for HTML."""
    return html.escape("" if token is None else str(token))


def ordinal(n: int) -> str:
    """``1st``, ``2nd``, ``3rd``, ``4th``, ``11th``, ``12th``, ``13th``, ``21st`` ..."""
    n = int(n)
    suffix = "th" if 10 <= abs(n) % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(
        abs(n) % 10, "th")
    return f"{n}{suffix}"


def every_nth(n: int, what: str = "token") -> str:
    """``every token`` for n = 1, else ``every 2nd token`` (``every 3rd token`` ...)."""
    return f"every {what}" if int(n) <= 1 else f"every {ordinal(n)} {what}"


def integer_axis(*axes: Any, which: str = "x") -> None:
    """Only integer ticks on the ``which`` axis ("x", "y" or "both") of each of ``axes``
    (layers, ranks and positions are never fractional)."""
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        for name in ("x", "y") if which == "both" else (which,):
            getattr(ax, f"{name}axis").set_major_locator(MaxNLocator(integer=True))


def fitted_range(*arrays: Any, margin: float = 0.05) -> tuple[float, float]:
    """(low, high) that contains every finite value of ``arrays`` with ``margin`` of the span
    on each side (a span of zero gets a small absolute margin)."""
    import numpy as np

    values = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    values = values[np.isfinite(values)]
    if not len(values):
        return -1.0, 1.0
    lo, hi = float(values.min()), float(values.max())
    pad = (hi - lo) * margin if hi > lo else max(abs(lo) * 1e-3, 1e-6)
    return lo - pad, hi + pad
