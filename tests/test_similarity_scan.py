"""scan(): histogram, moments, top-k and thresholds against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lamina.similarity as sim
from lamina.errors import LaminaError
from sim_brute import full, near_edges, topk_reference, upper

# every float32 scan runs with both CPU backends, backend=epilogue: "numba" and "torch"
# (see conftest.epilogue)


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    """Random rows with an exact duplicate, a scaled copy and a zero row."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((700, 24)).astype(np.float32)
    x[10] = x[3]
    x[11] = 2.5 * x[3]
    x[20] = 0.0
    return x


@pytest.mark.parametrize("metric", sim.METRICS)
def test_histogram_counts_identical_to_numpy_on_the_same_float32_values(epilogue, data, metric):
    # block_size=256 gives diagonal and off-diagonal blocks; matrix() uses the same kernel
    m = sim.matrix(data, metric=metric, block_size=256)
    if metric in ("cosine", "correlation"):  # row 20 is zero: it has no value, it is no pair
        m[20, :] = m[:, 20] = np.nan
    _, _, vals = upper(m)
    lo, hi = (-1.0, 1.0) if metric in ("cosine", "correlation") else (vals.min(), vals.max())
    res = sim.scan(data, metric=metric, bins=37, range=(lo, hi), block_size=256, backend=epilogue)
    expected, edges = np.histogram(vals, bins=37, range=(lo, hi))
    np.testing.assert_array_equal(res.counts, expected)
    np.testing.assert_array_equal(res.edges, edges)
    assert res.count == len(vals) == res.counts.sum() + res.below + res.above


def test_values_on_edges_and_the_closed_last_bin(epilogue):
    # small integers: every dot product is an exact integer, many sit exactly on bin edges
    rng = np.random.default_rng(1)
    x = rng.integers(-2, 3, size=(300, 5)).astype(np.float32)
    _, _, vals = upper(full(x, "dot"))
    assert np.all(vals == np.round(vals)) and np.isin(np.arange(-8, 9), vals).all()
    res = sim.scan(x, metric="dot", bins=16, range=(-8, 8), backend=epilogue)
    expected, _ = np.histogram(vals, bins=16, range=(-8, 8))
    np.testing.assert_array_equal(res.counts, expected)
    assert res.counts[-1] == np.sum((vals >= 7) & (vals <= 8))  # 8, the last edge, included
    # an explicit, non-uniform edge array follows numpy too
    edges = np.array([-20.0, -3, -1, 0, 0.5, 2, 8])
    np.testing.assert_array_equal(
        sim.scan(x, metric="dot", bins=edges, backend=epilogue).counts,
        np.histogram(vals, bins=edges)[0],
    )


def test_range_narrower_than_the_values_counts_below_and_above(epilogue, data):
    _, _, vals = upper(full(data, "cosine"))
    res = sim.scan(data, bins=10, range=(-0.2, 0.3), backend=epilogue)
    assert res.below == np.sum(vals < -0.2)
    assert res.above == np.sum(vals > 0.3)
    assert res.counts.sum() + res.below + res.above == res.count


def test_against_float64_brute_force_differences_only_at_bin_edges(epilogue, data):
    _, _, vals = upper(full(data, "cosine"))
    res = sim.scan(data, bins=200, backend=epilogue)
    expected, edges = np.histogram(vals, bins=200, range=(-1, 1))
    diff = np.abs(res.counts - expected).sum()
    assert diff <= 2 * near_edges(vals, edges, 1e-6)
    assert res.count == len(vals) == 700 * 699 // 2 - 699  # the zero row takes part in nothing
    assert res.n_zero == 1 and list(res.zero_rows) == [20]
    assert res.mean == pytest.approx(vals.mean(), abs=1e-7)
    assert res.std == pytest.approx(vals.std(), rel=1e-6)
    assert res.min == pytest.approx(vals.min(), abs=1e-6)
    assert res.max == 1.0  # duplicate and scaled copy: cosine 1, clamped, never above
    assert not np.isnan([res.mean, res.std, res.min, res.max]).any()


