"""group_stats() and duplicate_groups() against the explicit pair lists."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import lamina.similarity as sim
from lamina.errors import LaminaError
from sim_brute import full, upper


@pytest.fixture(scope="module")
def grouped() -> tuple[np.ndarray, np.ndarray]:
    """Three groups around different centres (so within > across), one zero row."""
    rng = np.random.default_rng(0)
    labels = np.array(["b", "a", "c"] * 100 + ["a"] * 20)
    centres = {k: rng.standard_normal(16) for k in "abc"}
    x = np.stack([centres[k] + 1.5 * rng.standard_normal(16) for k in labels])
    x[5] = 0.0
    return x.astype(np.float32), labels


def explicit(x, labels, metric):
    """Pair values per unordered group pair, and the within / across lists."""
    i, j, v = upper(full(x, metric))
    a, b = labels[i], labels[j]
    lo, hi = np.where(a <= b, a, b), np.where(a <= b, b, a)
    per = {(p, q): v[(lo == p) & (hi == q)] for p, q in set(zip(lo, hi, strict=True))}
    return per, v[a == b], v[a != b]


@pytest.mark.parametrize("metric,method", [("cosine", "gram"), ("correlation", "gram"),
                                           ("dot", "gram"), ("cosine", "stream"),
                                           ("euclidean", "auto")])
def test_per_group_pair_statistics_equal_the_pairwise_definitions(grouped, metric, method):
    x, labels = grouped
    res = sim.group_stats(x, labels, metric=metric, method=method)
    per, within, across = explicit(x, labels, metric)
    table = res.to_frame()
    assert len(table) == 6  # aa, ab, ac, bb, bc, cc
    for row in table.itertuples():
        vals = per[(row.group_a, row.group_b)]
        assert row.within == (row.group_a == row.group_b)
        assert row.count == len(vals)
        assert row.mean == pytest.approx(vals.mean(), rel=1e-6, abs=1e-9)
        assert row.var == pytest.approx(vals.var(ddof=1), rel=1e-6, abs=1e-9)
    s = res.summary
    assert s["method"] == ("stream" if metric == "euclidean" else method)
    assert s["within_count"] == len(within) and s["across_count"] == len(across)
    assert s["delta"] == pytest.approx(within.mean() - across.mean(), rel=1e-6, abs=1e-9)
    student = stats.ttest_ind(within, across, equal_var=True)
    welch = stats.ttest_ind(within, across, equal_var=False)
    assert res.t == pytest.approx(student.statistic, rel=1e-6)
    assert res.p_t == pytest.approx(student.pvalue, rel=1e-5, abs=1e-300)
    assert res.t_welch == pytest.approx(welch.statistic, rel=1e-6)
    assert res.p_welch == pytest.approx(welch.pvalue, rel=1e-5, abs=1e-300)
    pooled = np.sqrt(((len(within) - 1) * within.var(ddof=1)
                      + (len(across) - 1) * across.var(ddof=1)) / (len(within) + len(across) - 2))
    assert res.cohens_d == pytest.approx((within.mean() - across.mean()) / pooled, rel=1e-6)
    if metric != "euclidean":
        assert res.delta > 0  # rows share a centre with their own group
    if metric in ("cosine", "correlation"):
        assert s["n_zero"] == 1


def test_permutation_p_value_replicates_brute_force_label_shuffles(grouped):
    x, labels = grouped
    res = sim.group_stats(x, labels, permutations=30, seed=7)
    # the documented scheme: usable rows in ascending order, codes[rng.permutation(n)]
    keep = np.flatnonzero(np.linalg.norm(x, axis=1) > 0)
    names, codes = np.unique(labels[keep], return_inverse=True)
    i, j, v = upper(full(x[keep], "cosine"))
    rng = np.random.default_rng(7)

    def delta(c):
        same = c[i] == c[j]
        return v[same].mean() - v[~same].mean()

    observed = delta(codes)
    deltas = np.array([delta(codes[rng.permutation(len(keep))]) for _ in range(30)])
    np.testing.assert_allclose(res.permutation_deltas, deltas, rtol=1e-9, atol=1e-12)
    assert res.p_permutation == (1 + np.sum(deltas >= observed - 1e-12)) / 31
    assert res.p_permutation == pytest.approx(1 / 31)  # strong grouping: no shuffle reaches it
    # stream route, same permutations: same p-value
    streamed = sim.group_stats(x, labels, permutations=30, seed=7, method="stream")
    np.testing.assert_allclose(streamed.permutation_deltas, deltas, rtol=1e-9, atol=1e-12)


def test_random_labels_give_a_large_permutation_p_value():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 8))
    res = sim.group_stats(x, rng.integers(0, 3, 200), permutations=99, seed=0)
    assert res.p_permutation > 0.05
    assert abs(res.delta) < 0.05


def test_per_group_pair_histograms_equal_numpy_per_pair(grouped):
    x, labels = grouped
    res = sim.group_stats(x, labels, bins=12, range=(-1, 1), dtype="float32")
    m = sim.matrix(x)  # same kernel and precision as the streamed histograms
    m[5, :] = m[:, 5] = np.nan
    i, j, v = upper(m)
    a, b = labels[i], labels[j]
    for row, hist in zip(res.to_frame().itertuples(), res.histograms, strict=True):
        pick = ((a == row.group_a) & (b == row.group_b)) | ((a == row.group_b) & (b == row.group_a))
        np.testing.assert_array_equal(hist, np.histogram(v[pick], bins=12, range=(-1, 1))[0])
        assert hist.sum() == row.count
    assert res.edges.shape == (13,)


def test_integer_labels_singleton_groups_and_label_errors():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 4))
    labels = np.r_[np.zeros(49, int), 1]  # group 1 has one row: no within pairs
    with pytest.warns(sim.UndefinedStatisticWarning, match=r"single usable row \(1\)"):
        res = sim.group_stats(x, labels)
    assert len(res.notes) == 1 and "within rows of the table have no pairs" in res.notes[0]
    one = res.to_frame().query("group_a == 1 and group_b == 1")
    assert one["count"].item() == 0 and np.isnan(one["mean"].item())
    assert res.summary["within_count"] == 49 * 48 // 2
    with pytest.raises(LaminaError, match="one label per row"):
        sim.group_stats(x, labels[:-1])
    with pytest.raises(LaminaError, match="missing"):
        sim.group_stats(x, np.r_[np.zeros(49), np.nan])


def test_duplicate_groups_are_the_connected_components_of_near_identical_rows():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((400, 32))
    x[[10, 50, 300]] = x[7]  # one group of four
    x[200] = 3 * x[100]  # same direction: cosine 1
    x[201] = x[100] + 1e-7  # near-identical
    dups = sim.duplicate_groups(x, threshold=0.9999)
    assert [g.tolist() for g in dups.groups] == [[7, 10, 50, 300], [100, 200, 201]]
    assert dups.labels(400)[[7, 300, 100, 0]].tolist() == [0, 0, 1, -1]
    assert len(dups.to_frame()) == 7
    # the same groups on the result of the scan that found them, and by euclidean distance
    # for exact copies
    assert len(sim.duplicate_groups(x, threshold=0.9999).scan.duplicate_groups) == 2
    by_dist = sim.duplicate_groups(x, 1e-3, metric="euclidean")
    assert [g.tolist() for g in by_dist.groups] == [[7, 10, 50, 300], [100, 201]]
    with pytest.raises(LaminaError, match="needs a threshold"):
        sim.duplicate_groups(x, metric="euclidean")
