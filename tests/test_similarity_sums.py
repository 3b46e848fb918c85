"""threshold_sums(): weighted sums over the rows at or above thresholds, against numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from safetensors.torch import save_file

import lamina.similarity as sim
from lamina import store as lstore

# every test runs with the compiled CPU kernel (backend="numba") and with the mask products
# (backend="torch"), passed as backend=epilogue (see conftest.epilogue)


def brute(x: np.ndarray, y: np.ndarray, w: np.ndarray, thresholds, metric: str) -> np.ndarray:
    """Explicit float32 values (the engine's own kernel, via matrix()) and numpy sums."""
    vals = sim.matrix(x, y, metric=metric)
    if metric != "dot":  # matrix() writes 0 for rows without a cosine; here they are no pair
        vals[~np.any(x != 0, axis=1)] = np.nan
        vals[:, ~np.any(y != 0, axis=1)] = np.nan
    out = np.zeros((len(x), len(thresholds), w.shape[1]))
    for g, t in enumerate(thresholds):
        member = vals >= np.float32(t)  # NaN (zero vectors) is never a member
        out[:, g] = member.astype(np.float64) @ w
    return out


@pytest.mark.parametrize("metric", ["cosine", "correlation", "dot"])
def test_sums_equal_explicit_membership(epilogue, metric: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((150, 12)).astype(np.float32)
    y = rng.standard_normal((530, 12)).astype(np.float32)
    y[7] = 0.0  # no cosine: contributes nothing
    x[4] = 0.0
    y[9] = y[8]  # an exact duplicate: both count
    w = rng.integers(0, 6, (530, 5)).astype(np.float64)
    thresholds = [-0.2, 0.0, 0.3, 0.71] if metric != "dot" else [-1.0, 2.0, 5.0]
    got = sim.threshold_sums(x, y, w, thresholds, metric=metric, block_size=128, backend=epilogue)
    expected = brute(x, y, w, thresholds, metric)
    np.testing.assert_array_equal(got, expected)
    assert got.shape == (150, len(thresholds), 5)
    if metric == "cosine":
        assert not got[4].any()  # a zero query matches nothing


def test_sparse_weights_a_store_and_a_single_threshold(epilogue, tmp_path) -> None:
    rng = np.random.default_rng(2)
    y = torch.from_numpy(rng.standard_normal((900, 16)).astype(np.float32))
    x = y[[5, 100, 899]] + 0.05 * torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    counts = sp.random(900, 7, density=0.2, random_state=3, format="csr")
    counts.data = np.ceil(counts.data * 9)
    ones = np.ones((900, 1))
    w = sp.hstack([counts, ones]).tocsr()
    got = sim.threshold_sums(x, y, w, 0.5, block_size=64, backend=epilogue)
    expected = brute(x.numpy(), y.numpy(), w.toarray(), [0.5], "cosine")
    np.testing.assert_array_equal(got, expected)
    assert (got[:, 0, -1] >= 1).all()  # each query is close to the row it was made from
    # the same from a lazily read on-disk store of y (rows split over several shards)
    st_dir = tmp_path / "st"
    (st_dir / "shards").mkdir(parents=True)
    shards = []
    for i, start in enumerate(range(0, 900, 256)):
        stop = min(start + 256, 900)
        name = f"{i:05d}.safetensors"
        save_file({"v": y[start:stop].contiguous()}, str(st_dir / "shards" / name))
        shards.append({"file": name, "start": start, "stop": stop})
    (st_dir / "manifest.json").write_text(json.dumps({  # format 1: no checksums to forge
        "format": "lamina.store/1", "model": "none", "sites": ["v"], "shapes": {"v": [16]},
        "positions": "last", "fingerprint": "none", "dtype": "float32", "n_rows": 900,
        "shards": shards}))
    from_store = sim.threshold_sums(x, lstore.open(st_dir)["v"], w, [0.5], block_size=64,
                                    backend=epilogue)
    np.testing.assert_array_equal(from_store, got)


def test_bad_weights_and_thresholds_are_clear_errors(epilogue) -> None:
    x, y = np.ones((3, 4)), np.eye(4)
    with pytest.raises(sim.SimilarityInputError, match="one row per row of y"):
        sim.threshold_sums(x, y, np.ones((5, 2)), 0.5, backend=epilogue)
    with pytest.raises(sim.SimilarityInputError, match="finite"):
        sim.threshold_sums(x, y, np.ones((4, 2)), [0.5, np.nan], backend=epilogue)
    with pytest.raises(sim.SimilarityInputError, match="NaN"):
        sim.threshold_sums(x, y, np.full((4, 1), np.inf), 0.5, backend=epilogue)