@pytest.mark.parametrize("metric,largest", [("cosine", True), ("cosine", False),
                                            ("dot", True), ("euclidean", False)])
def test_topk_values_equal_brute_force_and_indices_point_at_them(epilogue, data, metric, largest):
    ref = full(data, metric)
    res = sim.scan(data, metric=metric, topk=7, largest=largest, block_size=128, backend=epilogue)
    usable = ~np.isnan(ref).all(1)
    expected = topk_reference(ref, 7, largest, self_pairs=True)
    np.testing.assert_allclose(res.topk_values[usable], expected[usable], rtol=1e-5, atol=1e-5)
    # every index holds the value reported for it (so indices are right up to ties)
    rows = np.flatnonzero(usable)
    at = ref[rows[:, None], res.topk_indices[rows]]
    np.testing.assert_allclose(at, res.topk_values[rows], rtol=1e-5, atol=1e-5)
    assert not np.any(res.topk_indices[rows] == rows[:, None])  # self excluded
    if metric == "cosine":  # row 20, a zero vector, has no cosine: no neighbours, no one's
        assert res.n_zero == 1 and not np.isin(20, res.topk_indices)
        assert np.isnan(res.topk_values[20]).all() and (res.topk_indices[20] == -1).all()
        return
    # for dot and euclidean the zero row is an ordinary row: its values are 0 (dot) and the
    # norms of the other rows (euclidean), and it is a neighbour of exactly the rows for which
    # it beats their brute-force k-th best (rows within a rounding margin of a tie skipped)
    assert res.n_zero == 0
    others = np.delete(np.arange(len(data)), 20)
    norms = np.sort(np.linalg.norm(data[others].astype(np.float64), axis=1))
    np.testing.assert_allclose(res.topk_values[20], np.zeros(7) if metric == "dot" else
                               norms[:7], rtol=1e-5, atol=1e-5)
    kth = expected[others, -1]
    to_20 = ref[others, 20]
    beats = to_20 > kth if largest else to_20 < kth
    clear = np.abs(to_20 - kth) > 1e-4 * (1 + np.abs(kth))
    assert clear.sum() > 600
    has_20 = (res.topk_indices[others] == 20).any(1)
    np.testing.assert_array_equal(has_20[clear], beats[clear])
    if metric == "euclidean":
        assert beats.any()  # the origin is near many rows: the check above is not empty


@pytest.mark.parametrize("k,workers", [(1, 3), (2, 1), (40, 2), (698, 2)])
def test_topk_of_any_size_with_workers_sharing_bounds_equals_brute_force(epilogue, data, k,
                                                                          workers):
    """k from 1 to every other usable row; workers keep their own lists but share the bounds
    that decide which entries are looked at, in both directions of the upper triangle."""
    ref = full(data, "cosine")
    res = sim.scan(data, topk=k, block_size=96, workers=workers, backend=epilogue)
    usable = ~np.isnan(ref).all(1)
    expected = topk_reference(ref, k, True, self_pairs=True)
    np.testing.assert_allclose(res.topk_values[usable], expected[usable], atol=2e-6)
    rows = np.flatnonzero(usable)
    at = ref[rows[:, None], res.topk_indices[rows]]
    np.testing.assert_allclose(at, res.topk_values[rows], atol=2e-6)
    if k == 698:  # every other usable row exactly once
        assert all(len(set(ids)) == k for ids in res.topk_indices[rows])


def test_duplicates_are_each_others_nearest_neighbours(epilogue, data):
    res = sim.scan(data, topk=2, backend=epilogue)
    assert set(res.topk_indices[3]) == {10, 11}
    assert res.topk_values[3].tolist() == [1.0, 1.0]
    assert np.isnan(res.topk_values[20]).all() and (res.topk_indices[20] == -1).all()


