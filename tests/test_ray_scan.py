"""scan and threshold_sums with engine="ray": tiles of the block grid as Ray tasks on a local
runtime (2 CPUs), against engine="local" (counts, top-k and pairs identical, moments to
rounding) and against brute force (numpy, float64)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import lamina.similarity as sim
from lamina import store as lstore
from lamina.errors import LaminaError
from lamina.similarity import _ray_tiles
from lamina.similarity._blocks import block_pairs
from sim_brute import full, topk_reference, upper
from test_approximation import setup  # noqa: F401 - the trained model and its store

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_local():
    """This module's own local runtime (never a shared one), shut down at the end."""
    assert not ray.is_initialized()
    # address="local": a new runtime even while another process's cluster is the machine's
    # "current" one (ray.init() would join that)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def many_tiles(monkeypatch):
    """Small test scans get several tiles (the rule would give one task to tiny scans)."""
    monkeypatch.setattr(_ray_tiles, "MIN_TILE_WORK", 1)


def same_scan(a: sim.ScanResult, b: sim.ScanResult) -> None:
    """``b`` (ray) equals ``a`` (local): identical counts, extremes, top-k and pairs (the
    columns of exactly tied top-k values in any order, as between two local runs); mean and
    std to rounding (float64 sums in another grouping)."""
    assert a.count == b.count and a.n_zero == b.n_zero and a.n_zero_y == b.n_zero_y
    assert a.min == b.min and a.max == b.max
    np.testing.assert_allclose([b.mean, b.std], [a.mean, a.std], rtol=1e-9, atol=1e-12)
    if a.topk_indices is not None:  # the columns of tied values may come in either order
        tied = np.zeros(a.topk_values.shape, bool)
        same = a.topk_values[:, 1:] == a.topk_values[:, :-1]
        tied[:, 1:] |= same
        tied[:, :-1] |= same
        np.testing.assert_array_equal(b.topk_indices[~tied], a.topk_indices[~tied])
        np.testing.assert_array_equal(np.sort(b.topk_indices, 1), np.sort(a.topk_indices, 1))
    for name in ("counts", "rows", "topk_values", "pairs_i", "pairs_j",
                 "pairs_values", "zero_rows"):
        got, want = getattr(b, name), getattr(a, name)
        assert (got is None) == (want is None), name
        if want is not None:
            np.testing.assert_array_equal(got, want, err_msg=name)
    assert (a.below, a.above) == (b.below, b.above)
    assert b.meta["engine"] == "ray" and a.meta["engine"] == "local"
    assert b.meta["ray_tasks"] > 1 and b.meta["ray_bytes_put"] > 0
    assert b.meta["ray_bytes_to_tasks"] >= b.meta["ray_bytes_put"]


