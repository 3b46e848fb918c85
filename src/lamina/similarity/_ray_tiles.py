"""Tiles of the block grid for ``engine="ray"``, and what one Ray task computes on its tile.

The block grid of a scan (row blocks of x against row blocks of y, or the upper triangle of
x against itself) is cut into tiles: a band of consecutive row blocks against a band of
column blocks. Band edges fall on block edges, so every block a task computes is a block of
the single-process walk, with the same rows in the same order. A task gets the prepared rows
of its two bands, runs the single-process worker (:func:`lamina.similarity._blocks._work`
with a fresh consumer) over its tile's block pairs single-threaded, and returns only partial
statistics in its own row positions; the driver maps them to global positions and merges.

Nothing here imports Ray: the tiling rule and the task body are plain functions (tested
without a cluster); :mod:`lamina.similarity._ray_engine` runs them on Ray.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from lamina.similarity._accum import PairGuard
from lamina.similarity._args import Precision
from lamina.similarity._blocks import _Walk, _work, block_pairs
from lamina.similarity._consume import ScanConsumer
from lamina.similarity._prepare import Prepared, RowSource

#: tiles per task slot (CPU or GPU) the rule aims at: the last wave of tasks then leaves
#: slots idle for at most about a quarter of the run
TILES_PER_SLOT = 4
#: least work per tile in multiply-adds (pairs x d); smaller scans get fewer tiles, so a
#: task's fixed cost (a few ms) stays small against its work
MIN_TILE_WORK = 1 << 27


@dataclass(frozen=True)
class Tile:
    """Row positions ``r0:r1`` (of x) against column positions ``c0:c1`` (of y, or of x for
    self pairs). ``band_r``, ``band_c``: band numbers (the object-store entries the task
    reads); ``diagonal``: a self tile whose rows and columns are the same band."""

    r0: int
    r1: int
    c0: int
    c1: int
    band_r: int
    band_c: int
    diagonal: bool

    def n_pairs(self, self_pairs: bool) -> int:
        """Pair values the tile computes (block-level: diagonal blocks whole)."""
        n_r, n_c = self.r1 - self.r0, self.c1 - self.c0
        return n_r * (n_r + 1) // 2 if self.diagonal else n_r * n_c


def bands(n: int, size: int, n_bands: int) -> list[tuple[int, int]]:
    """``n`` rows in blocks of ``size`` cut into at most ``n_bands`` bands of whole blocks:
    (start, stop) row positions; every band but the last holds the same number of blocks."""
    n_blocks = max(1, math.ceil(n / size))
    width = math.ceil(n_blocks / max(1, min(n_bands, n_blocks)))  # blocks per band
    return [(b * size, min((b + width) * size, n)) for b in range(0, n_blocks, width)]


def plan_tiles(n_x: int, n_y: int | None, size: int, d: int, slots: int,
               max_band_rows: int) -> tuple[list[Tile], list[tuple[int, int]],
                                            list[tuple[int, int]]]:
    """The tiling rule. Returns ``(tiles, row_bands, col_bands)`` (col_bands is row_bands for
    self pairs), the largest tiles first.

    Aim: ``TILES_PER_SLOT * slots`` tiles (every CPU/GPU busy, little idle time at the end),
    but no more than the work allows (at least ``MIN_TILE_WORK`` multiply-adds each) and no
    band over ``max_band_rows`` rows (a task holds two bands in its memory budget). Self
    pairs: ``b`` bands give ``b (b + 1) / 2`` tiles (the upper triangle of bands). x against
    y: bands of both sides about equally long (each tile then moves the fewest rows for its
    pairs), so a short side stays one band."""
    n_other = n_x if n_y is None else n_y
    work = (n_x * (n_x - 1) // 2 if n_y is None else n_x * n_y) * d
    target = max(1, min(TILES_PER_SLOT * max(1, slots), work // MIN_TILE_WORK))
    least_x = math.ceil(n_x / max(1, max_band_rows))
    least_y = math.ceil(n_other / max(1, max_band_rows))
    if n_y is None:
        b = 1
        while b * (b + 1) // 2 < target:
            b += 1
        rows = bands(n_x, size, max(b, least_x))
        tiles = [Tile(r0, r1, c0, c1, i, j, i == j)
                 for i, (r0, r1) in enumerate(rows) for j, (c0, c1) in enumerate(rows) if j >= i]
        cols = rows
    else:
        side = math.sqrt(n_x * n_y / target)  # rows per band for square tiles
        n_r = max(1, min(target, round(n_x / side)))
        n_c = max(1, math.ceil(target / n_r))
        rows = bands(n_x, size, max(n_r, least_x))
        cols = bands(n_y, size, max(n_c, least_y))
        tiles = [Tile(r0, r1, c0, c1, i, j, False)
                 for i, (r0, r1) in enumerate(rows) for j, (c0, c1) in enumerate(cols)]
    tiles.sort(key=lambda t: -t.n_pairs(n_y is None))  # longest first: better balance
    return tiles, rows, cols


def tile_maps(tile: Tile, self_pairs: bool) -> tuple[np.ndarray, np.ndarray]:
    """Global positions of a task's local rows and local columns. An off-diagonal self tile
    holds its row band then its column band as one set of rows (local positions of the
    columns start after the row band)."""
    rows = np.arange(tile.r0, tile.r1, dtype=np.int64)
    cols = np.arange(tile.c0, tile.c1, dtype=np.int64)
    if not self_pairs:
        return rows, cols
    both = rows if tile.diagonal else np.concatenate([rows, cols])
    return both, both


def local_pairs(tile: Tile, size: int, self_pairs: bool) -> list[tuple[int, int, int, int]]:
    """The tile's block pairs in the task's local positions (the single-process order: the
    diagonal blocks first, then row by row)."""
    n_r, n_c = tile.r1 - tile.r0, tile.c1 - tile.c0
    if self_pairs and tile.diagonal:
        return block_pairs(n_r, None, size)
    shift = n_r if self_pairs else 0  # columns follow the rows in an off-diagonal self tile
    return [(r0, r1, c0 + shift, c1 + shift) for r0, r1, c0, c1 in block_pairs(n_r, n_c, size)]


# --------------------------------------------------------------------------- inside a task
def readonly_tensor(arr: np.ndarray) -> torch.Tensor:
    """A tensor over an array read from Ray's object store (read-only memory: nothing
    writes into prepared rows, so no copy is made)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "The given NumPy array is not writable"
        return torch.from_numpy(arr)


