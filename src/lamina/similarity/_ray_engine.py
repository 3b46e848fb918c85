"""``engine="ray"`` for :func:`~lamina.similarity.scan` and
:func:`~lamina.similarity.threshold_sums`: Ray tasks instead of the worker threads.

The driver prepares the rows once (as the single-process engine does), cuts the block grid
into tiles (:func:`lamina.similarity._ray_tiles.plan_tiles`) and puts each band of prepared
rows into Ray's object store once (a band of a store too large for the memory budget is read
and put when the first task that needs it is submitted), so no shared filesystem is needed.
Each task runs the single-process worker over its tile and returns partial statistics; the
driver merges them as tasks finish (``ray.wait``) with the engine's own merge functions.
GPU tasks (``num_gpus=1``, device cuda) when the cluster has GPUs, else CPU tasks
(``num_cpus=1``, torch single-threaded). Errors raised in a task reach the caller as the same
:class:`lamina.errors.LaminaError`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from lamina.errors import LaminaError
from lamina.similarity._accum import Moments, PairCollector, PairGuard
from lamina.similarity._args import block_size, resolve_device
from lamina.similarity._consume import merge
from lamina.similarity._errors import SimilarityInputError
from lamina.similarity._plan import EpilogueTotals, ScanPlan, ScanTotals
from lamina.similarity._prepare import Prepared
from lamina.similarity._ray_tiles import (
    Tile,
    plan_tiles,
    readonly_tensor,
    scan_tile,
    sums_tile,
    tile_maps,
)
from lamina.similarity._topk import TopK

_GiB = 1 << 30
_REMOTE: dict[str, Any] = {}


def ray_device(device: Any) -> tuple[torch.device, int]:
    """The device Ray tasks compute on and the number of task slots (GPUs or CPUs of the
    cluster). ``None``: CUDA when the cluster has GPUs, else CPU. Starts Ray on this machine
    through :func:`lamina.ray_runtime.ensure_ray` when no runtime is running."""
    from lamina.ray_runtime import ensure_ray

    ray = ensure_ray()
    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), max(1, int(res.get("CPU", 1)))
    if device is None:
        return (torch.device("cuda"), gpus) if gpus else (torch.device("cpu"), cpus)
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        resolve_device(device)  # the single-process engine's error for this value
        raise SimilarityInputError(f"unknown device {device!r}; pass 'cpu', 'cuda' or None.")
    if dev.type == "cuda" and not gpus:
        raise SimilarityInputError(
            f"device {device!r} was asked but the Ray cluster has no GPUs; pass device='cpu' "
            "(or None).")
    return (torch.device("cuda"), gpus) if dev.type == "cuda" else (dev, cpus)


def task_block_size(dev: torch.device, memory: int | None, block: int | None,
                    cpu_size: int) -> tuple[int, int]:
    """(rows per block, memory budget of one task): the driver's on CPU; on CUDA the
    single-process default for a GPU (``memory`` or 8 GiB: the driver cannot see the GPUs)."""
    if dev.type == "cpu":
        return cpu_size, 0
    budget = memory if memory is not None else 8 * _GiB
    return block_size(dev, budget, block), budget


def _remote(name: str, fn: Callable) -> Any:
    import ray

    if name not in _REMOTE:
        _REMOTE[name] = ray.remote(fn)
    return _REMOTE[name]


class _Bands:
    """Object-store entries of prepared bands ``(rows, sqnorm)`` of one input, put once,
    when first needed, and released by the driver after the last task that reads them."""

    def __init__(self, p: Prepared, spans: list[tuple[int, int]], extra: Any = None) -> None:
        self.p, self.spans, self.extra = p, spans, extra
        self.refs: dict[int, Any] = {}
        self.uses: dict[int, int] = {}
        self.bytes = 0

    def get(self, b: int) -> Any:
        import ray

        if b not in self.refs:
            p0, p1 = self.spans[b]
            if self.extra is None:  # cached rows, or read and prepared now
                value = (self.p.block(p0, p1).cpu().numpy(),
                         self.p.sqnorm[p0:p1].cpu().numpy())
            else:
                value = (self.extra(p0, p1),)
            self.bytes += sum(a.nbytes for a in value)
            self.refs[b] = ray.put(value if self.extra is None else value[0])
        return self.refs[b]

    def need(self, b: int) -> None:
        """One more task will read band ``b``."""
        self.uses[b] = self.uses.get(b, 0) + 1

    def used(self, b: int) -> None:
        self.uses[b] -= 1
        if not self.uses[b]:
            del self.refs[b]  # pending tasks keep the object alive


def _run(tiles: list[Tile], submit: Callable[[Tile], Any], fold: Callable[[Tile, dict], None],
         slots: int, progress: bool) -> dict[str, float]:
    """Submit the tiles' tasks (at most ``2 * slots`` in flight), fold each result as it
    arrives; a LaminaError raised in a task is raised here as itself."""
    import ray

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(tiles), desc="similarity tiles", unit="task")
    pending: dict[Any, Tile] = {}
    todo = list(tiles)
    stats = {"task_seconds": 0.0, "bytes_from_tasks": 0}
    try:
        while todo or pending:
            while todo and len(pending) < 2 * max(1, slots):
                tile = todo.pop(0)
                pending[submit(tile)] = tile
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                tile = pending.pop(ref)
                part = _get(ray, ref)
                stats["task_seconds"] += part.pop("seconds")
                stats["bytes_from_tasks"] += sum(
                    a.nbytes for v in part.values() for a in (v if isinstance(v, tuple) else
                                                              (v,)) if hasattr(a, "nbytes"))
                fold(tile, part)
                if bar is not None:
                    bar.update(1)
    except BaseException:
        for ref in pending:
            ray.cancel(ref)
        for ref in pending:  # collected, so Ray does not log them as unhandled errors
            try:
                ray.get(ref)
            except Exception:  # noqa: BLE001 - cancelled, or failed too: the first error wins
                pass
        raise
    finally:
        if bar is not None:
            bar.close()
    return stats


def _get(ray: Any, ref: Any) -> dict:
    """``ray.get``, with a LaminaError raised in the task raised as itself (not Ray's
    wrapper and its traceback)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, LaminaError):
            raise cause from None
        raise


