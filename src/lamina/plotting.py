"""Small helpers shared by the figures."""

from __future__ import annotations

import html


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
