"""The common shape of analysis results: a small dataclass with ``to_frame()``, ``plot()``
and ``save(dir)``. ``summary`` holds the headline numbers, always a dict (tables, such as one row
per model, are pandas frames reached through the result and saved as CSV), ``meta`` the model,
the options and the library versions; both go to ``summary.json``, a JSON object."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lamina.errors import LaminaError
from lamina.outputs import atomic_dir, check_output_dir


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _short(value: Any) -> str:
    """A number with four significant digits (an integer or text as it is)."""
    if isinstance(value, (bool, np.bool_, str)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.4g}"


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells cannot run as spreadsheet formulas: a cell that
    starts with ``=``, ``+``, ``-``, ``@``, tab or carriage return gets a leading ``'``
    (OWASP's advice for CSV injection). Numbers are untouched, so numeric columns read back
    exactly; only strings (token strings, corpus text) change."""
    out = frame.copy()
    for col in out.columns:
        if not pd.api.types.is_numeric_dtype(out[col]):  # object, str (pandas 3), category
            out[col] = out[col].map(
                lambda v: "'" + v if isinstance(v, str) and v.startswith(_FORMULA_START) else v)
    return out


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` as CSV for spreadsheets (see :func:`spreadsheet_safe`)."""
    spreadsheet_safe(frame).to_csv(path, index=False)


FIGURE_FORMATS = ("png", "svg", "pdf")


def check_formats(formats: Sequence[str] | str) -> tuple[str, ...]:
    """The figure formats asked for, each once, in order; a :class:`LaminaError` for an
    unknown one or none."""
    if isinstance(formats, str):
        formats = (formats,)
    out: list[str] = []
    for fmt in formats:
        f = str(fmt).lower().lstrip(".")
        if f not in FIGURE_FORMATS:
            raise LaminaError(f"Unknown figure format {fmt!r}: use png, svg or pdf.",
                              cli=f"Unknown --format {fmt!r}: use png, svg or pdf.")
        if f not in out:
            out.append(f)
    if not out:
        raise LaminaError("formats is empty: give at least one of png, svg, pdf.",
                          cli="Give at least one --format (png, svg or pdf).")
    return tuple(out)


@dataclass
class Result:
    """Base of every analysis result. Subclasses implement :meth:`to_frame` and :meth:`plot`
    (returning a matplotlib Figure) and fill ``summary`` (a dict of headline numbers: a table
    belongs in a frame, returned by :meth:`to_frame` or :meth:`extra_tables`) and ``meta``."""

    summary: dict[str, Any] = field(default_factory=dict, kw_only=True)
    meta: dict[str, Any] = field(default_factory=dict, kw_only=True)

    name = "result"

    def __post_init__(self) -> None:
        """Refuse a summary that is not a dict (a frame belongs among the tables)."""
        if not isinstance(self.summary, dict):
            raise LaminaError(
                f"{type(self).__name__}.summary must be a dict of headline numbers, not "
                f"{type(self.summary).__name__}: put a table in a frame of the result (its "
                "to_frame() or extra_tables()).")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Keep the short repr below: ``@dataclass`` only writes a ``__repr__`` that the class
        body does not define, so the inherited one is placed in each subclass body first."""
        super().__init_subclass__(**kwargs)
        if "__repr__" not in cls.__dict__:
            cls.__repr__ = next(b.__dict__["__repr__"] for b in cls.__mro__[1:]
                                if "__repr__" in b.__dict__)

    def headline(self) -> dict[str, Any]:
        """The summary's scalar numbers (and short strings), name -> value: what
        :meth:`__repr__` and :meth:`_repr_html_` show. Subclasses may override."""
        return {k: v for k, v in self.summary.items()
                if isinstance(v, (int, float, np.integer, np.floating))
                or (isinstance(v, str) and len(v) <= 40 and k != "conclusion_short")}

    def _model_label(self) -> str:
        models = self.meta.get("models")
        if isinstance(models, dict):
            models = list(models)
        return repr(self.meta["model"]) if "model" in self.meta else repr(models)

    def __repr__(self) -> str:
        """One line: class, model, rows, the short conclusion and up to three numbers."""
        parts = [f"model={self._model_label()}"]
        try:
            parts.append(f"{len(self.to_frame())} rows")
        except Exception:  # noqa: BLE001 - a repr must never raise
            pass
        if self.summary.get("conclusion_short"):
            parts.append(str(self.summary["conclusion_short"]))
        numbers = [(k, v) for k, v in self.headline().items()
                   if not isinstance(v, (bool, np.bool_, str))]
        parts += [f"{k}={_short(v)}" for k, v in numbers[:3]]
        return f"{type(self).__name__}({', '.join(parts)})"

    def _repr_html_(self) -> str:
        """A small HTML table of :meth:`headline`, every text escaped (notebooks show it)."""
        from html import escape

        rows = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(_short(v))}</td></tr>"
                       for k, v in self.headline().items())
        title = escape(f"{type(self).__name__}: model={self._model_label()}")
        return f"<table><caption>{title}</caption>{rows}</table>"

    def to_frame(self) -> pd.DataFrame:
        raise NotImplementedError

    def plot(self, **kwargs: Any) -> Any:
        raise NotImplementedError

    def extra_tables(self) -> dict[str, pd.DataFrame]:
        """Further tables written by :meth:`save`, name -> frame."""
        return {}

    def figures(self) -> dict[str, Any]:
        """Figures written by :meth:`save`, file stem -> Figure (default: :meth:`plot`)."""
        return {self.name: self.plot()}

    def save(self, directory: str | Path, formats: Sequence[str] = ("png",),
             dpi: int = 120) -> Path:
        """Write ``summary.json``, ``<name>.csv`` (and further tables) and the figures in each
        of ``formats`` (``png``, ``svg``, ``pdf``; PNG at ``dpi``, e.g. 300 for print) into
        ``directory``, atomically: everything is written to a temporary sibling that
        replaces ``directory`` at the end, so an interrupted save leaves the old output (or
        none), never a half-written one. An existing ``directory`` must be empty or a previous
        output (it holds ``summary.json``): it is replaced as a whole."""
        import matplotlib.pyplot as plt

        formats = check_formats(formats)
        if isinstance(dpi, bool) or not isinstance(dpi, int) or not 10 <= dpi <= 2400:
            raise LaminaError(f"dpi must be an integer in [10, 2400], not {dpi!r}.",
                              cli=f"--dpi must be an integer in [10, 2400], not {dpi!r}.")
        out = check_output_dir(directory, marker="summary.json")
        with atomic_dir(out) as tmp:
            write_csv(self.to_frame(), tmp / f"{self.name}.csv")
            for stem, frame in self.extra_tables().items():
                write_csv(frame, tmp / f"{stem}.csv")
            for stem, fig in self.figures().items():
                for fmt in formats:
                    fig.savefig(tmp / f"{stem}.{fmt}", dpi=dpi, bbox_inches="tight",
                                format=fmt)
                plt.close(fig)
            (tmp / "summary.json").write_text(
                json.dumps(_jsonable({"summary": self.summary, **self.meta}), indent=2))
        return out
