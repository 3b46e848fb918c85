"""Property-based checks of scan() over shapes, block sizes, subsets and metrics.

Small integer-valued rows give ties, exact duplicates and zero rows. The reference is the
engine's own dense matrix (same kernel, so the same float32 values) and float64 brute force."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import lamina.similarity as sim
from lamina.errors import LaminaError
from sim_brute import full, upper

# every scan runs with both CPU backends, backend=epilogue: "numba" and "torch"
# (see conftest.epilogue)

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def problems(draw):
    n = draw(st.integers(2, 40))
    d = draw(st.integers(1, 6))
    x = draw(arrays(np.float32, (n, d), elements=st.integers(-3, 3).map(float)))
    metric = draw(st.sampled_from(sim.METRICS))
    block = draw(st.integers(1, 48))
    subset = None
    if draw(st.booleans()):
        subset = draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=n, unique=True))
        if draw(st.booleans()):
            mask = np.zeros(n, dtype=bool)
            mask[subset] = True
            subset = mask
    return x, metric, block, subset


def usable_rows(x, metric, subset):
    rows = np.arange(len(x)) if subset is None else np.flatnonzero(
        subset) if np.asarray(subset).dtype == bool else np.sort(np.asarray(subset))
    _, keep = (None, np.ones(len(x), bool)) if metric in ("dot", "euclidean") else (
        None, ~np.isnan(full(x, metric)).all(1))
    return rows[keep[rows]]


@SETTINGS
@given(problems(), st.integers(1, 30), st.booleans())
def test_scan_matches_the_dense_matrix(epilogue, problem, bins, largest):
    x, metric, block, subset = problem
    rows = usable_rows(x, metric, subset)
    if len(rows) < 2:
        with pytest.raises(LaminaError, match="at least 2 rows"):
            sim.scan(x, metric=metric, subset=subset, backend=epilogue)
        return
    # the same rows and block size as the scan: the same products, the same float32 values
    m = sim.matrix(x, metric=metric, subset=subset, block_size=block)
    order = np.arange(len(x)) if subset is None else np.flatnonzero(subset) if np.asarray(
        subset).dtype == bool else np.asarray(subset)
    at = {r: p for p, r in enumerate(order)}
    m = m[np.ix_([at[r] for r in rows], [at[r] for r in rows])]
    i, j, vals = upper(m)
    lo, hi = (-1.0, 1.0) if metric in ("cosine", "correlation") else (
        float(vals.min()) - 0.5, float(vals.max()) + 0.5)
    k = min(3, len(rows) - 1)
    threshold = float(np.median(vals))
    below = metric == "euclidean"
    res = sim.scan(x, metric=metric, subset=subset, bins=bins, range=(lo, hi), topk=k,
                   largest=largest, threshold=threshold, threshold_below=below,
                   block_size=block, backend=epilogue)
    # every pair once, histogram identical to numpy on the same values
    assert res.count == len(rows) * (len(rows) - 1) // 2
    np.testing.assert_array_equal(res.counts, np.histogram(vals, bins=bins, range=(lo, hi))[0])
    ref64 = full(x[rows], metric)
    assert res.mean == pytest.approx(upper(ref64)[2].mean(), rel=1e-5, abs=1e-5)
    assert res.min <= res.mean <= res.max
    # top-k: the best k values of each row, self excluded, indices holding those values
    ordered = np.sort(np.where(np.eye(len(rows), dtype=bool), np.nan, m), axis=1)
    ordered = ordered[:, :-1]  # drop the NaN (self) that sorts last
    best = ordered[:, ::-1][:, :k] if largest else ordered[:, :k]
    pos = {r: p for p, r in enumerate(rows)}
    got = res.topk_values[[list(res.rows).index(r) for r in rows]]
    tol = 1e-4 if metric == "euclidean" else 0  # euclidean top-k is re-scored
    np.testing.assert_allclose(got, best, atol=tol, rtol=tol)
    for r in rows:
        idx = res.topk_indices[list(res.rows).index(r)]
        assert r not in idx and all(c in pos for c in idx)
        np.testing.assert_allclose(m[pos[r], [pos[c] for c in idx]],
                                   res.topk_values[list(res.rows).index(r)], atol=tol, rtol=tol)
    # thresholded pairs: exactly those at or beyond the threshold (ids of x)
    sel = vals <= threshold if below else vals >= np.float32(threshold)
    if metric != "euclidean":
        assert set(zip(res.pairs_i, res.pairs_j, strict=True)) == set(
            zip(rows[i[sel]], rows[j[sel]], strict=True))
    assert np.all(res.pairs_i < res.pairs_j)


@SETTINGS
@given(problems(), st.integers(1, 30))
def test_cross_scan_counts_all_pairs_of_x_and_y(epilogue, problem, rows_y):
    x, metric, block, _ = problem
    rng = np.random.default_rng(rows_y)
    y = rng.integers(-3, 4, size=(rows_y, x.shape[1])).astype(np.float32)
    usable = lambda a: (  # noqa: E731
        np.ones(len(a), bool) if metric in ("dot", "euclidean")
        else ~np.isnan(full(a, metric)).all(1))
    assume(usable(x).any() and usable(y).any())
    m = sim.matrix(x, y, metric=metric, block_size=block)
    m = m[np.ix_(usable(x), usable(y))]
    res = sim.scan(x, y, metric=metric, bins=7, range=(m.min() - 1, m.max() + 1),
                   block_size=block, backend=epilogue)
    assert res.count == m.size
    np.testing.assert_array_equal(res.counts,
                                  np.histogram(m, bins=7, range=(m.min() - 1, m.max() + 1))[0])
    assert res.max == pytest.approx(m.max(), abs=1e-6)


@SETTINGS
@given(st.integers(2, 60), st.integers(1, 8), st.integers(1, 70))
def test_block_size_and_workers_do_not_change_exact_results(epilogue, n, d, block):
    rng = np.random.default_rng(n * 100 + d)
    x = rng.standard_normal((n, d)).astype(np.float32)
    k = min(2, n - 1)
    one = sim.scan(x, bins=16, topk=k, block_size=block, workers=1, backend=epilogue)
    two = sim.scan(x, bins=16, topk=k, block_size=block, workers=2, backend=epilogue)
    np.testing.assert_array_equal(one.counts, two.counts)
    np.testing.assert_array_equal(one.topk_values, two.topk_values)
    assert one.count == two.count == n * (n - 1) // 2
    assert one.mean == pytest.approx(two.mean, abs=1e-9)
