"""The command line speaks one language (issue 15, item 4): one option name per meaning
(``--lines`` one input per line, ``--text-file`` running text, ``--text`` one inline text),
old spellings kept as hidden aliases with a one-line note; ``similar`` takes site globs and the
store's model; console tables print the headline numbers in full."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest

import lamina
from badinput import cli_fails
from lamina import store as lstore
from lamina.analyses import categories, contexts, pathlength, similar_strings
from lamina.cli import main
from lamina.corpus import tinyshakespeare

LINES = ["the king is dead", "long live the king", "my lord the queen", "a horse, a horse",
         "to be or not to be", "the lord of the manor", "now is the winter", "the queen is here"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    (root / "lines.txt").write_text("\n".join(LINES) + "\n")
    (root / "play.txt").write_text(tinyshakespeare()[:40000])
    return {"lines": root / "lines.txt", "play": root / "play.txt"}


def run(args: list) -> tuple[str, str]:
    """``lamina ARGS`` in this process: (stdout, stderr), asserting exit code 0."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    assert code == 0, f"exit {code}\n{out.getvalue()}\n{err.getvalue()}"
    return out.getvalue(), err.getvalue()


def g4(value: float) -> str:
    return f"{value:.4g}"


def table(text: str, first: str) -> list[dict[str, str]]:
    """The rows of the printed table whose header starts with ``first`` (whitespace-split)."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.split()[:1] == [first])
    header = lines[start].split()
    rows = []
    for line in lines[start + 1:]:
        cells = line.split()
        if len(cells) != len(header):
            break
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


# -- one name per meaning; old spellings still work, with a note --------------------------------

@pytest.mark.parametrize("command,new,old", [
    (["norms"], "--lines", "--texts"),
    (["contexts", "--target", "good", "--target", "people", "--max-per-target", "6",
      "--window", "10"],
     "--text-file", "--corpus"),
])
def test_old_and_new_names_give_identical_results(gpt2_dir, files, tmp_path, command, new,
                                                  old) -> None:
    source = files["play"] if new == "--text-file" else files["lines"]
    base = [*command, "--model", gpt2_dir]
    dirs = [tmp_path / "by-new-name", tmp_path / "by-old-name"]
    new_out, new_err = run([*base, new, source, "--out", dirs[0]])
    old_out, old_err = run([*base, old, source, "--out", dirs[1]])
    assert new_out.replace(str(dirs[0]), str(dirs[1])) == old_out
    summary = [json.loads((d / "summary.json").read_text()) for d in dirs]
    assert summary[0] == summary[1]
    assert f"note: {old} is deprecated; use {new}." in old_err.splitlines()
    assert "deprecated" not in new_err
    cli_fails([*base, new, source, old, source], new, old, "not both")


def test_collect_and_capture_old_names(gpt2_dir, files, tmp_path) -> None:
    sites = ["--site", "hidden.1"]
    run(["collect", "--model", gpt2_dir, "--lines", files["lines"], *sites, "--out",
         tmp_path / "a"])
    _, err = run(["collect", "--model", gpt2_dir, "--corpus", files["lines"], *sites, "--out",
                  tmp_path / "b"])
    assert "note: --corpus is deprecated; use --lines." in err
    a, b = lstore.open(tmp_path / "a"), lstore.open(tmp_path / "b")
    assert a.strings == b.strings == LINES
    assert (a["hidden.1"][:] == b["hidden.1"][:]).all()
    _, err = run(["capture", "--model", gpt2_dir, "--texts", files["lines"], *sites, "--out",
                  tmp_path / "c.safetensors"])
    assert "note: --texts is deprecated; use --lines." in err
    cli_fails(["capture", "--model", gpt2_dir, "--out", tmp_path / "d.safetensors"],
              "Missing option '--lines'")


def test_help_shows_only_the_new_names() -> None:
    for command, shown, hidden in [("norms", "--lines", "--texts"),
                                   ("collect", "--lines", "--corpus"),
                                   ("contexts", "--text-file", "--corpus"),
                                   ("train", "--text-file", "--corpus"),
                                   ("report", "--text-file", "--corpus")]:
        out, _ = run([command, "--help"])
        assert shown in out and hidden not in out, (command, out)


# -- similar: site globs, model from the store's manifest ------------------------------------

@pytest.fixture(scope="module")
def small_store(gpt2_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("store") / "st"
    lstore.collect(gpt2_dir, LINES, ["hidden.1", "hidden.2", "hidden.3"], out, progress=False)
    return out


def test_similar_with_glob_and_without_model(gpt2_dir, small_store) -> None:
    out, _ = run(["similar", "--store", small_store, "--query", "the king", "--site",
                  "hidden.[12]", "--k", "3"])
    expected = similar_strings(lamina.load(gpt2_dir), lstore.open(small_store), ["the king"],
                               site=["hidden.1", "hidden.2"], k=3).to_frame()
    lines = out.splitlines()
    body = lines[[ln.split()[:1] for ln in lines].index(["query"]) + 1:]
    assert len(body) == len(expected) == 6
    for line, (_, want) in zip(body, expected.iterrows(), strict=True):
        cells = line.split()
        assert cells[2:4] == [want["site"], str(want["rank"])], line
        assert want["string"] in line and g4(want["similarity"]) in cells, (line, want)
    assert "hidden.3" not in out


def test_similar_bad_glob_and_unloadable_model(small_store, tmp_path) -> None:
    cli_fails(["similar", "--store", small_store, "--query", "a", "--site", "mlp_out.*"],
              "matches no stored site", "hidden.1, hidden.2, hidden.3")
    moved = tmp_path / "moved"
    shutil.copytree(small_store, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["model"] = str(tmp_path / "gone")
    (moved / "manifest.json").write_text(json.dumps(manifest))
    cli_fails(["similar", "--store", moved, "--query", "a", "--site", "hidden.1"],
              "collected from", "gone", "cannot be loaded", "give --model")


# -- console output: headline numbers in full --------------------------------------------------

def _check_console(out: str) -> None:
    assert "..." not in out
    assert max(len(line) for line in out.splitlines()) <= 100, out


def test_categories_console_prints_headline_numbers(gpt2_dir) -> None:
    out, _ = run(["categories", "--model", gpt2_dir, "--permutations", "50"])
    _check_console(out)
    frame = categories(gpt2_dir, permutations=50).to_frame()
    rows = table(out, "site")
    assert [r["site"] for r in rows] == list(frame["site"])
    for row, (_, want) in zip(rows, frame.iterrows(), strict=True):
        for printed, column in [("within", "within_mean"), ("across", "across_mean"),
                                ("delta", "delta"), ("t", "t"), ("d", "cohens_d"),
                                ("p_permutation", "p_permutation")]:
            assert row[printed] == g4(want[column]), (printed, row, want)


def test_contexts_console_prints_headline_numbers(gpt2_dir, files) -> None:
    args = ["--target", "good", "--target", "people", "--max-per-target", "8", "--window", "10"]
    out, _ = run(["contexts", "--model", gpt2_dir, "--text-file", files["play"], *args])
    _check_console(out)
    frame = contexts(gpt2_dir, files["play"], ["good", "people"], max_per_target=8,
                     window=10).to_frame()
    rows = table(out, "site")
    assert len(rows) == len(frame) == 4
    for row, (_, want) in zip(rows, frame.iterrows(), strict=True):
        assert (row["delta"], row["t"]) == (g4(want["delta"]), g4(want["t"]))
    assert "p_permutation" not in out


def test_pathlength_console_prints_headline_numbers(gpt2_dir) -> None:
    text = "the king is dead, long live the king, my lord"
    out, _ = run(["pathlength", "--model", gpt2_dir, "--text", text])
    _check_console(out)
    want = pathlength({gpt2_dir: gpt2_dir}, text).per_model.iloc[0]
    row = table(out, "model")[0]
    for printed, column in [("pearson_r", "pearson_r"), ("p", "pearson_p"),
                            ("spearman_r", "spearman_r"), ("ci_low", "pearson_ci_low"),
                            ("ci_high", "pearson_ci_high"), ("mean_loss", "mean_loss")]:
        assert row[printed] == g4(want[column]), (printed, row)
    assert row["n"] == str(want["n_pairs"])
    assert re.search(r"…\S+$", row["model"]) or row["model"] == gpt2_dir


def test_print_frame_never_elides_and_clips_long_strings(capsys) -> None:
    import pandas as pd

    from lamina.cli_format import print_frame

    frame = pd.DataFrame({f"column_{i}": [1 / 3, 2e-7, 12345.678] for i in range(30)})
    frame["name"] = ["short", "x" * 50, "/a/very/long/path/to/a/model/directory/tiny-gpt2"]
    frame = pd.concat([frame] * 100, ignore_index=True)  # 300 rows, 31 columns
    print_frame(frame, width=20)
    lines = capsys.readouterr().out.splitlines()
    assert "..." not in "\n".join(lines) and len(lines) == 301
    assert [lines[i].split()[0] for i in (1, 2, 3)] == ["0.3333", "2e-07", "1.235e+04"]
    assert lines[3].split()[-1] == "…" + "/a/very/long/path/to/a/model/directory/tiny-gpt2"[-19:]
    assert lines[2].split()[-1] == "…" + "x" * 19
