"""The ``backend=`` parameter: validated, recorded in ``meta``, and "auto", "torch" and
"numba" give the same counts, moments, top-k and pairs as numpy brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lamina.similarity as sim
from lamina.errors import LaminaError
from lamina.similarity._args import resolve_backend
from sim_brute import full, topk_reference, upper

BACKENDS = ["auto", "torch", "numba"]
RNG = np.random.default_rng(11)
# integer rows: every dot product is an integer, exact in float32 whatever the summation order
INTS = RNG.integers(-3, 4, size=(90, 8)).astype(np.float32)
# random rows: no ties, so the top-k columns are unique
NORMAL = RNG.standard_normal((160, 12)).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dot_histogram_moments_topk_and_pairs_equal_exact_integer_brute_force(backend):
    exact = INTS.astype(np.int64) @ INTS.astype(np.int64).T  # independent, exact
    i, j = np.triu_indices(len(INTS), 1)
    vals = exact[i, j]
    res = sim.scan(INTS, metric="dot", bins=25, range=(-40, 40), topk=4, threshold=12,
                   block_size=32, backend=backend)
    assert res.meta["backend"] == ("numba" if backend == "auto" else backend)
    assert res.count == len(vals)
    np.testing.assert_array_equal(res.counts, np.histogram(vals, bins=25, range=(-40, 40))[0])
    assert res.mean == pytest.approx(vals.mean(), rel=1e-12)
    assert res.std == pytest.approx(vals.std(), rel=1e-9)
    assert (res.min, res.max) == (vals.min(), vals.max())
    np.testing.assert_array_equal(res.topk_values, topk_reference(exact, 4, True, True))
    for r in range(len(INTS)):  # ties: the columns hold the listed values, self excluded
        assert r not in res.topk_indices[r]
        np.testing.assert_array_equal(exact[r, res.topk_indices[r]], res.topk_values[r])
    sel = vals >= 12
    np.testing.assert_array_equal(res.pairs_i, i[sel])
    np.testing.assert_array_equal(res.pairs_j, j[sel])
    np.testing.assert_array_equal(res.pairs_values, vals[sel])


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_cosine_topk_and_counts_equal_float64_brute_force(backend, fast):
    ref = full(NORMAL, "cosine")
    _, _, vals = upper(ref)
    res = sim.scan(NORMAL, bins=13, topk=5, largest=False, block_size=64, fast=fast,
                   backend=backend)
    assert res.count == len(vals)
    assert res.counts.sum() + res.below + res.above == len(vals)
    if not fast:  # no value within 1e-6 of an edge: float32 rounding moves none across one
        edges = np.linspace(-1, 1, 14)
        assert np.abs(vals[:, None] - edges[None, :]).min() > 1e-6
        np.testing.assert_array_equal(res.counts, np.histogram(vals, bins=13, range=(-1, 1))[0])
    # top-k re-scored in float32 in fast mode: the exact smallest 5 either way
    want = topk_reference(ref, 5, False, True)
    np.testing.assert_allclose(res.topk_values, want, atol=2e-6)
    order = np.argsort(np.where(np.eye(len(ref), dtype=bool), np.inf, ref), axis=1)[:, :5]
    np.testing.assert_array_equal(res.topk_indices, order)


@pytest.mark.parametrize("backend", BACKENDS)
def test_threshold_sums_and_duplicate_groups_on_every_backend(backend):
    y = NORMAL[:100]
    x = NORMAL[[3, 40, 77]] + np.float32(0.01)
    w = RNG.integers(0, 5, size=(100, 2)).astype(np.float64)
    cos = full(x, "cosine", y)
    t = [0.2, 0.5]
    assert np.abs(cos[..., None] - np.array(t)).min() > 1e-5  # no value at a threshold
    got = sim.threshold_sums(x, y, w, t, backend=backend)
    np.testing.assert_array_equal(got, np.stack([cos >= v for v in t], 1).astype(float) @ w)
    rows = NORMAL[:60].copy()
    rows[[10, 20]] = rows[5]
    dups = sim.duplicate_groups(rows, backend=backend)
    assert [g.tolist() for g in dups.groups] == [[5, 10, 20]]
    assert dups.meta["backend"] == ("numba" if backend == "auto" else backend)


def test_auto_picks_torch_where_numba_cannot_run_and_numba_there_is_an_error():
    res = sim.scan(NORMAL, topk=2, dtype="float64")
    assert res.meta["backend"] == "torch"
    ref = topk_reference(full(NORMAL, "cosine"), 2, True, True)
    np.testing.assert_allclose(res.topk_values, ref, rtol=1e-12)
    with pytest.raises(LaminaError, match="float32 values only"):
        sim.scan(NORMAL, dtype="float64", backend="numba")
    # CUDA: checked on the rule itself where no GPU is present
    cuda = torch.device("cuda")
    assert resolve_backend("auto", cuda, torch.float32) == "torch"
    assert resolve_backend("torch", cuda, torch.float32) == "torch"
    with pytest.raises(LaminaError, match="CPU only.*backend='torch' or 'auto'"):
        resolve_backend("numba", cuda, torch.float32)
    if torch.cuda.is_available():
        with pytest.raises(LaminaError, match="CPU only"):
            sim.scan(NORMAL, device="cuda", backend="numba")
        with pytest.raises(LaminaError, match="CPU only"):
            sim.threshold_sums(NORMAL, NORMAL, np.ones(len(NORMAL)), 0.5, device="cuda",
                               backend="numba")


@pytest.mark.parametrize("bad", ["compiled", "NUMBA", None, 1, ""])
def test_unknown_backends_are_named_errors_before_any_work(bad):
    for call in (lambda: sim.scan(NORMAL, backend=bad),
                 lambda: sim.threshold_sums(NORMAL, NORMAL, np.ones(160), 0.5, backend=bad),
                 lambda: sim.duplicate_groups(NORMAL, backend=bad)):
        with pytest.raises(LaminaError, match="unknown backend.*'auto'.*'torch'.*'numba'"):
            call()
    assert sim.BACKENDS == ("auto", "torch", "numba")
