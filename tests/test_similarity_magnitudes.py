"""Rows and values at the edges of the float ranges, against float64 brute force: rows of
tiny or huge norm are normalised exactly (only exact zeros are zero vectors), dot and euclidean
values beyond float32 are refused or computed in float64 when asked, and moments are float64
sums."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lamina.similarity as sim
from sim_brute import full, topk_reference, upper

RNG = np.random.default_rng(1)

# every float32 scan runs with both CPU backends, backend=epilogue: "numba" and "torch"
# (see conftest.epilogue)


def _rows_of_every_magnitude(x: np.ndarray) -> np.ndarray:
    """Rows scaled by powers of two, exact in float32, from 2**-100 (~8e-31) to 2**120
    (~1.3e36), and one exact zero row (5)."""
    scale = 2.0 ** np.array([-100, -83, -60, 0, 40, 100, 120] * 6)[: len(x)]
    out = (x * scale[:, None]).astype(np.float32)
    out[5] = 0.0
    return out


@pytest.mark.parametrize("metric", ["cosine", "correlation"])
def test_rows_of_tiny_and_huge_norm_are_not_zero_vectors(epilogue, metric):
    """Power-of-two scaling is exact, so the scan of the scaled rows equals the scan of the
    rows themselves, value for value; both agree with float64 brute force; only the exact
    zero row is excluded."""
    x = RNG.standard_normal((42, 12)).astype(np.float32)
    x[5] = 0.0
    scaled = _rows_of_every_magnitude(x)
    assert np.abs(scaled[0]).max() < 1e-29 and np.abs(scaled[6]).max() > 1e35
    got = sim.scan(scaled, metric=metric, bins=40, topk=4, block_size=16, backend=epilogue)
    plain = sim.scan(x, metric=metric, bins=40, topk=4, block_size=16, backend=epilogue)
    assert got.n_zero == 1 and list(got.zero_rows) == [5]
    assert got.count == 41 * 40 // 2
    np.testing.assert_array_equal(got.counts, plain.counts)
    np.testing.assert_array_equal(got.topk_values, plain.topk_values)
    assert (got.min, got.max) == (plain.min, plain.max)
    # equal up to the order in which worker threads add their float64 sums
    assert (got.mean, got.std) == pytest.approx((plain.mean, plain.std), rel=1e-12, abs=1e-15)
    ref = full(x.astype(np.float64), metric)
    _, _, vals = upper(ref)
    assert len(vals) == got.count
    assert got.mean == pytest.approx(vals.mean(), abs=1e-6)
    usable = ~np.isnan(ref).all(1)
    np.testing.assert_allclose(got.topk_values[usable],
                               topk_reference(ref, 4, True, True)[usable], atol=1e-6)


def test_subnormal_rows_against_float64_brute_force_on_the_same_values(epilogue):
    x = RNG.standard_normal((30, 6)).astype(np.float32)
    x[:10] *= np.float32(1e-40)  # subnormal float32: few bits, but not zero
    x[10:12] *= np.float32(1e-25)
    assert (np.abs(x[:10]) < 1.2e-38).all() and (x[:10] != 0).any(1).all()
    res = sim.scan(x, topk=3, bins=20, backend=epilogue)
    ref = full(x.astype(np.float64), "cosine")
    assert res.n_zero == 0
    np.testing.assert_allclose(res.topk_values, topk_reference(ref, 3, True, True), atol=1e-6)
    _, _, vals = upper(ref)
    assert res.mean == pytest.approx(vals.mean(), abs=1e-6)


def test_float64_rows_beyond_float32_range_normalise_exactly(epilogue):
    x = RNG.standard_normal((20, 5))
    scaled = x * 2.0 ** np.array([-700, 700, -300, 0] * 5)[:, None]  # 1e-211 .. 5e210
    for dtype in (None, "float64"):
        backend = epilogue if dtype is None else "auto"  # numba runs float32 values only
        got = sim.scan(scaled, topk=3, bins=10, dtype=dtype, backend=backend)
        plain = sim.scan(x, topk=3, bins=10, dtype=dtype, backend=backend)
        assert got.n_zero == 0
        np.testing.assert_array_equal(got.topk_values, plain.topk_values)
        np.testing.assert_array_equal(got.counts, plain.counts)
    np.testing.assert_array_equal(sim.matrix(scaled, metric="correlation"),
                                  sim.matrix(x, metric="correlation"))


@pytest.mark.parametrize("metric", ["dot", "euclidean"])
def test_large_dot_and_euclidean_values_have_finite_correct_moments(epilogue, metric):
    """Values near 1e35 fit float32, their squares do not: moments are float64 sums."""
    x = RNG.standard_normal((50, 16)).astype(np.float32) * np.float32(1e17)
    res = sim.scan(x, metric=metric, bins=8, range=(-2e36, 2e36), topk=2, backend=epilogue)
    _, _, vals = upper(full(x.astype(np.float64), metric))
    peak = float((np.linalg.norm(x.astype(np.float64), axis=1).max() * 2) ** 2)
    assert np.isfinite([res.mean, res.std, res.min, res.max]).all()
    assert res.mean == pytest.approx(vals.mean(), abs=1e-5 * peak ** (0.5 if metric ==
                                                                      "euclidean" else 1))
    assert res.std == pytest.approx(vals.std(), rel=1e-5)
    assert res.max == pytest.approx(vals.max(), rel=1e-5)
    assert res.counts.sum() + res.below + res.above == res.count == len(vals)


def test_values_beyond_float32_are_computed_in_float64_when_asked():
    x = RNG.standard_normal((30, 6)) * 1e20
    ref = full(x, "dot")
    res = sim.scan(x, metric="dot", dtype="float64", topk=3, threshold=3e40)
    _, _, vals = upper(ref)
    assert res.mean == pytest.approx(vals.mean(), rel=1e-9)
    assert res.std == pytest.approx(vals.std(), rel=1e-9)
    assert res.max == pytest.approx(vals.max(), rel=1e-12)
    assert res.topk_values.dtype == np.float64 and np.isfinite(res.topk_values).all()
    np.testing.assert_allclose(res.topk_values, topk_reference(ref, 3, True, True), rtol=1e-12)
    i, j, v = upper(ref)
    np.testing.assert_array_equal(res.pairs_i, i[v >= 3e40])
    assert res.pairs_values.dtype == np.float64


@pytest.mark.parametrize("cross", [False, True])
def test_moments_are_float64_sums_exact_on_integer_values(epilogue, cross):
    """Integer rows give integer dot products, exact in float32 whatever the summation order
    of the kernel; their float64 sums are exact too, while float32 sums of ~4e5-sized values
    would not be (the mean would be off by ~1e-7 relative)."""
    x = RNG.integers(100, 121, size=(700, 32)).astype(np.float32)
    y = RNG.integers(100, 121, size=(300, 32)).astype(np.float32) if cross else None
    x64 = x.astype(np.int64)
    prods = x64 @ (x64 if y is None else y.astype(np.int64)).T
    vals = prods[np.triu_indices(len(x), 1)] if y is None else prods.ravel()
    assert vals.max() < 2**24  # every value exact in float32
    res = sim.scan(x, y, metric="dot", block_size=256, backend=epilogue)
    exact_mean = vals.sum() / len(vals)  # integer sum, exact
    assert res.count == len(vals)
    assert res.mean == exact_mean
    dev = vals - exact_mean
    assert res.std == pytest.approx(np.sqrt((dev * dev).sum() / len(vals)), rel=1e-12)
    assert (res.min, res.max) == (vals.min(), vals.max())


# --------------------------------------------------------------------------- threshold_sums
def test_threshold_sums_of_tiny_rows_and_integer_inputs_against_brute_force(epilogue):
    y = RNG.integers(-3, 4, size=(60, 5))
    y[7] = 0
    x = (y[:9] * 1e-30).astype(np.float32)  # tiny queries: the cosines of y[:9]
    w = RNG.integers(0, 5, size=(60, 2))
    cos = np.nan_to_num(full(y[:9], "cosine", y), nan=-2.0)  # float64; zero rows: none
    levels = np.unique(cos)
    # thresholds midway between distinct cosines: float32 rounding cannot move a pair across
    thresholds = [float(levels[k : k + 2].mean()) for k in np.searchsorted(levels, [0.55, 0.93])]
    assert min(np.abs(cos - t).min() for t in thresholds) > 1e-4
    got = sim.threshold_sums(x, y, w, thresholds, backend=epilogue)
    expected = np.stack([cos >= t for t in thresholds], 1).astype(np.float64) @ w
    np.testing.assert_array_equal(got, expected)
    assert (got[0, 1] >= w[0]).all()  # a query finds its own row
    assert (got[7] == 0).all()  # the zero row has no similarity


@pytest.mark.parametrize("kind", ["int64", "int8", "bool", "float16"])
def test_integer_boolean_and_half_rows_are_read_as_their_numbers(epilogue, kind):
    base = RNG.integers(-3, 4, size=(50, 7))
    x = (base > 0) if kind == "bool" else base.astype(kind)
    as_float = x.astype(np.float64)
    res = sim.scan(x, topk=3, bins=20, metric="dot", backend=epilogue)
    ref = full(as_float, "dot")
    np.testing.assert_array_equal(res.topk_values, topk_reference(ref, 3, True, True))
    _, _, vals = upper(ref)
    np.testing.assert_array_equal(res.counts, np.histogram(vals, 20, (-1, 1))[0])
    assert res.mean == vals.mean()  # small integers: every value and every sum exact


def test_moments_taken_in_float64_pieces_equal_numpy(monkeypatch):
    """Blocks are widened to float64 piece by piece (whole rows, or parts of one long row):
    the sums are those of all values, shift or not."""
    from lamina.similarity._accum import Moments, merge_moments

    monkeypatch.setattr(Moments, "CHUNK", 7)
    block = torch.from_numpy(RNG.standard_normal((9, 12)).astype(np.float32) + 1e3)
    flat = torch.from_numpy(RNG.standard_normal(30).astype(np.float32))
    for shift in (None, 0.0):
        m = Moments(shift)
        m.add(block[:, 3:])  # strided 2-D, rows longer than a piece
        m.add(block[:2, :3])  # 2-D, several rows a piece
        m.add(flat)  # 1-D, cut into pieces
        vals = np.concatenate([block[:, 3:].numpy().ravel(), block[:2, :3].numpy().ravel(),
                               flat.numpy()]).astype(np.float64)
        got = merge_moments([m])
        assert got["count"] == len(vals)
        assert got["mean"] == pytest.approx(vals.mean(), rel=1e-14)
        assert got["std"] == pytest.approx(vals.std(), rel=1e-9)
        assert (got["min"], got["max"]) == (vals.min(), vals.max())
