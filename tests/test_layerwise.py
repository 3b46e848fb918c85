"""The layer-wise toolkit (:mod:`lamina.analyses.layerwise`): the within/across table against
numpy/scipy, each model loaded once (loads counted), relative depth and depth matching on
awkward depth pairs, and the rule that a result's ``summary`` is a dict."""

from __future__ import annotations

import importlib
import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

import lamina
from conftest import save_model, tiny
from lamina.analyses import pathlength
from lamina.analyses.layerwise import (
    COLUMNS,
    load_models,
    matching_layer,
    relative_depth,
    within_across,
)
from lamina.errors import LaminaError
from lamina.results import Result

# ---------------------------------------------------------------- within / across, by hand


def _pair_cosines(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosines of the unique pairs (i < j), split into within- and across-label pairs."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    i, j = np.triu_indices(len(x), k=1)
    cos = np.einsum("pd,pd->p", u[i], u[j])
    same = labels[i] == labels[j]
    return cos[same], cos[~same]


def test_within_across_matches_numpy_and_scipy() -> None:
    rng = np.random.default_rng(0)
    labels = np.array(list("aaaabbbbbccc"))
    vectors = {f"hidden.{L}": torch.from_numpy(rng.normal(size=(12, 6)) + L * 0.3)
               for L in range(3)}
    base = {"hidden.0": 0.25, "hidden.2": -0.5}
    wa = within_across(vectors, labels, baseline=base, permutations=50, seed=3, bins=10,
                       range=(-1.0, 1.0))
    assert tuple(wa.table.columns) == COLUMNS
    assert list(wa.table["site"]) == list(vectors) and list(wa.table["layer"]) == [0, 1, 2]
    for row in wa.table.itertuples():
        x = vectors[row.site].numpy()
        within, across = _pair_cosines(x, labels)
        assert row.within_mean == pytest.approx(within.mean(), abs=1e-12)
        assert row.across_mean == pytest.approx(across.mean(), abs=1e-12)
        assert row.delta == pytest.approx(within.mean() - across.mean(), abs=1e-12)
        student = stats.ttest_ind(within, across)
        welch = stats.ttest_ind(within, across, equal_var=False)
        assert row.t == pytest.approx(student.statistic, rel=1e-9)
        assert row.p_t == pytest.approx(student.pvalue, rel=1e-6)
        assert row.t_welch == pytest.approx(welch.statistic, rel=1e-9)
        assert row.p_welch == pytest.approx(welch.pvalue, rel=1e-6)
        n1, n2 = len(within), len(across)
        pooled = np.sqrt(((n1 - 1) * within.var(ddof=1) + (n2 - 1) * across.var(ddof=1))
                         / (n1 + n2 - 2))
        assert row.cohens_d == pytest.approx((within.mean() - across.mean()) / pooled, rel=1e-9)
        assert 1 / 51 <= row.p_permutation <= 1
        cw, ca = _pair_cosines(x - x.mean(0), labels)
        assert row.centred_delta == pytest.approx(cw.mean() - ca.mean(), abs=1e-12)
        assert row.centred_t == pytest.approx(stats.ttest_ind(cw, ca).statistic, rel=1e-9)
        expected_base = base.get(row.site, np.nan)
        assert row.baseline_mean == expected_base or (
            np.isnan(row.baseline_mean) and np.isnan(expected_base))
        # the per-pair table and the histograms (bins given): every pair counted once
        pairs = wa.pairs[wa.pairs["site"] == row.site]
        assert int(pairs["count"].sum()) == n1 + n2 and set(pairs["layer"]) == {row.layer}
        hist = wa.histograms[row.site]
        assert hist.shape == (len(pairs), 10)
        np.testing.assert_array_equal(
            hist[pairs["within"].to_numpy()].sum(0), np.histogram(within, bins=wa.edges)[0])
    np.testing.assert_allclose(wa.edges, np.linspace(-1, 1, 11))


def test_within_across_without_bins_has_no_histograms_and_states_undefined_t() -> None:
    # each group's two vectors are parallel: within cosines are all 1, t has no variance
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]], dtype=torch.float64)
    notes: list[str] = ["earlier note"]
    wa = within_across({"hidden.1": x}, np.array(list("aabb")), notes=notes)
    assert wa.histograms == {} and wa.edges is None
    assert wa.notes is notes and notes[0] == "earlier note" and len(notes) > 1
    row = wa.table.iloc[0]
    assert row["within_mean"] == pytest.approx(1.0) and row["across_mean"] == pytest.approx(0.0)
    assert np.isnan(row["baseline_mean"]) and np.isnan(row["p_permutation"])
    with pytest.raises(LaminaError, match="No sites"):
        within_across({}, np.array(list("aabb")))


# ---------------------------------------------------------------- each model loaded once


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("layerwise")
    return {name: save_model(tiny(name), root / name) for name in ("gpt2", "llama")}


