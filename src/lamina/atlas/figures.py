"""Figures for the page: a matplotlib Figure as inline SVG (deterministic ids, no date), or a
PNG data URI when the SVG would be too heavy; and the overlay of several models' profiles."""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: SVG above this many bytes is replaced by a PNG data URI.
SVG_LIMIT = 1_500_000
PNG_DPI = 110

_PROLOGUE = re.compile(r"\A.*?(?=<svg)", re.S)
#: matplotlib's comments repeat each text (escaped); the page drops them.
_COMMENT = re.compile(r"<!--.*?-->\n?", re.S)


@dataclass(frozen=True)
class InlineFigure:
    """A rendered figure: ``kind`` is ``"svg"`` (``data`` is the ``<svg>`` element) or
    ``"png"`` (``data`` is a ``data:image/png;base64,...`` URI)."""

    kind: str
    data: str
    width_px: float
    height_px: float

    @property
    def nbytes(self) -> int:
        return len(self.data.encode())


def render(fig: Figure, salt: str, *, svg_limit: int = SVG_LIMIT) -> InlineFigure:
    """``fig`` as inline SVG whose ids depend only on ``salt`` and the content (so the same
    figure gives the same bytes), or as a PNG data URI when the SVG exceeds ``svg_limit``."""
    import matplotlib

    width, height = (float(v) for v in fig.get_size_inches() * 72)
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": salt, "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    svg = _COMMENT.sub("", _PROLOGUE.sub("", buf.getvalue(), count=1))
    if len(svg.encode()) <= svg_limit:
        return InlineFigure("svg", svg.strip(), width, height)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=PNG_DPI, bbox_inches="tight",
                metadata={"Software": None})
    uri = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode("ascii")
    return InlineFigure("png", uri, width, height)


def overlay_figure(profiles: dict[str, pd.DataFrame], title: str) -> Figure:
    """One axis, one colour per model: each frame has columns ``x`` (relative depth 0..1),
    ``y`` and optionally ``label`` (one line style per label)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.6))
    ax = fig.add_subplot()
    colours = [f"C{i}" for i in range(10)]
    styles = ["-", "--", ":", "-."]
    for i, (model, frame) in enumerate(profiles.items()):
        groups = (frame.groupby("label", sort=False) if "label" in frame.columns
                  else [(None, frame)])
        for j, (label, rows) in enumerate(groups):
            rows = rows.sort_values("x")
            name = model if label is None else f"{model} · {label}"
            ax.plot(rows["x"], rows["y"], color=colours[i % 10],
                    linestyle=styles[j % len(styles)], marker="o", markersize=3, label=name)
    ax.set(xlabel="relative depth (layer / number of layers)", ylabel=title, xlim=(-0.02, 1.02))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig
