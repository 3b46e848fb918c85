"""Pair values of two prepared blocks, and the walk over block pairs.

Self-similarity visits the upper triangle only: blocks (I, J) with J >= I; diagonal blocks are
computed whole and their strictly upper triangle is what counts as pairs."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from lamina.similarity._args import BOUNDED
from lamina.similarity._prepare import Prepared


def pair_values(
    a: torch.Tensor,
    b: torch.Tensor,
    metric: str,
    value: torch.dtype,
    sq_a: torch.Tensor | None = None,
    sq_b: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    low_out: list | None = None,
    clamp: bool = True,
) -> torch.Tensor:
    """Values (R, C) of ``metric`` between prepared rows ``a`` (R, d) and ``b`` (C, d).
    Products run in ``a.dtype``; results are in ``value``. Cosine and correlation are clamped to
    [-1, 1]; euclidean is ``sqrt(max(|a|^2 + |b|^2 - 2 a.b, 0))``. When products run in lower
    precision, their raw result is appended to ``low_out``; ``clamp=False`` leaves bounded
    values unclamped (for fast-mode top-k candidates, re-scored later)."""
    if a.dtype == value:
        s = torch.mm(a, b.T, out=out) if out is not None else torch.mm(a, b.T)
    else:
        low = torch.mm(a, b.T)
        s = out.copy_(low) if out is not None else low.to(value)
        if low_out is not None:
            low_out.append(low)
    if metric in BOUNDED and clamp:
        s.clamp_(-1.0, 1.0)
    elif metric == "euclidean":
        s.mul_(-2.0).add_(sq_a[:, None]).add_(sq_b[None, :]).clamp_min_(0.0).sqrt_()
    return s


@dataclass
class Block:
    """One block pair: ``values`` (R, C), row positions ``r0:r0+R`` of x and column positions
    ``c0:c0+C`` of y (or x); ``diagonal``: a self block whose rows and columns coincide."""

    values: torch.Tensor
    r0: int
    c0: int
    diagonal: bool
    low: torch.Tensor | None = None  # fast mode: the low-precision products


def block_pairs(n_x: int, n_y: int | None, size: int) -> list[tuple[int, int, int, int]]:
    """(r0, r1, c0, c1) of every block pair: the upper triangle when ``n_y`` is None, with the
    diagonal blocks first (every row then has a k-th best to filter the other blocks with)."""
    starts_x = list(range(0, n_x, size))
    if n_y is not None:
        return [(r0, min(r0 + size, n_x), c0, min(c0 + size, n_y))
                for r0 in starts_x for c0 in range(0, n_y, size)]
    diagonal = [(r0, min(r0 + size, n_x), r0, min(r0 + size, n_x)) for r0 in starts_x]
    rest = [(r0, min(r0 + size, n_x), c0, min(c0 + size, n_x))
            for r0 in starts_x for c0 in starts_x if c0 > r0]
    return diagonal + rest


class _Walk:
    """Hands out block pairs to workers and stops them all when one fails."""

    def __init__(self, pairs: list, bar: Any) -> None:
        self.pairs, self.bar = pairs, bar
        self.next = 0
        self.failed = False
        self.lock = threading.Lock()

    def take(self) -> tuple[int, int, int, int] | None:
        with self.lock:
            if self.failed or self.next >= len(self.pairs):
                return None
            self.next += 1
            return self.pairs[self.next - 1]

    def done(self) -> None:
        if self.bar is not None:
            with self.lock:
                self.bar.update(1)


def _work(px: Prepared, py: Prepared | None, size: int, consumer: Any, walk: _Walk,
          clamp: bool = True) -> Any:
    self_pairs = py is None
    other = px if self_pairs else py
    value, fast = px.precision.value, px.precision.fast
    buf = torch.empty(size * size, dtype=value, device=px.device)
    euclid = px.metric == "euclidean"
    cur, a = None, None
    try:
        while (pair := walk.take()) is not None:
            r0, r1, c0, c1 = pair
            if cur != r0:
                a, cur = px.block(r0, r1, matmul=fast), r0
            b = a if (self_pairs and c0 == r0) else other.block(c0, c1, matmul=fast)
            out = buf[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
            low: list = []
            s = pair_values(
                a, b, px.metric, value,
                px.sqnorm[r0:r1] if euclid else None,
                other.sqnorm[c0:c1] if euclid else None,
                out=out, low_out=low if fast else None, clamp=clamp,
            )
            consumer.consume(Block(s, r0, c0, self_pairs and c0 == r0, low[0] if low else None))
            walk.done()
    except BaseException:
        walk.failed = True
        raise
    return consumer


def default_workers(device: torch.device) -> int:
    """CPU: one worker thread per intra-op thread, each running single-threaded ops (no
    barriers between tiny parallel regions; robust when other processes share the cores).
    CUDA: one."""
    return 1 if device.type == "cuda" else max(1, torch.get_num_threads())


def walk_blocks(
    px: Prepared,
    py: Prepared | None,
    size: int,
    make_consumer: Callable[[], Any],
    workers: int | None = None,
    progress: bool = False,
    clamp: bool = True,
) -> list[Any]:
    """Compute every block pair (the upper triangle for self-similarity) and hand each to a
    consumer's ``consume(block)``; one consumer per worker thread, returned for merging.
    The block values live in a buffer reused by the worker: consume them at once.
    ``clamp=False`` leaves bounded values unclamped (fast mode, for consumers that take moments
    from bit patterns and re-score top-k)."""
    pairs = block_pairs(px.n, None if py is None else py.n, size)
    workers = default_workers(px.device) if workers is None else max(1, int(workers))
    workers = min(workers, len(pairs))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pairs), desc="similarity blocks", unit="block")
    walk = _Walk(pairs, bar)
    try:
        if workers == 1:
            return [_work(px, py, size, make_consumer(), walk, clamp)]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(workers) as pool:
                futures = [pool.submit(_work, px, py, size, make_consumer(), walk, clamp)
                           for _ in range(workers)]
                return [f.result() for f in futures]
        finally:
            torch.set_num_threads(threads)
    finally:
        if bar is not None:
            bar.close()


def upper_pieces(s: torch.Tensor, mask_cache: dict, leaf: int = 256) -> list[torch.Tensor]:
    """The strictly upper triangle of a square block as pieces: off-diagonal rectangles (2-D
    views, no copy) and small flat triangles, recursively halving the diagonal."""
    n = s.shape[0]
    if n <= leaf:
        return [upper_values(s, mask_cache)] if n > 1 else []
    h = (n // 2 + 63) // 64 * 64 if n > 128 else n // 2
    return [*upper_pieces(s[:h, :h], mask_cache, leaf), s[:h, h:],
            *upper_pieces(s[h:, h:], mask_cache, leaf)]


def upper_values(s: torch.Tensor, mask_cache: dict) -> torch.Tensor:
    """Strictly upper-triangular entries (i < j) of a square block, as a flat tensor."""
    n = s.shape[0]
    key = (n, s.device)
    if key not in mask_cache:
        mask_cache[key] = torch.ones(n, n, dtype=torch.bool, device=s.device).triu_(1)
    return s[mask_cache[key]]
