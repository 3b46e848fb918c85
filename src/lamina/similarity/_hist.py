"""Exact streaming histogram: counts identical to ``numpy.histogram`` on the same values.

Bins follow numpy: ``edges[k] <= v < edges[k+1]``, the last bin closed; integer ``bins`` give
numpy's edges for data of the compute dtype. Each block is binned by one affine map
``floor(v * a + b)`` (vectorised); values whose mapped position lies within a bound ``delta``
on its rounding error of an edge are re-binned exactly against the edges in float64 (about
one value in 10^4, found through chunk minima, so no full-size mask is built)."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch

from lamina.similarity._errors import SimilarityInputError


def make_edges(bins: Any, range: Any, dtype: torch.dtype) -> np.ndarray:
    """numpy's bin edges for ``bins`` (an int with ``range``, or an increasing edge array);
    edges must be finite and increase strictly in ``dtype``, the dtype of the values."""
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    name = np.dtype(np_dtype).name
    if isinstance(bins, numbers.Integral) and not isinstance(bins, bool):
        if bins < 1:
            raise SimilarityInputError(f"bins must be a positive integer, got {bins}.")
        if not _is_pair(range):
            raise SimilarityInputError(
                f"range must be a pair (low, high) when bins is an integer, got {range!r}.")
        range = tuple(r.item() if isinstance(r, (np.ndarray, torch.Tensor)) and r.ndim == 0
                      else r for r in range)
        if any(isinstance(r, bool) or not isinstance(r, numbers.Real) for r in range):
            raise SimilarityInputError(f"range must be two numbers (low, high), got {range!r}.")
        lo, hi = float(range[0]), float(range[1])
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise SimilarityInputError(
                f"range must be finite with low < high, got {range!r}; pass e.g. range=(-1, 1).")
        if max(abs(lo), abs(hi)) > float(np.finfo(np_dtype).max):
            raise SimilarityInputError(
                f"range={range!r} lies beyond the {name} values the scan computes "
                f"(largest {np.finfo(np_dtype).max:.3g}); pass a narrower range"
                + (" or dtype='float64'." if np_dtype == np.float32 else ".")
            )
        try:  # the caller's range objects as given: numpy's edges depend on their types
            with np.errstate(over="ignore", invalid="ignore"):
                edges = np.histogram_bin_edges(np.empty(0, np_dtype), bins=int(bins),
                                               range=range)
        except ValueError:  # numpy: "Too many bins for data range"
            edges = np.zeros(2)  # reported below
    else:
        try:
            edges = np.asarray(bins, dtype=np.float64)
        except (TypeError, ValueError):
            edges = np.empty(0)
        if edges.ndim != 1 or len(edges) < 2 or not np.all(np.isfinite(edges)):
            raise SimilarityInputError(
                f"bins must be an integer or a 1-D array of >= 2 finite edges, got {bins!r}.")
    if np.any(np.diff(edges) <= 0):
        raise SimilarityInputError(
            f"bin edges must increase strictly (as {name} numbers); pass increasing edges, "
            "or fewer bins or a wider range."
        )
    return edges


def _is_pair(value: Any) -> bool:
    try:
        return len(value) == 2 and not isinstance(value, str)
    except TypeError:
        return False


class ExactHistogram:
    """Accumulates counts of values per bin, plus the numbers below and above the edges.

    ``bounds``: known limits of the values (e.g. (-1, 1) for cosine), which let the clamp be
    skipped when the edges cover them."""

    def __init__(
        self,
        edges: np.ndarray,
        dtype: torch.dtype,
        device: torch.device,
        bounds: tuple[float, float] | None = None,
    ) -> None:
        self.edges = edges
        self.nb = nb = len(edges) - 1
        self.device = device
        self.dtype = dtype
        self.edges64 = torch.as_tensor(edges, dtype=torch.float64, device=device)
        lo, hi = float(edges[0]), float(edges[-1])
        a = nb / (hi - lo)
        grid = lo + np.arange(nb + 1) * ((hi - lo) / nb)
        dev = float(np.max(np.abs(edges - grid))) * a  # distance of edges from the grid, in bins
        unit = float(torch.finfo(dtype).eps) / 2
        big = max(abs(lo), abs(hi)) + (hi - lo) / nb
        self.a, self.b = a, 1.0 - lo * a  # value -> 1 + position in bins
        # rounding of a, of v*a, of b, of the sum, and of the float edges (all relative `unit`),
        # in bins; doubled for safety
        self.delta = dev + 2 * unit * (3 * big * a + nb + 3 + abs(self.b))
        self.affine = self.delta < 0.05
        self.qdtype = torch.uint8 if nb + 2 <= 255 else torch.int32
        self.clamp = bounds is None or bounds[0] < lo or bounds[1] > hi
        self.counts = torch.zeros(nb + 2, dtype=torch.int64, device=device)  # below, bins, above
        self.n_fixed = 0
        self._buf: torch.Tensor | None = None
        self._ar64 = torch.arange(64, device=device)
        self._offset = torch.tensor(self.b + self.delta, dtype=dtype, device=device)
        self._q: torch.Tensor | None = None

    # ------------------------------------------------------------------ public
    def add(self, v: torch.Tensor) -> None:
        """Count the values of ``v`` (any shape)."""
        self.counts += self._bincount(self.bin_index(v))

    def bin_index(self, v: torch.Tensor) -> torch.Tensor:
        """Exact bin of every value of ``v`` (1-D, or 2-D possibly strided) as a flat integer
        tensor in row-major order: 0 below the edges, 1..nb the bins, nb+1 above. The returned
        tensor is an internal buffer, valid until the next call."""
        if not self.affine:
            return self._exact(v.reshape(-1))
        n = v.numel()
        buf, q = self._buffers(n)
        # position + delta (one fused pass): bins are right except near edges
        torch.add(self._offset, v, alpha=self.a, out=buf.view(v.shape))
        if self.clamp:
            buf.clamp_(0.5, self.nb + 1.5)
        if self.qdtype == torch.uint8:
            q16 = self._q16[:n]
            q16.copy_(buf)  # float -> int16 -> uint8 is faster than float -> uint8
            q.copy_(q16)
        else:
            q.copy_(buf)
        buf.frac_()  # < 2 delta: within delta of an edge
        near = self._near(buf)
        if near.numel():
            self.n_fixed += near.numel()
            vals = v.reshape(-1)[near] if v.dim() == 1 else v[near // v.shape[1], near % v.shape[1]]
            q[near] = self._exact(vals).to(self.qdtype)
        return q

    def _near(self, frac: torch.Tensor) -> torch.Tensor:
        """Positions where ``frac`` < 2 delta, found chunk by chunk (chunk minima first)."""
        n = frac.numel()
        m = n - n % 64
        lim = 2 * self.delta
        parts = []
        if m:
            chunks = (frac[:m].view(-1, 64).amin(1) < lim).nonzero().squeeze(1)
            if chunks.numel():
                pos = (chunks[:, None] * 64 + self._ar64).reshape(-1)
                parts.append(pos[frac[pos] < lim])
        if m < n:
            parts.append((frac[m:] < lim).nonzero().squeeze(1) + m)
        if not parts:
            return frac.new_empty(0, dtype=torch.int64)
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    @property
    def below(self) -> int:
        return int(self.counts[0])

    @property
    def above(self) -> int:
        return int(self.counts[-1])

    def result(self) -> np.ndarray:
        return self.counts[1:-1].cpu().numpy()

    # ------------------------------------------------------------------ internals
    def _buffers(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._buf is None or self._buf.numel() < n:
            self._buf = torch.empty(n, dtype=self.dtype, device=self.device)
            self._q = torch.empty(n, dtype=self.qdtype, device=self.device)
            self._q16 = torch.empty(n, dtype=torch.int16, device=self.device)
        return self._buf[:n], self._q[:n]

    def _exact(self, vals: torch.Tensor) -> torch.Tensor:
        """numpy's rule in float64: edges[k] <= v < edges[k+1], the last edge included."""
        v = vals.to(torch.float64)
        k = torch.searchsorted(self.edges64, v, right=True)  # number of edges <= v
        last = v == self.edges64[-1]
        return torch.where(last, torch.full_like(k, self.nb), k)

    def _bincount(self, q: torch.Tensor) -> torch.Tensor:
        m = self.nb + 2
        if q.dtype != torch.uint8 or m > 128 or q.numel() < 2:
            return torch.bincount(q.to(torch.int64), minlength=m)[:m]
        n2 = q.numel() // 2 * 2
        # two uint8 bin ids read as one int16 (both < 128): half the elements to count
        both = q[:n2].view(torch.int16)  # non-negative: the high byte is < 128
        pairs = torch.bincount(both if both.device.type == "cpu" else both.to(torch.int32),
                               minlength=128 * 256)
        grid = pairs[: 128 * 256].view(128, 256)
        counts = grid.sum(0)[:m] + grid.sum(1)[:m]
        if n2 < q.numel():
            counts[int(q[-1])] += 1
        return counts


