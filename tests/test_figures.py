"""The figures, checked on the matplotlib objects of results built from known numbers (no
model runs): axes fitted to narrow data, integer layer/rank ticks, one shared colour scale for
the tornado panels, the word x word matrix, site names in titles, ordinals, and the figure
formats ``save`` and ``--format`` write."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lamina.analyses.alignment import AlignmentResult  # noqa: E402
from lamina.analyses.category_plots import plot_layer  # noqa: E402
from lamina.analyses.contexts import ContextsResult  # noqa: E402
from lamina.analyses.contexts import fitted_range as contexts_range  # noqa: E402
from lamina.analyses.embedding_plots import matrix_heatmap, unused_tokens  # noqa: E402
from lamina.analyses.norms import NormsResult  # noqa: E402
from lamina.analyses.pathlength import PathLengthResult  # noqa: E402
from lamina.cli import app  # noqa: E402
from lamina.errors import LaminaError  # noqa: E402
from lamina.plotting import every_nth, fitted_range, ordinal  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _alignment() -> AlignmentResult:
    rng = np.random.default_rng(0)
    # the narrow spread a new user saw: 0.9450..0.9456
    positions = {p: 0.9450 + 0.0006 * rng.random(50) for p in (0, 9, 19, 39)}
    vocab = 0.2 + 0.1 * rng.random(300)
    return AlignmentResult(vocab, positions, {}, {"W_E": vocab - 0.05}, {"key_position_0": 0.9452},
                           summary={}, meta={"model": "m", "layer": 1, "head": 2,
                                             "query": "bias"})


def test_alignment_small_multiples_fit_the_data() -> None:
    result = _alignment()
    fig = result.plot()
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 1 + len(result.position_cosines)  # one panel each, none overlaid
    everything = np.concatenate(list(result.position_cosines.values()))
    for ax, (p, values) in zip(axes[1:], result.position_cosines.items(), strict=True):
        lo, hi = ax.get_xlim()
        assert f"position {p} (mean {values.mean():.4f})" in ax.get_title()
        assert lo <= everything.min() and hi >= everything.max()  # holds the data ...
        assert hi - lo < 0.01  # ... and is not -1..1: the 0.0006 spread is visible
        assert f"{lo:.4f}" in ax.get_title() and f"{hi:.4f}" in ax.get_title()
        assert len(ax.patches) == 40  # a histogram of this position alone
    lo, hi = axes[0].get_xlim()
    assert lo <= result.key_side["W_E"].min() and hi >= result.vocab_cosines.max()
    assert hi - lo < 0.3


def test_fitted_range_and_ordinals() -> None:
    assert fitted_range([1.0, 3.0], margin=0.1) == pytest.approx((0.8, 3.2))
    lo, hi = fitted_range([0.5, 0.5, np.nan])
    assert lo < 0.5 < hi and hi - lo < 0.01
    words = {1: "1st", 2: "2nd", 3: "3rd", 4: "4th", 11: "11th", 12: "12th", 13: "13th",
             21: "21st", 22: "22nd", 101: "101st", 111: "111th", 112: "112th"}
    assert {n: ordinal(n) for n in words} == words
    assert every_nth(1) == "every token" and every_nth(3) == "every 3rd token"


def _integer_ticks(ax, axis: str = "x") -> None:
    ax.figure.canvas.draw()
    lo, hi = sorted(getattr(ax, f"get_{axis}lim")())
    ticks = [t for t in getattr(ax, f"get_{axis}ticks")() if lo <= t <= hi]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_layer_axes_have_integer_ticks() -> None:
    table = pd.DataFrame({"site": [f"hidden.{i}" for i in range(3)], "kind": "hidden",
                          "layer": [0, 1, 2], "mean_norm": [1.0, 2.0, 3.0],
                          "std_norm": [0.1] * 3, "cv": [0.1] * 3})
    fig = NormsResult(table, summary={}, meta={}).plot()
    for ax in fig.axes:
        _integer_ticks(ax)
    fig = _pathlength().plot()
    _integer_ticks(fig.axes[0])
    fig = matrix_heatmap(np.zeros((4, 3)), np.array([0, 2, 4, 6]))
    _integer_ticks(fig.axes[0], "x")
    _integer_ticks(fig.axes[0], "y")
    fig = unused_tokens(np.array([0, 1, 0, 0, 1], dtype=bool), {"unused_unique_values": 1})
    _integer_ticks(fig.axes[0])
    vectors = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    row = pd.Series({"delta": 0.1, "t": 1.0})
    fig = plot_layer(vectors, np.array(list("aabbb")), "hidden.1", row)
    for ax in fig.axes[:2]:  # the two word x word panels (not the colour bars)
        _integer_ticks(ax, "x")
        _integer_ticks(ax, "y")


def _pathlength() -> PathLengthResult:
    rows = [{"model": "m", "position": p, "token": "t", "layer": layer,
             "step_norm": 1.0 + p, "cumulative": float(layer * (p + 1)), "cos_prev": 0.5}
            for p in range(4) for layer in range(3)]
    targets = pd.DataFrame({"model": "m", "position": range(4), "logit": [1.0, 2, 3, 4],
                            "logprob": -1.0, "loss": 1.0, "used": True})
    per_model = pd.DataFrame([{"model": "m", "pearson_r": 0.5, "spearman_r": 0.4}])
    return PathLengthResult(pd.DataFrame(rows), targets, per_model,
                            summary={"models": ["m"], "n_models": 1, "notes": []},
                            meta={"sites": "resid_post"})


def test_pathlength_titles_name_the_sites() -> None:
    fig = _pathlength().plot()
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert "resid_post" in ax.get_title()


def _contexts() -> ContextsResult:
    words = ["heart", "lord", "love"]
    pairs_ab = [(a, b) for i, a in enumerate(words) for b in words[i:]]
    sites = ["hidden.0", "hidden.1", "hidden.2"]
    edges = np.linspace(0.2, 1.0, 9)
    rng = np.random.default_rng(1)
    hists, pair_rows = {}, []
    for k, site in enumerate(sites):
        hists[site] = rng.integers(0, 20 * (k + 1), size=(len(pairs_ab), 8))
        for i, (a, b) in enumerate(pairs_ab):
            pair_rows.append({"group_a": a, "group_b": b, "within": a == b, "count": 10,
                              "mean": 0.1 * k + 0.01 * i, "var": 0.01, "layer": k,
                              "site": site})
    table = pd.DataFrame({"layer": [0, 1, 2], "site": sites, "delta": 0.1, "t": 2.0})
    counts = pd.DataFrame({"word": words, "sampled": [5, 5, 5]})
    return ContextsResult(table, pd.DataFrame(pair_rows), counts, hists, edges,
                          summary={}, meta={"model": "m"})


def test_contexts_tornado_shares_one_scale_and_has_the_matrix() -> None:
    result = _contexts()
    fig = result.plot()
    images = [im for ax in fig.axes for im in ax.get_images()]
    tornado, matrix = images[:-1], images[-1]
    assert len(tornado) == len(result.groups()) == 1 + 3  # within, then 3 word pairs
    assert len({(im.norm.vmin, im.norm.vmax) for im in tornado}) == 1
    assert len({id(im.norm) for im in tornado}) == 1
    n_colorbars = sum(ax.get_label() == "<colorbar>" for ax in fig.axes)
    assert n_colorbars == 2  # one for all the tornado panels, one for the matrix
    # the matrix: mean cosine per word pair at the middle layer, symmetric
    m = result.word_matrix()
    mid = result.pairs[result.pairs["site"] == "hidden.1"]
    for row in mid.itertuples():
        assert m.loc[row.group_a, row.group_b] == m.loc[row.group_b, row.group_a] == row.mean
    np.testing.assert_array_equal(matrix.get_array(), m.to_numpy())
    assert list(result.word_matrix(2).index) == ["heart", "lord", "love"]
    with pytest.raises(LaminaError, match="layer 7"):
        result.word_matrix(7)


def test_contexts_histogram_range_is_fitted_to_every_layer() -> None:
    gen = torch.Generator().manual_seed(2)
    data = {"hidden.0": torch.randn(6, 5, generator=gen) + 3.0,
            "hidden.1": torch.randn(6, 5, generator=gen) + 2.0}

    class Acts:
        sites = list(data)

        def __getitem__(self, site: str) -> torch.Tensor:
            return data[site][:, None, :]  # [n, 1, d], flattened by the analysis

    values = []
    for x in data.values():
        u = x.double().numpy() / np.linalg.norm(x.double().numpy(), axis=1, keepdims=True)
        values.append((u @ u.T)[np.triu_indices(len(u), 1)])
    lo, hi = np.concatenate(values).min(), np.concatenate(values).max()
    got = contexts_range(Acts(), margin=0.02)
    pad = 0.02 * (hi - lo)
    assert got == pytest.approx((lo - pad, hi + pad), abs=1e-9)
    assert got[1] - got[0] < 1.0  # far narrower than -1..1 for these data


def test_save_writes_svg_and_pdf(tmp_path) -> None:
    result = _pathlength()
    out = result.save(tmp_path / "a", formats=("svg", "pdf", "png"), dpi=300)
    assert ET.parse(out / "pathlength.svg").getroot().tag.endswith("svg")
    assert (out / "pathlength.pdf").read_bytes().startswith(b"%PDF")
    png = (out / "pathlength.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    low = result.save(tmp_path / "b")
    assert {p.suffix for p in low.iterdir() if p.stem == "pathlength"} == {".png", ".csv"}
    assert len((low / "pathlength.png").read_bytes()) < len(png)  # 120 dpi by default
    for bad in (("bmp",), ()):
        with pytest.raises(LaminaError):
            result.save(tmp_path / "c", formats=bad)
    with pytest.raises(LaminaError, match="dpi"):
        result.save(tmp_path / "c", dpi=0)
    assert not (tmp_path / "c").exists()


def test_cli_format_option(tmp_path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["alignment", "--layer", "0", "--head", "0", "--out",
                              str(tmp_path / "o"), "--format", "bmp"])
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "--format" in lines[0]
    assert "--format" in runner.invoke(app, ["norms", "--help"]).output
    assert "--format" not in runner.invoke(app, ["capture", "--help"]).output


def test_variance_axis_is_not_stretched_by_constant_dimensions() -> None:
    from lamina.analyses.category_plots import plot_variance

    rng = np.random.default_rng(0)
    v = rng.standard_normal((20, 8))
    v[:, 0] = 1.0  # no variance at all
    v[:, 1] = 1.0 + 1e-33 * rng.standard_normal(20)  # variance ~1e-66
    fig = plot_variance({"hidden.0": torch.from_numpy(v)})
    ax = fig.axes[0]
    top = v.var(axis=0, ddof=1).max()
    low, high = ax.get_ylim()
    assert low >= top / 1e8 / 2 * 0.999 and high >= top
    assert "2 below" in ax.get_title()