def band_prepared(parts: list[tuple[np.ndarray, np.ndarray]], metric: str,
                  precision: Precision, device: torch.device) -> Prepared:
    """Prepared rows (n, d) on ``device`` from one or two bands ``(rows, sqnorm)`` (the
    second laid after the first), for the single-process worker."""
    data = [readonly_tensor(a) for a, _ in parts]
    sq = [readonly_tensor(s) for _, s in parts]
    u = (data[0] if len(data) == 1 else torch.cat(data)).to(device)
    sqnorm = (sq[0] if len(sq) == 1 else torch.cat(sq)).to(device)
    mm = u.to(precision.matmul) if precision.fast else None
    n = len(u)
    return Prepared(RowSource(u), metric, precision, device, np.arange(n, dtype=np.int64),
                    np.empty(0, dtype=np.int64), u, mm, sqnorm)


def _setup(spec: dict) -> torch.device:
    dev = torch.device(spec["device"])
    if dev.type == "cpu":
        torch.set_num_threads(1)  # one Ray CPU per task: single-threaded, like a local worker
    return dev


def scan_tile(spec: dict, band_r: tuple, band_c: tuple | None) -> dict[str, Any]:
    """One scan task: the tile ``spec["tile"]`` of prepared bands ``band_r`` (and
    ``band_c``; None for a diagonal self tile), through the single-process worker; returns
    its partial statistics as numpy arrays in local positions (see :func:`tile_maps`)."""
    t0 = time.perf_counter()
    dev = _setup(spec)
    tile, self_pairs, size = spec["tile"], spec["self_pairs"], spec["size"]
    prec, metric = spec["precision"], spec["metric"]
    if self_pairs:
        px = band_prepared([band_r] if band_c is None else [band_r, band_c], metric, prec, dev)
        py = None
    else:
        px = band_prepared([band_r], metric, prec, dev)
        py = band_prepared([band_c], metric, prec, dev)
    plan = replace(spec["plan"], device=dev, n_rows=px.n, bound=None, guard=None)
    if plan.k is not None:
        plan.bound = torch.full((px.n,), -torch.inf, dtype=plan.value, device=dev)
    if spec["guard"] is not None:  # one tile over the limit is over it in all; the driver
        plan.guard = PairGuard(*spec["guard"])  # also checks the merged count
    consumer = ScanConsumer(plan)
    _work(px, py, size, consumer, _Walk(local_pairs(tile, size, self_pairs), None),
          spec["clamp"])
    tot = consumer.epilogue.totals()
    out: dict[str, Any] = {"n_fixed": int(tot.n_fixed)}
    if tot.moments is not None:
        m = tot.moments
        out["moments"] = (m.count, m.total, m.sq, m.vmin, m.vmax)
    if tot.patterns is not None:
        out["patterns"] = tot.patterns.cpu().numpy()
    if tot.hist is not None:
        out["hist"] = tot.hist.cpu().numpy()
    if tot.topk is not None:
        out["topk"] = (tot.topk.values.cpu().numpy(), tot.topk.indices.cpu().numpy())
    if consumer.pairs is not None:
        p = consumer.pairs
        out["pairs"] = (_cat(p.i, np.int64), _cat(p.j, np.int64),
                        _cat(p.v, np.float64 if plan.value == torch.float64 else np.float32))
    out["seconds"] = time.perf_counter() - t0
    return out


def _cat(parts: list[torch.Tensor], dtype: type) -> np.ndarray:
    return torch.cat(parts).cpu().numpy() if parts else np.empty(0, dtype)


def sums_tile(spec: dict, band_r: tuple, band_c: tuple, weights: np.ndarray
              ) -> dict[str, Any]:
    """One threshold-sums task: sums (n_r, G, m) float64 of the weights (n_c, m) of column
    band ``band_c`` over its rows at or above each threshold, for the rows of ``band_r``."""
    from lamina.similarity._sum_consumer import SumConsumer

    t0 = time.perf_counter()
    dev = _setup(spec)
    tile, size, prec, metric = spec["tile"], spec["size"], spec["precision"], spec["metric"]
    px = band_prepared([band_r], metric, prec, dev)
    py = band_prepared([band_c], metric, prec, dev)
    w = readonly_tensor(weights).to(dev)
    consumer = SumConsumer(px.n, torch.as_tensor(spec["thresholds"]), w,
                            torch.arange(py.n, device=dev), spec["compiled"])
    _work(px, py, size, consumer, _Walk(local_pairs(tile, size, False), None))
    return {"sums": consumer.out.cpu().numpy(), "seconds": time.perf_counter() - t0}