def _options(dev: torch.device) -> dict[str, Any]:
    return dict(num_gpus=1, num_cpus=1) if dev.type == "cuda" else dict(num_cpus=1)


def _meta(tiles: list, slots: int, dev: torch.device, stats: dict, put: int, moved: int,
          t0: float) -> dict[str, Any]:
    return dict(engine="ray", ray_tasks=len(tiles), ray_slots=slots, ray_device=str(dev),
                ray_bytes_put=put, ray_bytes_to_tasks=moved,
                ray_bytes_from_tasks=stats["bytes_from_tasks"],
                ray_task_seconds=stats["task_seconds"],
                ray_seconds=time.perf_counter() - t0)


def _band_limit(p: Prepared, budget: int) -> int:
    """Most rows in a band: a task holds two bands (and, off the diagonal, a copy side by
    side) in a quarter of its budget."""
    item = p.precision.value.itemsize + (p.precision.matmul.itemsize if p.precision.fast else 0)
    return max(1, budget // 4 // max(1, 2 * p.d * item))


def scan_tiles(px: Prepared, py: Prepared | None, size: int, plan: ScanPlan, clamp: bool,
               dev: torch.device, slots: int, budget: int, progress: bool
               ) -> tuple[ScanTotals, dict[str, Any]]:
    """The scan's block pairs as Ray tasks; returns the merged totals (as
    :func:`lamina.similarity._consume.merge` of the local workers) and ``meta`` entries."""
    t0 = time.perf_counter()
    self_pairs = py is None
    tiles, rows, cols = plan_tiles(px.n, None if self_pairs else py.n, size, px.d, slots,
                                   _band_limit(px, budget))
    bx = _Bands(px, rows)
    by = bx if self_pairs else _Bands(py, cols)
    for t in tiles:
        bx.need(t.band_r)
        if not t.diagonal:
            by.need(t.band_c)
    guard = plan.guard
    base = dict(self_pairs=self_pairs, size=size, precision=px.precision, metric=px.metric,
                plan=replace(plan, bound=None, guard=None), device=str(dev), clamp=clamp,
                guard=None if guard is None else (guard.threshold, guard.below,
                                                  guard.max_pairs, guard.note))
    task = _remote("scan", scan_tile).options(**_options(dev))
    moved = [0]

    def submit(t: Tile) -> Any:
        a = bx.get(t.band_r)
        b = None if t.diagonal else by.get(t.band_c)
        span = (t.r1 - t.r0) + (0 if t.diagonal else t.c1 - t.c0)
        moved[0] += span * px.d * px.precision.value.itemsize
        ref = task.remote({**base, "tile": t}, a, b)
        bx.used(t.band_r)
        if not t.diagonal:
            by.used(t.band_c)
        return ref

    fold = _ScanFold(plan, px.n, guard)
    stats = _run(tiles, submit, lambda t, part: fold.add(t, part, self_pairs), slots, progress)
    meta = _meta(tiles, slots, dev, stats, bx.bytes + (0 if self_pairs else by.bytes),
                 moved[0], t0)
    meta["ray_bands"] = (len(rows), len(cols))
    return merge([fold.consumer()], plan), meta


class _ScanFold:
    """The running merge of task results in global positions: moments summed about the
    plan's common shift (what one worker does), counts added, top-k lists of the rows a tile
    touched merged, pairs appended (the merged count checked against ``max_pairs``)."""

    def __init__(self, plan: ScanPlan, n: int, guard: PairGuard | None) -> None:
        self.plan = plan
        self.moments = Moments(plan.shift or 0.0)
        self.patterns: np.ndarray | None = None
        self.hist: np.ndarray | None = None
        self.n_fixed = 0
        self.topk = None if plan.k is None else TopK(n, plan.k, torch.device("cpu"),
                                                      dtype=plan.value)
        self.pairs = None if guard is None else PairCollector(
            PairGuard(guard.threshold, guard.below, guard.max_pairs, guard.note))

    def add(self, tile: Tile, part: dict, self_pairs: bool) -> None:
        rows, cols = tile_maps(tile, self_pairs)
        self.n_fixed += part["n_fixed"]
        if "moments" in part:
            m, (count, total, sq, vmin, vmax) = self.moments, part["moments"]
            m.count += count
            m.total += total
            m.sq += sq
            m.vmin, m.vmax = min(m.vmin, vmin), max(m.vmax, vmax)
        for name in ("patterns", "hist"):
            if name in part:
                cur = getattr(self, name)
                setattr(self, name, part[name] if cur is None else cur + part[name])
        if "topk" in part:
            vals, idx = (readonly_tensor(a) for a in part["topk"])
            idx = torch.where(idx >= 0, torch.from_numpy(cols)[idx.clamp_min(0)], -1)
            self.topk.merge(torch.from_numpy(rows), vals, idx)
        if "pairs" in part and len(part["pairs"][0]):
            i, j, v = part["pairs"]
            self.pairs.guard.add(len(i))
            self.pairs.i.append(torch.from_numpy(rows[i]))
            self.pairs.j.append(torch.from_numpy(cols[j]))
            self.pairs.v.append(readonly_tensor(v))

    def consumer(self) -> SimpleNamespace:
        """All tasks as one worker, for :func:`lamina.similarity._consume.merge`."""
        pat = None if self.patterns is None else torch.from_numpy(np.array(self.patterns))
        hist = None if self.hist is None else torch.from_numpy(np.array(self.hist))
        totals = EpilogueTotals(moments=None if pat is not None else self.moments,
                                patterns=pat, hist=hist, n_fixed=self.n_fixed, topk=self.topk)
        return SimpleNamespace(epilogue=SimpleNamespace(totals=lambda: totals),
                               pairs=self.pairs)


def sums_tiles(px: Prepared, py: Prepared, size: int, thresholds: torch.Tensor,
               w: torch.Tensor, y_rows: torch.Tensor, compiled: bool, dev: torch.device,
               slots: int, budget: int, progress: bool) -> tuple[np.ndarray, dict[str, Any]]:
    """Threshold sums (px.n, G, m) float64 of the usable rows as Ray tasks, and ``meta``."""
    t0 = time.perf_counter()
    tiles, rows, cols = plan_tiles(px.n, py.n, size, px.d, slots, _band_limit(px, budget))
    bx = _Bands(px, rows)
    by = _Bands(py, cols)

    def band_weights(p0: int, p1: int) -> np.ndarray:
        return w.index_select(0, y_rows[p0:p1]).cpu().numpy()  # (rows, m) of this band

    bw = _Bands(py, cols, extra=band_weights)
    for t in tiles:
        for b, k in ((bx, t.band_r), (by, t.band_c), (bw, t.band_c)):
            b.need(k)
    base = dict(size=size, precision=px.precision, metric=px.metric, device=str(dev),
                thresholds=thresholds.cpu().numpy(), compiled=compiled)
    task = _remote("sums", sums_tile).options(**_options(dev))
    moved = [0]

    def submit(t: Tile) -> Any:
        ref = task.remote({**base, "tile": t}, bx.get(t.band_r), by.get(t.band_c),
                          bw.get(t.band_c))
        moved[0] += ((t.r1 - t.r0 + t.c1 - t.c0) * px.d * px.precision.value.itemsize
                     + (t.c1 - t.c0) * w.shape[1] * 4)
        for b, k in ((bx, t.band_r), (by, t.band_c), (bw, t.band_c)):
            b.used(k)
        return ref

    out = np.zeros((px.n, len(thresholds), w.shape[1]), dtype=np.float64)

    def fold(t: Tile, part: dict) -> None:
        out[t.r0 : t.r1] += part["sums"]

    stats = _run(tiles, submit, fold, slots, progress)
    meta = _meta(tiles, slots, dev, stats, bx.bytes + by.bytes + bw.bytes, moved[0], t0)
    return out, meta