def data(n: int, d: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


# --------------------------------------------------------------------------- tiling (no Ray)
@pytest.mark.parametrize("n_x,n_y,size,slots,limit", [
    (1000, None, 7, 2, 10**9), (777, None, 64, 3, 200), (1001, None, 300, 8, 10**9),
    (65, 1001, 64, 2, 10**9), (777, 1001, 7, 4, 100), (5, None, 64, 2, 10**9)])
def test_tiles_cover_every_block_pair_once(n_x, n_y, size, slots, limit) -> None:
    tiles, rows, cols = _ray_tiles.plan_tiles(n_x, n_y, size, 16, slots, limit)
    self_pairs = n_y is None
    seen = []
    for t in tiles:
        rmap, cmap = _ray_tiles.tile_maps(t, self_pairs)
        for r0, r1, c0, c1 in _ray_tiles.local_pairs(t, size, self_pairs):
            seen.append((int(rmap[r0]), int(rmap[r1 - 1]) + 1, int(cmap[c0]),
                         int(cmap[c1 - 1]) + 1))
    assert sorted(seen) == sorted(block_pairs(n_x, n_y, size))  # each block pair once
    for lo, hi in rows + cols:  # bands start on block edges and respect the row limit
        assert lo % size == 0 and (hi - lo <= max(limit, size) or hi - lo <= size)
    if limit == 10**9 and len(seen) >= 4 * slots:  # enough tiles for every slot
        assert len(tiles) >= min(4 * slots, len(seen)) * 0.5


# --------------------------------------------------------------------------- scans
CASES = {  # name: (n, n_y, block, metric, options)
    "self-cosine-b7": (1000, None, 7, "cosine", dict(bins=40, topk=5, threshold=0.75)),
    # 961 usable rows (two are zero): one row past 15 blocks, one block per band, so the
    # last band is that single row
    "self-one-extra-row": (963, None, 64, "cosine", dict(bins=30, topk=3, threshold=0.7,
                                                         workers=40)),
    "self-correlation-smallest": (777, None, 64, "correlation",
                                  dict(bins=30, topk=4, largest=False, threshold=-0.7,
                                       threshold_below=True)),
    "self-dot-b300": (1001, None, 300, "dot", dict(bins=25, range=(-40, 40), topk=3,
                                                  threshold=14.0)),
    "xy-euclidean": (777, 1001, 64, "euclidean", dict(bins=20, range=(0, 10), topk=6,
                                                      threshold=2.2, threshold_below=True)),
    "xy-cosine-smallest-b7": (300, 1001, 7, "cosine", dict(bins=10, topk=3, largest=False)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_ray_scan_equals_local_and_brute_force(ray_local, case) -> None:
    n, n_y, block, metric, opts = CASES[case]
    x = data(n)
    if metric == "cosine":
        x[[3, n // 2]] = 0.0  # zero rows: in no pair
    y = None if n_y is None else data(n_y, seed=1)
    local = sim.scan(x, y, metric=metric, block_size=block, **opts)
    res = sim.scan(x, y, metric=metric, block_size=block, engine="ray", **opts)
    same_scan(local, res)
    if "workers" in opts:
        assert res.meta["ray_bands"] == (16, 16) and res.meta["ray_tasks"] == 16 * 17 // 2
    # independently: float64 brute force
    m = full(x, metric, y)
    vals = upper(m)[2] if y is None else m[~np.isnan(m)]
    assert res.count == len(vals)
    assert res.mean == pytest.approx(vals.mean(), rel=1e-5, abs=1e-5)
    k, largest = opts["topk"], opts.get("largest", True)
    ref = topk_reference(m, k, largest, y is None)
    ok = ~np.isnan(res.topk_values[:, 0])
    np.testing.assert_allclose(res.topk_values[ok], ref[ok], rtol=1e-4, atol=1e-4)
    if "threshold" in opts:
        t = opts["threshold"]
        i, j, v = upper(m) if y is None else (*np.nonzero(~np.isnan(m)), m[~np.isnan(m)])
        sel = (v <= t) if opts.get("threshold_below") else (v >= t)
        far = np.abs(v - t) > 1e-4  # away from the threshold float32 and float64 agree
        got = set(zip(res.pairs_i.tolist(), res.pairs_j.tolist(), strict=True))
        want = set(zip(i[sel & far].tolist(), j[sel & far].tolist(), strict=True))
        assert want <= got and len(got - want) <= int((~far).sum())


def test_ray_subsets_fast_mode_and_float64(ray_local) -> None:
    x, y = data(900, 16, seed=2), data(700, 16, seed=3)
    sub, sub_y = np.arange(3, 880, 2), np.arange(700) % 3 != 0
    for opts in (dict(y=y, subset=sub, subset_y=sub_y, bins=20, topk=4, threshold=0.6),
                 dict(subset=sub, bins=20, topk=4, threshold=0.6, dtype="float64"),
                 dict(dtype="bfloat16", bins=50, topk=5, threshold=0.7),
                 dict(y=y, fast=True, bins=50, topk=3, largest=False, metric="euclidean",
                      range=(0, 12))):
        kw = dict(block_size=64, **opts)
        local, res = sim.scan(x, **kw), sim.scan(x, engine="ray", **kw)
        same_scan(local, res)
    assert res.meta["fast"] and res.meta["ray_device"] == "cpu"
    # the subset's result rows are the original ids; against brute force on those rows
    res = sim.scan(x, y, subset=sub, subset_y=sub_y, topk=2, block_size=64, engine="ray")
    np.testing.assert_array_equal(res.rows, sub)
    ref = topk_reference(full(x[sub], "cosine", y[sub_y]), 2, True, False)
    np.testing.assert_allclose(res.topk_values, ref, rtol=1e-5, atol=1e-5)
    assert np.isin(res.topk_indices, np.flatnonzero(sub_y)).all()


def store_of(x: np.ndarray, path) -> lstore.Store:
    """A store (format 1, several shards) holding ``x`` as site "v"."""
    (path / "shards").mkdir(parents=True)
    shards = []
    for i, start in enumerate(range(0, len(x), 256)):
        stop = min(start + 256, len(x))
        name = f"{i:05d}.safetensors"
        save_file({"v": torch.from_numpy(x[start:stop]).contiguous()},
                  str(path / "shards" / name))
        shards.append({"file": name, "start": start, "stop": stop})
    (path / "manifest.json").write_text(json.dumps({
        "format": "lamina.store/1", "model": "none", "sites": ["v"],
        "shapes": {"v": [x.shape[1]]}, "positions": "last", "fingerprint": "none",
        "dtype": "float32", "n_rows": len(x), "shards": shards}))
    return lstore.open(path)


def test_ray_scan_and_sums_on_a_store(ray_local, tmp_path) -> None:
    x = data(1000, 16, seed=4)
    site = store_of(x, tmp_path / "st")["v"]
    local = sim.scan(x, bins=30, topk=4, threshold=0.8, block_size=64)
    # a memory budget too small to hold the rows: bands are read from the store as needed
    for memory in (None, 1 << 16):
        res = sim.scan(site, bins=30, topk=4, threshold=0.8, block_size=64, memory=memory,
                       engine="ray", max_pairs=10**6)
        same_scan(local, res)
        assert res.meta["cached"] == (memory is None)
    w = np.random.default_rng(5).integers(0, 9, (1000, 3)).astype(np.float64)
    q = x[:37] + 0.1
    want = sim.threshold_sums(q, x, w, [0.2, 0.5], block_size=64)
    got = sim.threshold_sums(q, site, w, [0.2, 0.5], block_size=64, engine="ray",
                             memory=1 << 16)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("metric", ["cosine", "dot"])
def test_ray_threshold_sums(ray_local, metric) -> None:
    rng = np.random.default_rng(6)
    x, y = data(130, 12, seed=7), data(1001, 12, seed=8)
    x[4], y[9] = 0.0, 0.0
    thresholds = [-0.2, 0.3, 0.71] if metric == "cosine" else [-1.0, 2.0]
    ints = rng.integers(0, 6, (1001, 4)).astype(np.float64)
    for block in (7, 64, 300):
        got = sim.threshold_sums(x, y, ints, thresholds, metric=metric, block_size=block,
                                 engine="ray")
        np.testing.assert_array_equal(
            got, sim.threshold_sums(x, y, ints, thresholds, metric=metric, block_size=block))
    vals = sim.matrix(x, y, metric=metric)  # independently: explicit membership
    if metric == "cosine":
        vals[4], vals[:, 9] = np.nan, np.nan
    brute = np.stack([(vals >= np.float32(t)).astype(np.float64) @ ints for t in thresholds], 1)
    np.testing.assert_array_equal(got, brute)
    floats = rng.random((1001, 2))
    got = sim.threshold_sums(x, y, floats, thresholds, metric=metric, block_size=64,
                             engine="ray")
    brute = np.stack([(vals >= np.float32(t)).astype(np.float64) @ floats
                      for t in thresholds], 1)
    np.testing.assert_allclose(got, brute, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- errors
def test_errors_reach_the_caller_as_lamina_errors(ray_local) -> None:
    x = data(600, 8, seed=9)
    # raised inside a task: one tile alone holds more pairs than max_pairs
    with pytest.raises(sim.TooManyPairsError) as local:
        sim.scan(x, threshold=0.0, max_pairs=5, block_size=64)
    with pytest.raises(sim.TooManyPairsError) as err:
        sim.scan(x, threshold=0.0, max_pairs=5, block_size=64, engine="ray")
    assert str(err.value) == str(local.value)
    assert "Ray" not in str(err.value) and "Traceback" not in str(err.value)
    # only the merged count is over the limit: the driver's check, as local
    n = sim.scan(x, threshold=0.3, block_size=64).pairs_i.size
    with pytest.raises(sim.TooManyPairsError, match=f"more than {n - 1:,} pairs"):
        sim.scan(x, threshold=0.3, block_size=64, max_pairs=n - 1, engine="ray")
    assert sim.scan(x, threshold=0.3, block_size=64, max_pairs=n, engine="ray").pairs_i.size == n
    x[17, 3] = np.nan
    with pytest.raises(sim.SimilarityInputError, match="row 17 contains NaN") as err:
        sim.scan(x, bins=10, engine="ray")
    with pytest.raises(sim.SimilarityInputError) as local:
        sim.scan(x, bins=10)
    assert str(err.value) == str(local.value)


def test_a_task_error_is_unwrapped(ray_local) -> None:
    from lamina.similarity._ray_engine import _get

    @ray.remote
    def fails():
        raise sim.SimilarityInputError("row 3 contains NaN or infinite values; drop it")

    with pytest.raises(sim.SimilarityInputError, match="^row 3 contains NaN"):
        _get(ray, fails.remote())


def test_bad_engine_and_device_are_refused(ray_local) -> None:
    x = data(20, 4)
    with pytest.raises(LaminaError, match="engine must be 'local' or 'ray', not 'rey'"):
        sim.scan(x, engine="rey")
    with pytest.raises(LaminaError, match="engine must be 'local' or 'ray', not None"):
        sim.threshold_sums(x, x, np.ones(20), 0.5, engine=None)
    with pytest.raises(sim.SimilarityInputError, match="Ray cluster has no GPUs"):
        sim.scan(x, engine="ray", device="cuda")


# --------------------------------------------------------------------------- approximation
def test_approximation_on_ray_equals_local(ray_local, setup) -> None:  # noqa: F811
    from typer.testing import CliRunner

    from lamina.analyses.approximation import approximation
    from lamina.cli import app

    model, store, sub = setup
    prompts = [sub.strings[i] for i in (3, 50, 400, 1200)] + ["zzzzz"]
    kw = dict(thresholds=[0.9, 0.8, 0.85], weights=[0.5, 1.0, 2.0], progress=False)
    local = approximation(model, store, prompts, **kw)
    res = approximation(model, store, prompts, engine="ray", **kw)
    assert res.meta["engine"] == "ray" and local.meta["engine"] == "local"
    cols = [c for c in local.table.columns if c.startswith("matches_")]
    assert cols and local.table[cols].equals(res.table[cols])  # integer sums: identical
    for c in ("hellinger", "hellinger_with_self", "hellinger_without_self"):
        np.testing.assert_allclose(res.table[c], local.table[c], rtol=1e-12, atol=1e-12)
    with pytest.raises(LaminaError, match="engine must be 'local' or 'ray'"):
        approximation(model, store, prompts, engine="threads", **kw)
    runner = CliRunner()
    args = ["approximate", "--model", model.name, "--store", str(store.path), "--prompts",
            "10", "--thresholds", "0.9,0.8,0.85", "--weights", "1,1,2"]
    plain, on_ray = runner.invoke(app, args), runner.invoke(app, [*args, "--ray"])
    assert plain.exit_code == 0 and on_ray.exit_code == 0, on_ray.output
    def summary(out: str) -> list[str]:  # the printed figures, without progress bars
        return re.findall(r"(?:with_self|without_self): mean[^\n]*|thresholds \[[^\n]*", out)

    assert summary(on_ray.output) == summary(plain.output)
    assert len(summary(plain.output)) == 3
    assert "similarity tiles" in on_ray.output  # one bar: lamina's, over the tasks
    alone = runner.invoke(app, [*args, "--address", "localhost:1"])
    assert alone.exit_code != 0 and "--address needs --ray" in alone.output