def test_threshold_pairs_are_exactly_the_brute_force_pairs(epilogue, data):
    i, j, vals = upper(full(data, "cosine"))
    t = float(np.quantile(vals, 0.999))
    res = sim.scan(data, threshold=t, block_size=200, backend=epilogue)
    m = sim.matrix(data, block_size=200)
    engine = m[i, j]
    sel = engine >= np.float32(t)
    np.testing.assert_array_equal(res.pairs_i, i[sel])
    np.testing.assert_array_equal(res.pairs_j, j[sel])
    np.testing.assert_array_equal(res.pairs_values, engine[sel])
    assert set(zip(res.pairs_i, res.pairs_j, strict=True)) >= {(3, 10), (3, 11), (10, 11)}
    assert list(res.pairs().columns) == ["i", "j", "value"]


def test_threshold_guard_stops_with_a_clear_error(epilogue, data):
    with pytest.raises(sim.TooManyPairsError, match="raise the threshold") as err:
        sim.scan(data, threshold=0.0, max_pairs=1000, backend=epilogue)
    assert isinstance(err.value, LaminaError)


def test_cross_similarity_against_y(epilogue):
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((300, 16)), rng.standard_normal((450, 16))
    ref = full(x, "cosine", y)
    res = sim.scan(x, y, bins=20, topk=4, threshold=0.6, backend=epilogue)
    assert res.count == 300 * 450
    m = sim.matrix(x, y)
    np.testing.assert_array_equal(res.counts, np.histogram(m, bins=20, range=(-1, 1))[0])
    np.testing.assert_allclose(res.topk_values, topk_reference(ref, 4, True, False), atol=1e-6)
    np.testing.assert_array_equal(np.sort(res.pairs_j), np.sort(np.nonzero(m >= 0.6)[1]))


def test_subset_by_indices_and_by_mask_refers_to_original_rows(epilogue, data):
    ids = np.array([650, 3, 10, 400, 11, 7, 20, 99, 500, 42])
    by_ids = sim.scan(data, subset=ids, bins=10, topk=2, backend=epilogue)
    mask = np.zeros(len(data), dtype=bool)
    mask[ids] = True
    by_mask = sim.scan(data, subset=mask, bins=10, topk=2, backend=epilogue)
    direct = sim.scan(data[np.sort(ids)], bins=10, topk=2, backend=epilogue)
    np.testing.assert_array_equal(by_ids.counts, direct.counts)
    np.testing.assert_array_equal(by_mask.counts, direct.counts)
    assert list(by_ids.rows) == list(ids)  # top-k rows follow the caller's order
    assert set(by_ids.topk_indices[1]) == {10, 11}  # row 3's neighbours, as original ids
    assert np.isin(by_ids.topk_indices[by_ids.topk_indices >= 0], ids).all()
    assert by_ids.n_zero == 1  # row 20


def test_results_do_not_depend_on_block_size(epilogue, data):
    a = sim.scan(data, bins=50, topk=5, block_size=64, backend=epilogue)
    b = sim.scan(data, bins=50, topk=5, block_size=700, backend=epilogue)
    # not a multiple of the top-k chunk
    c = sim.scan(data, bins=50, topk=5, block_size=97, backend=epilogue)
    for other in (b, c):
        np.testing.assert_allclose(a.topk_values, other.topk_values, atol=1e-6)
        assert np.abs(a.counts - other.counts).sum() <= 4  # ulp-level product differences
        assert a.count == other.count
        assert a.mean == pytest.approx(other.mean, abs=1e-8)


