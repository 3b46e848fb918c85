"""Results print as one short line and show as a small escaped HTML table in notebooks."""

from __future__ import annotations

from dataclasses import dataclass
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from conftest import TEXTS, tiny
from lamina.analyses import norms
from lamina.errors import LaminaError
from lamina.results import Result


@dataclass
class _Toy(Result):
    table: pd.DataFrame
    name = "toy"

    def to_frame(self) -> pd.DataFrame:
        return self.table


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cells: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append(tag)

    def handle_data(self, data) -> None:
        self.cells.append(data)


def test_norms_repr_is_one_line_with_the_headline_numbers() -> None:
    model = tiny("gpt2")
    result = norms(model, TEXTS)
    text = repr(result)
    assert "\n" not in text and len(text) < 160
    ratio = result.table.groupby("kind")["mean_norm"].agg(lambda m: m.max() / m.min()).max()
    assert text == (f"NormsResult(model={model.name!r}, {len(result.table)} rows, "
                    f"{result.summary['conclusion_short']}, max_layer_ratio={ratio:.4g}, "
                    f"max_cv={result.table['cv'].max():.4g})")


def test_repr_html_table_of_scalars_escaped() -> None:
    toy = _Toy(pd.DataFrame({"a": [1, 2, 3]}),
               summary={"delta": np.float64(0.0123456), "n": np.int64(7), "ok": True,
                        "label": "<script>alert('x')</script> & \u202e", "nested": {"x": 1},
                        "long": "x" * 100},
               meta={"model": "m<b>"})
    assert repr(toy) == "_Toy(model='m<b>', 3 rows, delta=0.01235, n=7)"
    html = toy._repr_html_()
    assert "<script>" not in html and "<b>" not in html
    parser = _Cells()
    parser.feed(html)
    assert set(parser.tags) == {"table", "caption", "tr", "th", "td"}
    text = "".join(parser.cells)  # the parser unescapes: the original text comes back
    assert "<script>alert('x')</script> & \u202e" in text and "m<b>" in text
    assert ["delta", "0.01235", "n", "7", "ok", "True"] == parser.cells[1:7]
    assert "nested" not in text and "x" * 100 not in text


def test_subclass_can_override_and_summary_is_a_dict() -> None:
    @dataclass
    class _Own(_Toy):
        def __repr__(self) -> str:
            return "own"

    @dataclass
    class _Child(_Own):
        pass

    frame = pd.DataFrame({"a": [1]})
    assert repr(_Own(frame)) == "own" and repr(_Child(frame)) == "own"
    # a summary is always a dict: a table of one row per model is a frame of the result
    with pytest.raises(LaminaError, match="summary must be a dict"):
        _Toy(frame, summary=pd.DataFrame({"model": ["a", "b"]}),
             meta={"models": {"a": {}, "b": {}}})
    multi = _Toy(frame, summary={"models": ["a", "b"]}, meta={"models": {"a": {}, "b": {}}})
    assert repr(multi) == "_Toy(model=['a', 'b'], 1 rows)"
    assert multi._repr_html_().count("<tr>") == 0


def test_import_lamina_then_subpackages_lazily() -> None:
    """``import lamina`` then ``lamina.store`` works, and loads nothing until first use."""
    import subprocess
    import sys

    code = (
        "import sys, lamina\n"
        "lazy = ['lamina.store', 'lamina.analyses', 'lamina.similarity']\n"
        "assert not [m for m in lazy if m in sys.modules], sys.modules.keys()\n"
        "assert callable(lamina.store.open) and callable(lamina.analyses.norms)\n"
        "assert lamina.similarity.__name__ == 'lamina.similarity'\n"
        "assert callable(lamina.report) and 'store' in dir(lamina)\n"
        "try:\n    lamina.nope\nexcept AttributeError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "module 'lamina' has no attribute 'nope'"
