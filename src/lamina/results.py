"""The common shape of analysis results: a small dataclass with ``to_frame()``, ``plot()``
and ``save(dir)``. ``summary`` holds the headline numbers (a dict, or a frame with one row per
model), ``meta`` the model, the options and the library versions; both go to ``summary.json``."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

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


@dataclass
class Result:
    """Base of every analysis result. Subclasses implement :meth:`to_frame` and :meth:`plot`
    (returning a matplotlib Figure) and fill ``summary`` and ``meta``."""

    summary: Any = field(default_factory=dict, kw_only=True)
    meta: dict[str, Any] = field(default_factory=dict, kw_only=True)

    name = "result"

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

    def save(self, directory: str | Path) -> Path:
        """Write ``summary.json``, ``<name>.csv`` (and further tables) and the figures as PNG
        into ``directory``, atomically: everything is written to a temporary sibling that
        replaces ``directory`` at the end, so an interrupted save leaves the old output (or
        none), never a half-written one. An existing ``directory`` must be empty or a previous
        output (it holds ``summary.json``): it is replaced as a whole."""
        import matplotlib.pyplot as plt

        out = check_output_dir(directory, marker="summary.json")
        summary = self.summary
        if isinstance(summary, pd.DataFrame):
            summary = summary.to_dict(orient="records")
        with atomic_dir(out) as tmp:
            write_csv(self.to_frame(), tmp / f"{self.name}.csv")
            for stem, frame in self.extra_tables().items():
                write_csv(frame, tmp / f"{stem}.csv")
            for stem, fig in self.figures().items():
                fig.savefig(tmp / f"{stem}.png", dpi=120, bbox_inches="tight")
                plt.close(fig)
            (tmp / "summary.json").write_text(
                json.dumps(_jsonable({"summary": summary, **self.meta}), indent=2))
        return out