class PatternCounts:
    """Fast mode: counts of every 16-bit pattern of bfloat16/float16 pair values. One bincount
    per block gives the exact histogram and moments of those low-precision values."""

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self.dtype = dtype
        self.counts = torch.zeros(1 << 16, dtype=torch.int64, device=device)
        self._q: torch.Tensor | None = None

    def add(self, v: torch.Tensor) -> None:
        """Count the values ``v`` (1-D, or 2-D possibly strided) of dtype ``self.dtype``."""
        n = v.numel()
        if self._q is None or self._q.numel() < n:
            self._q = torch.empty(n, dtype=torch.int32, device=v.device)
        q = self._q[:n]
        if v.device.type == "cpu":
            q.view(v.shape).copy_(v.view(torch.uint16))  # the bit patterns, 0..65535
        else:  # unsigned 16-bit copies are not everywhere: sign-extend, then mask
            q.view(v.shape).copy_(v.view(torch.int16))
            q.bitwise_and_(0xFFFF)
        self.counts += torch.bincount(q, minlength=1 << 16)

    @staticmethod
    def summarise(counts: np.ndarray, dtype: torch.dtype, bounded: bool,
                  edges: np.ndarray | None) -> dict:
        """Moments (count, mean, std, min, max) and, with ``edges``, the histogram (numpy's
        rules) of the values whose patterns were counted."""
        bits = torch.from_numpy(np.arange(1 << 16, dtype=np.uint16).view(np.int16))
        values = bits.view(dtype).to(torch.float64).numpy()
        if bounded:
            values = np.clip(values, -1.0, 1.0)
        used = np.flatnonzero(counts)
        c, v = counts[used].astype(np.float64), values[used]
        total = float(c.sum())
        out: dict = {"count": int(total)}
        if total:
            mean = float((c * v).sum() / total)
            out.update(mean=mean, std=float(np.sqrt((c * (v - mean) ** 2).sum() / total)),
                       min=float(v.min()), max=float(v.max()))
        else:
            out.update(mean=np.nan, std=np.nan, min=np.nan, max=np.nan)
        if edges is not None:
            k = np.searchsorted(edges, v, side="right")  # edges <= v
            k[v == edges[-1]] = len(edges) - 1  # numpy's closed last bin
            binned = np.bincount(k, weights=c, minlength=len(edges) + 1)
            out["counts"] = np.rint(binned[1:-1]).astype(np.int64)
            out["below"], out["above"] = int(round(binned[0])), int(round(binned[-1]))
        return out