@pytest.fixture
def loads(monkeypatch) -> list[Any]:
    """Every call of :func:`lamina.models.load` (the analyses' loader) and of the disk reads
    under it (``from_pretrained``), in order."""
    module = importlib.import_module("lamina.models")
    calls: list[Any] = []
    load, read = module.load, module.from_pretrained

    def counting_load(spec: Any, **kwargs: Any) -> lamina.Model:
        calls.append(("load", spec))
        return load(spec, **kwargs)

    def counting_read(name: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(("read", name))
        return read(name, *args, **kwargs)

    monkeypatch.setattr(module, "load", counting_load)
    monkeypatch.setattr(module, "from_pretrained", counting_read)
    return calls


def test_pathlength_reads_each_model_once(loads: list[Any], dirs: dict[str, str]) -> None:
    g, ll = dirs["gpt2"], dirs["llama"]
    result = pathlength({"a": g, "b": ll, "a again": g}, "the cat sat on the mat")
    assert loads == [("load", g), ("read", g), ("load", ll), ("read", ll)]
    assert result.summary["models"] == ["a", "b", "a again"]
    rows = result.per_model.set_index("model")
    # the same model under two names: the same numbers
    np.testing.assert_allclose(rows.loc["a", ["n_tokens", "pearson_r", "spearman_r"]].astype(float),
                               rows.loc["a again", ["n_tokens", "pearson_r", "spearman_r"]]
                               .astype(float), rtol=1e-12)
    loads.clear()
    model = lamina.load(g)
    loads.clear()
    pathlength(model, "the cat sat")  # an already loaded model is used as it is
    assert loads == []


def test_load_models_names_and_refusals(loads: list[Any], dirs: dict[str, str]) -> None:
    g = dirs["gpt2"]
    out = load_models([g, g])
    assert list(out) == [g, f"{g} (2)"] and out[g] is out[f"{g} (2)"]
    assert [c for c in loads if c[0] == "read"] == [("read", g)]
    model = out[g]
    assert load_models(model) == {model.name: model}
    assert load_models({"x": model, "y": model}) == {"x": model, "y": model}
    with pytest.raises(LaminaError, match="No models"):
        load_models({})
    with pytest.raises(LaminaError, match="No models"):
        load_models([])


def test_report_loads_a_repeated_model_once(loads: list[Any], dirs: dict[str, str]) -> None:
    from lamina.atlas.core import _models

    g = dirs["gpt2"]
    out = _models([g, g])
    assert list(out) == [g, f"{g} (2)"]
    assert [c for c in loads if c[0] == "read"] == [("read", g)]


# ---------------------------------------------------------------- relative depth


def test_relative_depth_numbers_and_arrays() -> None:
    assert relative_depth(0, 12) == 0.0 and relative_depth(12, 12) == 1.0
    assert relative_depth(3, 12) == pytest.approx(0.25)
    assert relative_depth(2.5, 4) == pytest.approx(0.625)  # after block 2's attention
    assert relative_depth(0, 0) == 0.0  # embeddings only: counts as one layer
    np.testing.assert_allclose(relative_depth(np.arange(7), 6), np.arange(7) / 6)
    np.testing.assert_allclose(relative_depth(pd.Series([-1, 4]).to_numpy(), 4), [-0.25, 1.0])
    for bad in (-1, 2.0, True, "6", None):
        with pytest.raises(LaminaError, match="n_layers must be an integer"):
            relative_depth(1, bad)
    with pytest.raises(LaminaError, match="layer must be a number"):
        relative_depth(np.array(["a"]), 4)


@pytest.mark.parametrize(("n_a", "n_b", "expected"), [
    (1, 12, [0, 12]),
    (12, 1, [0] * 7 + [1] * 6),  # layer 6 of 12 is half way: the tie goes to the shallower
    (6, 4, [0, 1, 1, 2, 3, 3, 4]),
    (4, 6, [0, 1, 3, 4, 6]),  # 1/4 and 3/4 lie half way between sixths: shallower
    (5, 5, [0, 1, 2, 3, 4, 5]),
])
def test_matching_layer_on_awkward_depth_pairs(n_a: int, n_b: int, expected: list[int]) -> None:
    got = [matching_layer(L, n_a, n_b) for L in range(n_a + 1)]
    assert got == expected
    for L, j in enumerate(got):  # nearest on the depth scale, by brute force over floats
        gaps = np.abs(np.arange(n_b + 1) / n_b - L / n_a)
        assert gaps[j] <= gaps.min() + 1e-12
        assert relative_depth(j, n_b) == pytest.approx(j / n_b)


def test_matching_layer_refuses_bad_input() -> None:
    with pytest.raises(LaminaError, match=r"layer must be an integer in \[0, 6\]"):
        matching_layer(7, 6, 4)
    for bad in (-1, 1.0, True):
        with pytest.raises(LaminaError, match="layer must be an integer"):
            matching_layer(bad, 6, 4)
    with pytest.raises(LaminaError, match="n_layers_other must be an integer of at least 1"):
        matching_layer(0, 6, 0)
    with pytest.raises(LaminaError, match="n_layers must be an integer of at least 1"):
        matching_layer(0, 0, 4)


# ---------------------------------------------------------------- summary is a dict


def test_result_summary_must_be_a_dict(dirs: dict[str, str], tmp_path) -> None:
    with pytest.raises(LaminaError, match="summary must be a dict"):
        Result(summary=pd.DataFrame({"a": [1]}))
    result = pathlength({"a": dirs["gpt2"], "b": dirs["llama"]}, "the cat sat on the mat")
    assert isinstance(result.summary, dict) and result.summary["n_models"] == 2
    saved = result.save(tmp_path / "pl")
    data = json.loads((saved / "summary.json").read_text())
    assert isinstance(data["summary"], dict) and data["summary"]["models"] == ["a", "b"]
    back = pd.read_csv(saved / "pathlength_summary.csv", keep_default_na=False,
                       na_values=[""])
    assert list(back["model"]) == ["a", "b"]
    np.testing.assert_allclose(back["pearson_r"], result.per_model["pearson_r"], rtol=1e-12)
