"""The atlas core (`lamina.report`, `lamina report`): the page, its numbers, its determinism,
its escaping and its atomic save, on tiny models saved to disk (model card and norms)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

import lamina
from badinput import api_fails, cli_fails, cli_ok
from conftest import save_model, tiny
from lamina.atlas import core, findings
from lamina.atlas import save as save_mod
from lamina.atlas.section import ReportInputs, Section, SectionSpec

matplotlib.use("Agg")
SECTIONS = ["modelcard", "norms"]
TEXTS = ["the cat sat on the mat", "hello world, again and again", "a b c d e f g"]
EVIL = '<script>alert("x")</script> & "q" \'s \u202eevil\x07'


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> list[str]:
    dirs = []
    for family in ("gpt2", "bert"):
        model = tiny(family)
        path = tmp_path_factory.mktemp(f"tiny-{family}")
        save_model(model, path)
        dirs.append(str(path))
    return dirs


@pytest.fixture(scope="module")
def saved(model_dirs, tmp_path_factory) -> tuple[core.Report, Path]:
    out = tmp_path_factory.mktemp("atlas") / "report"
    rep = lamina.report(model_dirs, out, texts=TEXTS, sections=SECTIONS, progress=False)
    return rep, out


class Cells(HTMLParser):
    """Per section anchor: the summary numbers (data-key -> data-value) and table columns."""

    def __init__(self) -> None:
        super().__init__()
        self.section: str | None = None
        self.numbers: dict[str, dict[str, str]] = {}
        self.rows: dict[tuple[str, str], list[list[str]]] = {}
        self.table: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "div" and "data-section" in a:
            self.section = a["id"]
        elif tag == "table" and self.section:
            self.table = a.get("data-table")
        elif tag == "tr" and self.table and self.table != "summary":
            self.rows.setdefault((self.section, self.table), []).append([])
        elif tag == "td" and self.section and "data-key" in a:
            self.numbers.setdefault(self.section, {})[a["data-key"]] = a["data-value"] or ""
        elif tag == "td" and self.table and self.table != "summary":
            self.rows[(self.section, self.table)][-1].append(a["data-value"] or "")


def parse(page: str) -> Cells:
    cells = Cells()
    cells.feed(page)
    return cells


def test_report_writes_page_manifest_and_section_folders(saved) -> None:
    rep, out = saved
    assert rep.models == ["GPT2LMHeadModel", "BertModel"] or len(rep.models) == 2
    assert (out / "index.html").is_file() and (out / "manifest.json").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["lamina"] == lamina.__version__ and manifest["seed"] == 0
    assert manifest["inputs"]["n_texts"] == len(TEXTS)
    for entry in manifest["models"]:
        assert entry["fingerprint"].startswith("sha256:") and entry["sites"]
        assert entry["dtype"] == ["float32"]
    folders = save_mod.folders(rep)
    for model, secs in rep.sections.items():
        assert [s.key for s in secs] == SECTIONS and not any(s.skipped for s in secs)
        assert set(manifest["sections"][model]) == set(SECTIONS)
        d = out / folders[model]
        summary = json.loads((d / "norms" / "summary.json").read_text())
        assert summary["summary"]["max_cv"] == secs[1].summary["max_cv"]
        table = pd.read_csv(d / "norms" / "norms.csv")
        assert table["mean_norm"].tolist() == secs[1].tables["norms"]["mean_norm"].tolist()
        card = json.loads((d / "modelcard" / "summary.json").read_text())["summary"]
        assert card["n_layers"] == 3 and card["d_model"] == 32
    assert "Report(models=" in repr(rep) and len(repr(rep)) < 200
    assert rep._repr_html_().startswith("<iframe srcdoc=")


def test_numbers_on_the_page_are_the_summary_numbers(saved) -> None:
    rep, out = saved
    cells = parse((out / "index.html").read_text())
    for i, secs in enumerate(rep.sections.values()):
        norms = secs[1]
        shown = cells.numbers[f"m{i}-norms"]
        for key in ("max_layer_ratio", "max_cv", "peak_mean_norm", "hidden_last_mean_norm"):
            assert float(shown[key]) == pytest.approx(norms.summary[key], rel=1e-11)
        assert shown["prefer_cosine"] == str(norms.summary["prefer_cosine"]).lower()
        rows = cells.rows[(f"m{i}-norms", "norms")][1:]  # the header row has no cells
        col = list(norms.tables["norms"].columns).index("mean_norm")
        assert [float(r[col]) for r in rows] == pytest.approx(
            norms.tables["norms"]["mean_norm"].tolist(), rel=1e-11)
        card = cells.numbers[f"m{i}-modelcard"]
        assert int(card["n_parameters"]) == secs[0].summary["n_parameters"]
        assert int(card["n_layers"]) == 3
    page = (out / "index.html").read_text()
    for _, _, finding in rep.headlines():
        assert finding.replace("'", "&#39;") in page


def test_page_is_self_contained_with_toc_and_overlay(saved) -> None:
    rep, out = saved
    page = (out / "index.html").read_text()
    links = re.findall(r'(?:src|href|action)\s*=\s*"([^"]*)"', page)
    assert links and all(v.startswith(("#", "data:")) for v in links), links
    assert "@import" not in page and not re.search(r"url\(\s*['\"]?(?!#|data:)", page)
    assert not re.search(r"\son[a-z]+\s*=", page)  # no inline event handlers
    for anchor in re.findall(r'href="#([^"]+)"', page):
        assert f'id="{anchor}"' in page, anchor
    assert 'id="comparison"' in page and "mean norm (hidden)" in page  # 2 models: overlays
    assert page.count("<svg") >= 3 and "<script>" in page  # our own script, inline


def test_same_inputs_give_byte_identical_html(saved, model_dirs, tmp_path) -> None:
    rep, out = saved
    again = lamina.report(model_dirs, tmp_path / "again", texts=TEXTS, sections=SECTIONS,
                          progress=False)
    assert again.html() == rep.html()
    assert (tmp_path / "again" / "index.html").read_bytes() == (out / "index.html").read_bytes()


def test_model_name_and_strings_are_escaped(tmp_path) -> None:
    model = tiny("gpt2")
    model.name = EVIL
    rep = lamina.report(model, texts=TEXTS, sections=SECTIONS, progress=False)
    evil_table = pd.DataFrame({"token": [EVIL, "&amp;"], "value": [1.5, 2.5]})
    rep.sections[EVIL].append(Section("fake", EVIL, findings=[EVIL], summary={"word": EVIL},
                                      tables={"tokens": evil_table}))
    rep.sections[EVIL].append(Section("fake2", "Fake", skipped=EVIL))
    page = rep.html()
    assert "<script>alert" not in page and "</script> &" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    assert "&amp;amp;" in page
    assert "\u202e" not in page and "\x07" not in page  # shown as visible escapes
    assert "\\u202eevil\\x07" in page
    assert page.count("<script>") == 1  # ours
    index = rep.save(tmp_path / "out")
    assert "<script>alert" not in index.read_text()
    assert (tmp_path / "out" / "manifest.json").is_file()


def test_interrupted_save_leaves_no_index(saved, tmp_path, monkeypatch) -> None:
    rep, _ = saved

    def broken(frame: pd.DataFrame, path: Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(save_mod, "write_csv", broken)
    with pytest.raises(KeyboardInterrupt):
        rep.save(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


def _spec(key: str, error: BaseException | None, reason: str | None = None) -> SectionSpec:
    def run(model: lamina.Model, inputs: ReportInputs) -> Section:
        if error is not None:
            raise error
        return Section(key, key.title(), findings=[f"{key} ran"])

    return SectionSpec(key, key.title(), lambda m, i: reason, run)


def test_section_errors_skip_or_propagate(monkeypatch) -> None:
    model = tiny("gpt2")
    specs = [_spec("good", None), _spec("bad", lamina.LaminaError("no <good> words here.")),
             _spec("na", None, reason="not for this model.")]
    monkeypatch.setattr(core, "registered", lambda only: specs)
    rep = lamina.report(model, texts=TEXTS, progress=False)
    secs = rep.sections[model.name]
    assert [s.skipped for s in secs] == [None, "no <good> words here.", "not for this model."]
    assert rep.headlines() == [(model.name, "Good", "good ran")]
    page = rep.html()
    assert "Skipped: no &lt;good&gt; words here." in page
    assert rep.manifest["sections"][model.name]["bad"]["skipped"] == "no <good> words here."
    monkeypatch.setattr(core, "registered", lambda only: [_spec("boom", RuntimeError("bug"))])
    with pytest.raises(RuntimeError, match="bug"):
        lamina.report(model, texts=TEXTS, progress=False)


def test_bad_input_is_one_lamina_error(tmp_path) -> None:
    api_fails(lambda: lamina.report("x", sections=["nope"]), "Unknown section", "norms")
    api_fails(lambda: lamina.report([], sections=SECTIONS), "at least one model")
    (tmp_path / "file").write_text("x")
    api_fails(lambda: lamina.report("x", tmp_path / "file"), "is a file")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("x")
    api_fails(lambda: lamina.report("x", tmp_path / "busy"), "non-empty directory")
    cli_fails(["report", "--model", "x", "--section", "nope", "--out", tmp_path / "o"],
              "Unknown --section nope")
    cli_fails(["report", "--model", "x", "--head", "3", "--out", tmp_path / "o"], "LAYER.HEAD")
    cli_fails(["report", "--model", "x", "--out", tmp_path / "file"], "is a file")
    cli_fails(["report", "--model", "x", "--text-file", tmp_path / "none.txt",
               "--out", tmp_path / "o"], "No such text file")


def test_cli_prints_index_and_headlines(model_dirs, tmp_path) -> None:
    out = cli_ok(["report", "--model", model_dirs[0], "--section", "modelcard",
                  "--section", "norms", "--quick", "--no-progress", "--out", tmp_path / "r"])
    assert f"wrote {(tmp_path / 'r' / 'index.html').resolve()}" in out
    assert "Model card: " in out and "Mean norms vary" in out
    assert (tmp_path / "r" / "index.html").is_file()
    page = (tmp_path / "r" / "index.html").read_text()
    assert "quick mode" in page


def test_modelcard_findings() -> None:
    s = {"name": "m", "causal": True, "family": "gpt2", "n_layers": 12, "d_model": 768,
         "n_heads": 12, "d_head": 64, "n_parameters": 124_439_808,
         "embedding_parameters": 38_597_376, "vocab_size": 50257, "max_length": 1024}
    assert findings.modelcard_findings(s) == [
        "m is a causal gpt2 model: 12 layers of width 768 (12 heads of 64), 124M parameters "
        "(31% in the token embedding), a 50,257-token vocabulary and a context of 1,024 tokens."]
    s.update(causal=False, family=None, max_length=None, embedding_parameters=None,
             n_parameters=999)
    assert findings.modelcard_findings(s)[0] == (
        "m is a bidirectional unrecognised-family model: 12 layers of width 768 (12 heads of "
        "64), 999 parameters, a 50,257-token vocabulary and no stated context length.")
    assert findings.count(1_500) == "1.5k" and findings.count(22_713_216) == "22.7M"


def test_norms_findings() -> None:
    s = {"max_layer_ratio": 3.456, "max_cv": 0.25, "prefer_cosine": True,
         "peak_site": "hidden.6", "peak_mean_norm": 12.3456, "hidden_first_mean_norm": 2.0,
         "hidden_last_mean_norm": 8.0}
    assert findings.norms_findings(s) == [
        "Mean norms vary 3.46x across layers and their coefficient of variation reaches 0.25 "
        "within a layer: cosine similarity, not Euclidean distance, is the fair comparison "
        "here.",
        "The largest mean norm, 12.35, is at hidden.6.",
        "Hidden-state norms go from 2 at the embedding output to 8 after the last layer "
        "(4.00x)."]
    s = {"max_layer_ratio": 1.05, "max_cv": 0.02, "prefer_cosine": False}
    assert findings.norms_findings(s) == [
        "Mean norms vary 1.05x across layers and their coefficient of variation reaches 0.02 "
        "within a layer: norms are nearly constant, so cosine and Euclidean distance rank "
        "pairs alike."]


def test_figures_render_deterministic_svg_or_png() -> None:
    from lamina.atlas.figures import overlay_figure, render

    frames = {"a": pd.DataFrame({"x": [0, 0.5, 1], "y": [1, 2, 3]}),
              "b": pd.DataFrame({"x": [0, 1, 0, 1], "y": [1, 2, 2, 1],
                                 "label": ["u", "u", "v", "v"]})}
    fig = overlay_figure(frames, "<b>norm</b>")
    first, second = render(fig, "s1"), render(fig, "s1")
    assert first.kind == "svg" and first.data == second.data and first.data.startswith("<svg")
    assert "Date" not in first.data and "<b>" not in first.data and "<!--" not in first.data
    assert render(fig, "s2").data != first.data  # ids depend on the salt
    png = render(fig, "s1", svg_limit=10)
    assert png.kind == "png" and png.data.startswith("data:image/png;base64,")
    assert len(fig.axes[0].lines) == 3  # one line per model and label


def test_large_page_warns(monkeypatch) -> None:
    monkeypatch.setattr(core, "WARN_BYTES", 100)
    with pytest.warns(UserWarning, match="MB"):
        rep = lamina.report(tiny("gpt2"), texts=TEXTS, sections="modelcard", progress=False)
    assert [s.key for s in rep.sections["GPT2LMHeadModel"]] == ["modelcard"]


def test_import_lamina_stays_light_and_report_is_the_function() -> None:
    import subprocess
    import sys

    code = ("import sys, lamina; assert 'lamina.atlas' not in sys.modules; "
            "import lamina.atlas.core, lamina.atlas.html; assert callable(lamina.report); "
            "assert lamina.report.__module__ == 'lamina'")
    subprocess.run([sys.executable, "-c", code], check=True)
