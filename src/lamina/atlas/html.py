"""The page: a jinja2 template (autoescaped) filled from a :class:`~lamina.atlas.core.Report`,
with its CSS and script inlined, so the file opens from disk with no network request."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import pandas as pd
from markupsafe import Markup

from lamina.atlas.section import CROSS, ReportView

if TYPE_CHECKING:
    from lamina.atlas.figures import InlineFigure

#: Rows of a table shown on the page (the CSV has them all).
MAX_ROWS = 200
#: Characters shown as escapes (``\\x07``, ``\\u202e``): C0/C1 controls other than tab and
#: line breaks, and the bidirectional embedding/override/isolate controls, which would reorder
#: the text around them.
_INVISIBLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
#: Longest text cell shown in full (longer ones are cut; the tooltip has the whole text).
MAX_CELL = 80


@dataclass(frozen=True)
class Cell:
    """One table cell: ``text`` shown, ``value`` (exact, for sorting and reading back) and
    ``title`` (the tooltip)."""

    text: str
    value: str
    title: str
    numeric: bool


def fmt(value: Any) -> Cell:
    """A value as a cell: integers with thousands separators, floats to 4 significant
    digits (12 in ``value`` and the tooltip: the analysis' number, without the last bits that
    multi-threaded float64 sums may vary in, so the same inputs give the same page), text cut
    at :data:`MAX_CELL` characters."""
    if isinstance(value, bool):
        return Cell("yes" if value else "no", str(value).lower(), "", False)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return Cell("–", "", "not defined", True)
    if isinstance(value, int):
        return Cell(f"{value:,}", str(value), "", True)
    if isinstance(value, float):
        return Cell(f"{value:.4g}", f"{value:.12g}", f"{value:.12g}", True)
    text = str(value)
    shown = text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"
    return Cell(shown, text, text if shown != text or not text.isprintable() else "", False)


def visible(text: str) -> str:
    """``text`` with control and bidi-override characters as visible escapes."""
    return _INVISIBLE.sub(lambda m: ascii(m.group())[1:-1], text)


def _finalize(value: Any) -> Any:
    """Every template output: plain strings made :func:`visible` (then autoescaped);
    :class:`Markup` (the figures' SVG) is left as it is."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return visible(value)
    return value


def _py(value: Any) -> Any:
    """numpy scalars as Python scalars."""
    return value.item() if hasattr(value, "item") and not isinstance(value, str) else value


def table(frame: pd.DataFrame) -> dict[str, Any]:
    """A frame as ``{"columns", "rows", "hidden"}`` for the template (at most
    :data:`MAX_ROWS` rows)."""
    rows = [[fmt(_py(v)) for v in row] for row in frame.head(MAX_ROWS).itertuples(index=False)]
    return {"columns": [str(c) for c in frame.columns], "rows": rows,
            "hidden": max(len(frame) - MAX_ROWS, 0)}


def flatten(summary: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """The scalar entries of a summary (nested dicts as ``a.b``); long texts and lists are
    left out (they are in ``summary.json``)."""
    out: list[tuple[str, Any]] = []
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out += flatten(value, f"{name}.")
        else:
            value = _py(value)
            if isinstance(value, (int, float, bool)) or value is None or (
                    isinstance(value, str) and len(value) <= MAX_CELL):
                out.append((name, value))
    return out


def _figure(fig: InlineFigure, caption: str) -> dict[str, Any]:
    data = Markup(fig.data) if fig.kind == "svg" else fig.data  # matplotlib escapes its text
    return {"kind": fig.kind, "data": data, "caption": caption,
            "width": round(fig.width_px), "height": round(fig.height_px)}


def _asset(name: str) -> Markup:
    text = resources.files("lamina.atlas").joinpath("templates", name).read_text("utf-8")
    return Markup(text)


def _section(report: ReportView, model: str, sec: Any, anchor: str) -> dict[str, Any]:
    """One section as plain data (``model``: the key of its figures)."""
    return {
        "key": sec.key, "title": sec.title, "anchor": anchor,
        "skipped": sec.skipped, "findings": sec.findings,
        "numbers": [(k, fmt(v)) for k, v in flatten(sec.summary)],
        "tables": [(name, table(frame)) for name, frame in sec.tables.items()],
        "figures": [_figure(report.figures[(model, sec.key, name)], name)
                    for name in sec.figures if (model, sec.key, name) in report.figures],
    }


def context(report: ReportView) -> dict[str, Any]:
    """Everything the template needs, as plain data."""
    models = []
    for i, (model, secs) in enumerate(report.sections.items()):
        items = [_section(report, model, sec, f"m{i}-{sec.key}") for sec in secs]
        models.append({"name": model, "anchor": f"m{i}", "sections": items})
    cross = [_section(report, CROSS, sec, f"x-{sec.key}")
             for sec in getattr(report, "cross", [])]
    titles = {s.key: s.title for secs in report.sections.values() for s in secs}
    overlays = [{"anchor": f"overlay-{j}", "title": name,
                 "figure": _figure(fig, f"{name}, one colour per model (from "
                                        f"{titles.get(key, key)})")}
                for j, ((key, name), fig) in enumerate(report.overlays.items())]
    inputs = report.inputs
    return {
        "title": "lamina atlas: " + ", ".join(report.sections),
        "models": models, "overlays": overlays, "cross": cross,
        "headlines": report.headlines(), "version": report.manifest.get("lamina", ""),
        "inputs": {"corpus_chars": len(inputs.corpus), "n_texts": len(inputs.texts),
                   "seed": inputs.seed, "quick": inputs.quick},
        "css": _asset("style.css"), "script": _asset("script.js"),
    }


def render_page(report: ReportView) -> str:
    """The page's HTML (autoescaped: every model name, token and word is text)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("lamina.atlas", "templates"),
        autoescape=True, trim_blocks=True, lstrip_blocks=True,
        undefined=jinja2.StrictUndefined, finalize=_finalize)
    return env.get_template("page.html.j2").render(**context(report))
