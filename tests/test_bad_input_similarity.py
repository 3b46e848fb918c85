"""Bad input to the similarity engine: every public function answers a clear
``SimilarityInputError`` (a ``LaminaError``) saying what was wrong and what to do, or handles
the input correctly (checked against float64 brute force); nothing is silently wrong."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import lamina.similarity as sim
from badinput import api_fails
from lamina.errors import LaminaError
from sim_brute import full, upper

RNG = np.random.default_rng(0)
X = RNG.standard_normal((40, 8)).astype(np.float32)
W = np.ones(40)


class Lazy:
    """Rows read by slices only (like a store site); row 33 holds a NaN."""

    shape = (60, 8)

    def __getitem__(self, key):
        rows = np.ones((60, 8), dtype=np.float32)[key]
        if key.start <= 33 < key.stop:
            rows[33 - key.start, 2] = np.nan
        return rows


def _object_labels() -> np.ndarray:
    out = np.empty(40, dtype=object)
    out[:] = [[i % 2] for i in range(40)]
    return out


FINITE = "must be a finite number"
BAD = [
    # --- x and y
    ("x None", lambda: sim.scan(None), ["x is None", "2-D array"]),
    ("x 1-D", lambda: sim.scan(np.ones(5)), ["2-D", r"shape \(5,\)"]),
    ("x 3-D", lambda: sim.scan(np.ones((2, 3, 4))), ["2-D"]),
    ("x empty", lambda: sim.scan(np.empty((0, 3))), ["empty", "at least one row"]),
    ("x no columns", lambda: sim.scan(np.empty((4, 0))), ["empty"]),
    ("x strings", lambda: sim.scan(np.array([["a", "b"], ["c", "d"]])), ["real numbers"]),
    ("x complex", lambda: sim.scan(X.astype(np.complex64)), ["real numbers", "complex"]),
    ("x complex tensor", lambda: sim.scan(torch.from_numpy(X).to(torch.complex64)),
     ["real numbers", "complex"]),
    ("x ragged", lambda: sim.scan([[1.0, 2.0], [3.0]]), ["2-D array of numbers"]),
    ("x objects", lambda: sim.scan(np.array([[1.0, None], [2.0, 3.0]], dtype=object)),
     ["real numbers", "object"]),
    ("x NaN row", lambda: sim.scan(np.where(np.arange(40)[:, None] == 7, np.nan, X)),
     ["row 7 ", "NaN or infinite", "drop or fill"]),
    ("x inf row", lambda: sim.scan(np.where(np.arange(40)[:, None] == 39, np.inf, X)),
     ["row 39 "]),
    ("lazy NaN row, read by blocks", lambda: sim.scan(Lazy(), memory=8_000), ["row 33 "]),
    ("y NaN row", lambda: sim.scan(X, np.where(np.arange(40)[:, None] == 4, np.nan, X)),
     ["row 4 "]),
    ("x, y widths", lambda: sim.scan(X, X[:, :5]), ["width 8", "width 5", "same width"]),
    ("subset_y without y", lambda: sim.scan(X, subset_y=[1, 2]), ["subset_y needs y"]),
    ("subset repeats", lambda: sim.scan(X, subset=[1, 1]), ["repeats"]),
    ("subset out of range", lambda: sim.scan(X, subset=[0, 40]), ["outside 0..39"]),
    ("subset floats", lambda: sim.scan(X, subset=[0.5, 1.0]), ["integer row indices"]),
    ("subset 2-D", lambda: sim.scan(X, subset=[[0, 1]]), ["1-D"]),
    ("subset empty", lambda: sim.scan(X, subset=np.array([], dtype=int)), ["selects no rows"]),
    ("subset mask length", lambda: sim.scan(X, subset=np.ones(3, bool)), ["length 3", "40"]),
    ("all zero rows", lambda: sim.scan(np.zeros((4, 3))), ["at least 2 rows", "4 zero"]),
    # --- options
    ("topk 0", lambda: sim.scan(X, topk=0), ["topk must be an integer >= 1, not 0"]),
    ("topk -1", lambda: sim.scan(X, topk=-1), ["topk must be an integer >= 1"]),
    ("topk 1.5", lambda: sim.scan(X, topk=1.5), ["topk must be an integer"]),
    ("topk True", lambda: sim.scan(X, topk=True), ["topk must be an integer"]),
    ("topk str", lambda: sim.scan(X, topk="3"), ["topk must be an integer"]),
    ("topk n", lambda: sim.scan(X, topk=40), ["topk=40 is too large", "39 other rows"]),
    ("threshold NaN", lambda: sim.scan(X, threshold=float("nan")), ["threshold", FINITE]),
    ("threshold inf", lambda: sim.scan(X, threshold=np.inf), ["threshold", FINITE]),
    ("threshold str", lambda: sim.scan(X, threshold="0.5"), ["threshold", FINITE]),
    ("threshold complex", lambda: sim.scan(X, threshold=0.5j), ["threshold", FINITE]),
    ("threshold NaN tensor", lambda: sim.scan(X, threshold=torch.tensor(float("nan"))),
     ["threshold", FINITE]),
    ("max_pairs 0", lambda: sim.scan(X, threshold=0.5, max_pairs=0), ["max_pairs"]),
    ("groups without threshold", lambda: sim.duplicate_groups(X, metric="euclidean"),
     ["needs a threshold"]),
    ("range NaN", lambda: sim.scan(X, bins=10, range=(np.nan, 1)), ["range", "finite"]),
    ("range inf", lambda: sim.scan(X, bins=10, range=(-1, np.inf)), ["range", "finite"]),
    ("range 1e40", lambda: sim.scan(X, bins=10, range=(-1e40, 1e40)),
     ["range=", "beyond the float32 values", "narrower range", "dtype='float64'"]),
    ("range empty", lambda: sim.scan(X, bins=10, range=(0.5, 0.5)), ["low < high"]),
    ("range inverted", lambda: sim.scan(X, bins=10, range=(1, -1)), ["low < high"]),
    ("range not a pair", lambda: sim.scan(X, bins=10, range=5), ["range must be a pair"]),
    ("range None", lambda: sim.scan(X, bins=10, range=None), ["range must be a pair"]),
    ("range strings", lambda: sim.scan(X, bins=10, range=("a", "b")), ["two numbers"]),
    ("bins 0", lambda: sim.scan(X, bins=0), ["bins must be a positive integer, got 0"]),
    ("bins -3", lambda: sim.scan(X, bins=-3), ["bins must be a positive integer"]),
    ("bins 1.5", lambda: sim.scan(X, bins=1.5), ["bins must be an integer or a 1-D array"]),
    ("bins str", lambda: sim.scan(X, bins="ten"), ["bins must be an integer or a 1-D array"]),
    ("bins one edge", lambda: sim.scan(X, bins=[0.0]), [">= 2 finite edges"]),
    ("bins NaN edge", lambda: sim.scan(X, bins=[0.0, np.nan, 1]), [">= 2 finite edges"]),
    ("bins decreasing", lambda: sim.scan(X, bins=[0.0, 1, 0.5]), ["increase strictly"]),
    ("bins collapse in float32", lambda: sim.scan(X, bins=1000, range=(0, 1e-42)),
     ["increase strictly", "float32", "fewer bins"]),
    ("widen str", lambda: sim.scan(X, topk=2, widen="a"), ["widen must be an integer"]),
    ("workers 0", lambda: sim.scan(X, workers=0), ["workers must be an integer >= 1"]),
    ("memory 0", lambda: sim.scan(X, memory=0), ["memory"]),
    ("memory str", lambda: sim.scan(X, memory="1GB"), ["memory", "'1GB'"]),
    ("block_size 0", lambda: sim.scan(X, block_size=0), ["block_size"]),
    ("device unknown", lambda: sim.scan(X, device="foo"), ["unknown device 'foo'", "'cpu'"]),
    ("device meta", lambda: sim.scan(X, device="meta"), ["'cpu' or 'cuda'"]),
    ("dtype int8", lambda: sim.scan(X, dtype="int8"), ["unknown dtype", "'float64'"]),
    ("dtype torch.int32", lambda: sim.scan(X, dtype=torch.int32), ["unknown dtype"]),
    ("metric unknown", lambda: sim.scan(X, metric="cos"), ["unknown metric 'cos'", "'cosine'"]),
    ("metric None", lambda: sim.scan(X, metric=None), ["unknown metric None"]),
    ("backend unknown", lambda: sim.scan(X, backend="cuda"),
     ["unknown backend 'cuda'", "'auto'", "'torch'", "'numba'"]),
    ("backend None", lambda: sim.scan(X, backend=None), ["unknown backend None"]),
    ("backend numba float64", lambda: sim.scan(X, dtype="float64", backend="numba"),
     ["backend='numba'", "float32 values only", "float64", "backend='torch' or 'auto'"]),
    # --- values out of the dtype's range
    ("dot overflow", lambda: sim.scan(X * 1e20, metric="dot"),
     ["would overflow", "norms up to", "float32", "rescale", "dtype='float64'"]),
    ("euclidean overflow", lambda: sim.scan(X * 1e19, metric="euclidean", topk=2),
     ["would overflow", "squared distances"]),
    ("cross dot overflow", lambda: sim.scan(X, X * 1e37, metric="dot"), ["would overflow"]),
    ("dot underflow", lambda: sim.scan(X * 1e-22, metric="dot"),
     ["would underflow", "smallest normal", "rescale"]),
    ("float64 overflow", lambda: sim.scan(X.astype(np.float64) * 1e160, metric="dot",
                                          dtype="float64"), ["would overflow", "float64"]),
    ("float16 overflow", lambda: sim.scan(X * 100, metric="dot", dtype="float16"),
     ["float16", "bfloat16"]),
    # --- matrix, duplicate_groups
    ("matrix x None", lambda: sim.matrix(None), ["x is None"]),
    ("matrix metric", lambda: sim.matrix(X, metric="cosin"), ["unknown metric"]),
    ("matrix NaN", lambda: sim.matrix(np.where(np.arange(40)[:, None] == 3, np.nan, X)),
     ["row 3 "]),
    ("duplicates threshold NaN", lambda: sim.duplicate_groups(X, float("nan")),
     ["threshold", FINITE]),
    ("duplicates dot needs threshold", lambda: sim.duplicate_groups(X, metric="dot"),
     ["needs a threshold"]),
    ("duplicates x 1-D", lambda: sim.duplicate_groups(np.ones(4)), ["2-D"]),
    ("duplicates y", lambda: sim.duplicate_groups(X, y=X),
     ["self-similarity", "y is not accepted", "scan\\(x, y"]),
    ("duplicates backend", lambda: sim.duplicate_groups(X, backend="jit"),
     ["unknown backend 'jit'"]),
    ("sums backend", lambda: sim.threshold_sums(X, X, W, 0.5, backend="Numba"),
     ["unknown backend 'Numba'", "'numba'"]),
    # --- threshold_sums
    ("sums y None", lambda: sim.threshold_sums(X, None, W, 0.5), ["y is None", "y=x"]),
    ("sums weights None", lambda: sim.threshold_sums(X, X, None, 0.5),
     ["weights is None", "one row of weights per row of y"]),
    ("sums weights length", lambda: sim.threshold_sums(X, X, np.ones(7), 0.5),
     ["one row per row of y \\(40\\)", "\\(7, 1\\)"]),
    ("sums weights 3-D", lambda: sim.threshold_sums(X, X, np.ones((40, 2, 2)), 0.5),
     ["one row per row of y"]),
    ("sums weights strings", lambda: sim.threshold_sums(X, X, np.array(["a"] * 40), 0.5),
     ["weights must hold real numbers"]),
    ("sums weights complex", lambda: sim.threshold_sums(X, X, W * 1j, 0.5),
     ["weights must hold real numbers"]),
    ("sums weights NaN", lambda: sim.threshold_sums(X, X, W * np.nan, 0.5), ["NaN"]),
    ("sums thresholds NaN", lambda: sim.threshold_sums(X, X, W, float("nan")),
     ["thresholds must be one or more finite numbers"]),
    ("sums thresholds empty", lambda: sim.threshold_sums(X, X, W, []), ["thresholds"]),
    ("sums thresholds str", lambda: sim.threshold_sums(X, X, W, "high"), ["thresholds"]),
    ("sums thresholds 2-D", lambda: sim.threshold_sums(X, X, W, [[0.5]]), ["thresholds"]),
    ("sums x None", lambda: sim.threshold_sums(None, X, W, 0.5), ["x is None"]),
    ("sums widths", lambda: sim.threshold_sums(X[:, :3], X, W, 0.5), ["same width"]),
    ("sums metric", lambda: sim.threshold_sums(X, X, W, 0.5, metric="l2"), ["unknown metric"]),
    ("sums workers", lambda: sim.threshold_sums(X, X, W, 0.5, workers=-2), ["workers"]),
    # --- group_stats
    ("groups labels None", lambda: sim.group_stats(X, None), ["labels is None"]),
    ("groups labels length", lambda: sim.group_stats(X, np.zeros(39)), ["one label per row"]),
    ("groups labels 2-D", lambda: sim.group_stats(X, np.zeros((40, 2))), ["1-D"]),
    ("groups labels NaN", lambda: sim.group_stats(X, np.r_[np.nan, np.zeros(39)]),
     ["missing values"]),
    ("groups labels unhashable", lambda: sim.group_stats(X, _object_labels()), ["hashable"]),
    ("groups permutations -1", lambda: sim.group_stats(X, W, permutations=-1),
     ["permutations must be an integer >= 0"]),
    ("groups permutations 1.5", lambda: sim.group_stats(X, W, permutations=1.5),
     ["permutations must be an integer"]),
    ("groups seed str", lambda: sim.group_stats(X, W, seed="a"), ["seed must be an integer"]),
    ("groups method", lambda: sim.group_stats(X, W, method="fast"), ["unknown method"]),
    ("groups metric", lambda: sim.group_stats(X, W, metric="cos"), ["unknown metric"]),
    ("groups bins 0", lambda: sim.group_stats(X, W, bins=0), ["bins must be a positive"]),
    ("groups range 1e40", lambda: sim.group_stats(X, W, bins=4, range=(-1e40, 1e40),
                                                  dtype="float32"), ["beyond the float32"]),
    ("groups one row", lambda: sim.group_stats(X[:1], [0]), ["at least 2 rows"]),
    ("groups dot overflow", lambda: sim.group_stats(X.astype(np.float64) * 1e200, W,
                                                    metric="dot"),
     ["would overflow"]),
]


@pytest.mark.parametrize("call,needles", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_raises_a_similarity_error_saying_what_to_do(call, needles):
    message = api_fails(call, *needles, exc=sim.SimilarityInputError)
    assert "\n" not in message
    assert isinstance(sim.SimilarityInputError(message), LaminaError)


def test_unavailable_cuda_is_named():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    api_fails(lambda: sim.scan(X, device="cuda"), "CUDA is not available", "device='cpu'")


SCANNED = sim.scan(X)  # no histogram, no threshold
RESULT_MISUSE = [
    ("quantile without bins", lambda: SCANNED.quantile(0.5), ["scan with bins="]),
    ("quantiles without bins", lambda: sim.scan(X, bins=5).quantile(1.5), [r"\[0, 1\]"]),
    ("quantile NaN", lambda: sim.scan(X, bins=5).quantile(np.nan), [r"\[0, 1\]"]),
    ("pairs without threshold", lambda: SCANNED.pairs(), ["scan with threshold="]),
    ("unknown table", lambda: SCANNED.to_frame("pairs"), ["cannot make a 'pairs' table"]),
]


@pytest.mark.parametrize("call,needles", [c[1:] for c in RESULT_MISUSE],
                         ids=[c[0] for c in RESULT_MISUSE])
def test_scan_result_misuse_raises_a_lamina_error(call, needles):
    api_fails(call, *needles, exc=sim.SimilarityInputError)


# --------------------------------------------------------------------------- group_stats notes
def _group_stats(x, labels, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = sim.group_stats(x, labels, **kwargs)
    said = [str(w.message) for w in caught
            if issubclass(w.category, sim.UndefinedStatisticWarning)]
    assert said == res.notes
    return res


def test_group_stats_with_one_label_says_across_figures_are_undefined():
    res = _group_stats(X, np.zeros(40), permutations=5)
    s = res.summary
    _, _, vals = upper(full(X, "cosine"))
    assert s["within_count"] == len(vals) and s["across_count"] == 0
    assert s["within_mean"] == pytest.approx(vals.mean(), abs=1e-12)
    assert s["within_var"] == pytest.approx(vals.var(ddof=1), rel=1e-9)
    for key in ("across_mean", "across_var", "delta", "t", "t_welch", "cohens_d",
                "p_permutation"):
        assert np.isnan(s[key]), key
    assert len(res.notes) == 1
    assert "no across-group pairs" in res.notes[0] and "p_permutation" in res.notes[0]


def test_group_stats_with_singleton_groups_says_within_figures_are_undefined():
    res = _group_stats(X[:6], ["a", "b", "c", "d", "e", "f"])
    s = res.summary
    _, _, vals = upper(full(X[:6], "cosine"))
    assert s["within_count"] == 0 and s["across_count"] == 15
    assert s["across_mean"] == pytest.approx(vals.mean(), abs=1e-12)
    assert np.isnan([s["within_mean"], s["within_var"], s["delta"], s["t"]]).all()
    assert any("no within-group pairs" in n for n in res.notes)
    assert any("15 rows of the table hold a single pair" in n for n in res.notes)
    assert res.table["var"].isna().all() and (res.table["count"] <= 1).all()


@pytest.mark.parametrize("labels", [[0, 0], [0, 1]])
def test_group_stats_of_two_rows_says_why_the_variance_is_undefined(labels):
    res = _group_stats(X[:2], labels)
    s = res.summary
    value = float(full(X[:2], "cosine")[0, 1])
    side, other = ("within", "across") if labels == [0, 0] else ("across", "within")
    assert s[f"{side}_count"] == 1 and s[f"{other}_count"] == 0
    assert s[f"{side}_mean"] == pytest.approx(value, abs=1e-12)
    assert np.isnan(s[f"{side}_var"]) and np.isnan(s["t"])
    assert any(f"a single {side}-group pair" in n for n in res.notes)
    assert any(f"no {other}-group pairs" in n for n in res.notes)


def test_group_stats_with_some_singleton_groups_names_them():
    res = _group_stats(X[:7], ["a", "a", "a", "b", "b", "c", "d"])
    assert not np.isnan(res.summary["t"])  # the comparison itself is defined
    assert any("2 groups have a single usable row (c, d)" in n for n in res.notes)


def test_group_stats_without_undefined_figures_has_no_notes():
    labels = np.repeat([0, 1], 20)
    res = _group_stats(X, labels, permutations=3)
    assert res.notes == [] and not np.isnan(res.summary["p_permutation"])
