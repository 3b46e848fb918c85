"""Outputs: written atomically (an interrupted save leaves the previous output or none, and no
temporary directory), never over someone's files, and CSV cells that cannot run as formulas."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from lamina.errors import OutputError
from lamina.outputs import atomic_dir, atomic_file
from lamina.results import Result, spreadsheet_safe, write_csv

SRC = Path(__file__).resolve().parents[1] / "src" / "lamina"


@dataclass
class Toy(Result):
    """A result whose figure can fail half-way through a save."""

    tokens: tuple[str, ...] = ("=1+2", "king")
    fail: bool = False
    name = "toy"

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"token": list(self.tokens), "value": [-1.5, 2.25]})

    def figures(self) -> dict:
        if self.fail:
            raise OSError("disk full")
        from matplotlib.figure import Figure

        fig = Figure()
        fig.subplots().plot([0, 1])
        return {"toy": fig}


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_a_failed_save_leaves_the_previous_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    Toy(summary={"run": 1}).save(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"toy.csv", "toy.png", "summary.json"}
    with pytest.raises(OSError, match="disk full"):
        Toy(summary={"run": 2}, tokens=("a", "b"), fail=True).save(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _leftovers(tmp_path) == []


def test_a_failed_first_save_leaves_no_directory(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        Toy(fail=True).save(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_a_save_replaces_the_previous_output_as_a_whole(tmp_path: Path) -> None:
    out = tmp_path / "out"
    Toy(summary={"run": 1}).save(out)
    (out / "stale.csv").write_text("from an older version\n")
    Toy(summary={"run": 2}).save(out)
    assert sorted(p.name for p in out.iterdir()) == ["summary.json", "toy.csv", "toy.png"]
    assert '"run": 2' in (out / "summary.json").read_text()
    assert _leftovers(tmp_path) == []


def test_a_save_never_replaces_a_directory_of_other_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine\n")
    with pytest.raises(OutputError, match="non-empty directory.*summary.json"):
        Toy().save(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert Toy().save(empty) == empty and (empty / "summary.json").exists()


def test_atomic_helpers_clean_up(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), atomic_dir(tmp_path / "d") as tmp:
        (tmp / "x").write_text("half")
        raise KeyboardInterrupt
    with pytest.raises(RuntimeError), atomic_file(tmp_path / "f.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []
    with atomic_file(tmp_path / "f.txt") as tmp:
        tmp.write_text("whole")
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_csv_cells_cannot_run_as_formulas(tmp_path: Path) -> None:
    frame = pd.DataFrame({
        "token": ["=1+2", "+A1", "-x", "@SUM(A1)", "\tcmd", "king", "a=b"],
        "value": [-1.5, 2.0, -0.0, 1e-30, -7.25, 3.0, 0.1],
        "count": [-1, 2, 3, 4, 5, 6, 7],
    })
    write_csv(frame, tmp_path / "t.csv")
    with open(tmp_path / "t.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["token"] for r in rows] == ["'=1+2", "'+A1", "'-x", "'@SUM(A1)", "'\tcmd",
                                          "king", "a=b"]
    back = pd.read_csv(tmp_path / "t.csv")
    assert back["value"].tolist() == frame["value"].tolist()  # numbers exactly as they were
    assert back["count"].tolist() == frame["count"].tolist()
    assert spreadsheet_safe(frame)["token"].iloc[0] == "'=1+2"
    assert frame["token"].iloc[0] == "=1+2"  # the caller's frame is left alone


def test_saved_results_are_spreadsheet_safe(tmp_path: Path) -> None:
    Toy().save(tmp_path / "out")
    text = (tmp_path / "out" / "toy.csv").read_text().splitlines()
    assert text == ["token,value", "'=1+2,-1.5", "king,2.25"]


def test_every_csv_lamina_writes_goes_through_write_csv() -> None:
    offenders = [f"{p.relative_to(SRC)}:{n}" for p in SRC.rglob("*.py")
                 for n, line in enumerate(p.read_text().splitlines(), 1)
                 if re.search(r"\.to_csv\(", line) and p.name != "results.py"]
    assert offenders == [], "write CSV through lamina.results.write_csv"
