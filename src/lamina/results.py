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
        """Write ``summary.json``, ``<name>.csv`` (and further tables) and the figures as PNG.
        ``summary.json`` is written last, so its presence marks a complete output."""
        import matplotlib.pyplot as plt

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").unlink(missing_ok=True)
        self.to_frame().to_csv(out / f"{self.name}.csv", index=False)
        for stem, frame in self.extra_tables().items():
            frame.to_csv(out / f"{stem}.csv", index=False)
        for stem, fig in self.figures().items():
            fig.savefig(out / f"{stem}.png", dpi=120, bbox_inches="tight")
            plt.close(fig)
        tmp = out / "summary.json.tmp"
        summary = self.summary
        if isinstance(summary, pd.DataFrame):
            summary = summary.to_dict(orient="records")
        tmp.write_text(json.dumps(_jsonable({"summary": summary, **self.meta}), indent=2))
        tmp.replace(out / "summary.json")
        return out