def test_lazy_array_is_read_block_by_block(epilogue):
    rng = np.random.default_rng(3)
    base = rng.standard_normal((1000, 8)).astype(np.float32)

    class OnDisk:
        """Supports only .shape and row slices, like a memory-mapped or HDF5 dataset."""

        shape = base.shape
        reads: list[int] = []

        def __getitem__(self, key):
            assert isinstance(key, slice), "rows must be read by slices"
            self.reads.append(len(range(*key.indices(len(base)))))
            return base[key]

        def __array__(self, *args, **kwargs):
            raise AssertionError("the whole array must never be read at once")

    lazy = OnDisk()
    # memory too small to cache the prepared rows: they are re-read per block
    res = sim.scan(lazy, bins=30, topk=3, subset=np.arange(0, 1000, 3), memory=20_000,
                   backend=epilogue)
    ref = sim.scan(base[::3], bins=30, topk=3, backend=epilogue)
    np.testing.assert_array_equal(res.counts, ref.counts)
    np.testing.assert_array_equal(res.topk_indices, np.arange(0, 1000, 3)[ref.topk_indices])
    assert res.meta["cached"] is False
    assert max(OnDisk.reads) < len(base)


def test_fast_mode_rescoring_gives_exact_topk_and_thresholds(epilogue):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1500, 64)).astype(np.float32)
    exact = sim.scan(x, bins=40, topk=10, threshold=0.4, backend=epilogue)
    fast = sim.scan(x, bins=40, topk=10, threshold=0.4, dtype="bfloat16", backend=epilogue)
    assert fast.meta["fast"] and fast.meta["matmul_dtype"] == "bfloat16"
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in
                      zip(exact.topk_indices, fast.topk_indices, strict=True)])
    assert recall >= 0.99
    np.testing.assert_allclose(fast.topk_values, exact.topk_values, atol=1e-6)
    np.testing.assert_array_equal(fast.pairs_i, exact.pairs_i)  # margin + re-scoring: exact
    np.testing.assert_array_equal(fast.pairs_j, exact.pairs_j)
    # the histogram uses low-precision values: close, not identical
    assert np.abs(fast.counts - exact.counts).sum() / exact.count < 0.05
    assert fast.count == exact.count


def test_float64_and_quantiles(data):
    res = sim.scan(data, bins=400, dtype="float64")
    _, _, vals = upper(full(data, "cosine"))
    assert res.meta["value_dtype"] == "float64"
    assert res.mean == pytest.approx(vals.mean(), abs=1e-12)
    width = 2 / 400
    for q, v in res.quantiles.items():
        assert abs(v - np.quantile(vals, q)) <= width
    assert res.quantile(0.0) == pytest.approx(vals.min())
    assert res.to_frame().shape == (400, 3)
    assert res.to_frame("summary")["count"].item() == len(vals)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: sim.scan(np.ones((5, 3)), np.ones((5, 4))), "same width"),
        (lambda: sim.scan(np.empty((0, 3))), "empty"),
        (lambda: sim.scan(np.ones(5)), "2-D"),
        (lambda: sim.scan(np.array([[1.0, np.nan], [1, 2]])), "NaN"),
        (lambda: sim.scan(np.eye(5), topk=5), "topk=5 is too large"),
        (lambda: sim.scan(np.eye(5), metric="cos"), "'cosine', 'correlation', 'dot'"),
        (lambda: sim.scan(np.eye(5), subset=[1, 1]), "repeats"),
        (lambda: sim.scan(np.zeros((4, 3))), "at least 2 rows"),
        (lambda: sim.scan(np.eye(3), bins=0), "bins"),
        (lambda: sim.scan(np.eye(3), dtype="int8"), "dtype"),
        (lambda: sim.matrix(np.ones((1000, 4)), memory=1000), "scan"),
    ],
)
def test_bad_input_raises_lamina_errors_that_say_what_to_do(call, message):
    with pytest.raises(LaminaError, match=message):
        call()


def test_torch_input_and_to_frame(epilogue):
    x = torch.randn(50, 6, dtype=torch.float64)
    res = sim.scan(x, topk=2, device="cpu", backend=epilogue)
    frame = res.to_frame()
    assert list(frame.columns) == ["row", "rank", "neighbor", "value"]
    assert len(frame) == 100
    assert res.topk_values.dtype == np.float32
