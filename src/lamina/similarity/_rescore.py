"""Re-scoring of candidates: exact values for top-k and threshold candidates found with
low-precision products (fast mode) or, for euclidean, with the Gram expansion
sqrt(|a|^2 + |b|^2 - 2 a.b), which loses precision for near-identical rows; re-scored euclidean
distances are computed from the differences. Also the margins that keep thresholds exact."""

from __future__ import annotations

import math

import numpy as np
import torch

from lamina.similarity._args import BOUNDED
from lamina.similarity._cpu_kernels import jit
from lamina.similarity._prepare import Prepared


def needs_rescoring(px: Prepared) -> bool:
    return px.precision.fast or px.metric == "euclidean"


def _values(a: torch.Tensor, b: torch.Tensor, metric: str) -> torch.Tensor:
    """Values between rows ``a`` (..., d) and ``b`` (..., d) (broadcast)."""
    if metric == "euclidean":
        diff = a.to(torch.float64) - b.to(torch.float64)
        return torch.linalg.vector_norm(diff, dim=-1).to(a.dtype)
    if a.device.type == "cpu" and a.dim() == 2:
        dots = torch.from_numpy(np.einsum("nd,nd->n", a.numpy(), b.numpy()))
    else:
        dots = (a * b).sum(-1)
    return dots.clamp_(-1.0, 1.0) if metric in BOUNDED else dots


def _batched_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(r, k) dot products of rows ``a`` (r, d) with ``b`` (r, k, d). On CPU numpy's batched
    matmul is an order of magnitude faster than torch.bmm for these thin batches."""
    if a.device.type == "cpu":
        return torch.from_numpy(np.matmul(b.numpy(), a.numpy()[:, :, None])[:, :, 0])
    return torch.bmm(b, a[:, :, None])[:, :, 0]


def exact_pairs(px: Prepared, py: Prepared, i: torch.Tensor, j: torch.Tensor, budget: int):
    """Exact values (value dtype) of pairs at positions ``i`` of x and ``j`` of y (1-D)."""
    out = []
    step = max(1, budget // 4 // (16 * px.d * px.precision.value.itemsize))
    for s in range(0, len(i), step):
        ii, jj = i[s : s + step].to(px.device), j[s : s + step].to(px.device)
        out.append(_values(px.take(ii), py.take(jj), px.metric))
    return torch.cat(out) if out else torch.empty(0, dtype=px.precision.value)


def rescore_topk(
    px: Prepared, py: Prepared, cand: torch.Tensor, k: int, largest: bool, budget: int,
    backend: str = "torch",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` among candidate columns ``cand`` (n, kc) of every row of x: values
    (n, k) and columns (n, k). ``backend="numba"`` computes the candidates' dot products with
    the compiled :func:`candidate_dots` when both sides are held in memory on CPU (float32,
    not euclidean); otherwise, and for "torch", by gathered batched products."""
    n, kc = cand.shape
    compiled = (backend == "numba" and _in_memory_cpu(px, py) and px.metric != "euclidean"
                and px.precision.value == torch.float32)
    if compiled:
        v = torch.empty((n, kc), dtype=torch.float32)
        candidate_dots(px.data.numpy(), py.data.numpy(), cand.numpy(), v.numpy())
        if px.metric in BOUNDED:
            v.clamp_(-1.0, 1.0)
        top_v, top_p = torch.topk(v, k, dim=1, largest=largest)
        return top_v, torch.gather(cand, 1, top_p)
    step = max(1, budget // 4 // (kc * px.d * 8 * 3))
    vals, idx = [], []
    for s in range(0, n, step):
        rows = torch.arange(s, min(s + step, n), device=px.device)
        c = cand[s : s + step].to(px.device)
        a = px.take(rows)  # (r, d)
        b = py.take(c)  # (r, kc, d)
        if px.metric == "euclidean":
            v = _values(a[:, None, :], b, px.metric)
        else:
            v = _batched_dots(a, b)
            v = v.clamp_(-1.0, 1.0) if px.metric in BOUNDED else v
        top_v, top_p = torch.topk(v, k, dim=1, largest=largest)
        vals.append(top_v)
        idx.append(torch.gather(c, 1, top_p))
    return torch.cat(vals), torch.cat(idx)


def _in_memory_cpu(px: Prepared, py: Prepared) -> bool:
    """Both sides held in memory on CPU."""
    return all(p.data is not None and p.device.type == "cpu" for p in (px, py))


@jit(fastmath={"reassoc", "nsz"})
def candidate_dots(a, b, cand, out):
    """``out[i, c] = a[i] . b[cand[i, c]]`` in float32 (a (n, d), b (m, d), cand (n, kc)):
    the candidates' values without gathering (n, kc, d) rows."""
    for i in range(cand.shape[0]):
        row = a[i]
        for c in range(cand.shape[1]):
            other = b[cand[i, c]]
            acc = np.float32(0.0)
            for t in range(row.shape[0]):
                acc += row[t] * other[t]
            out[i, c] = acc


def candidate_threshold(
    threshold: float, below: bool, px: Prepared, py: Prepared
) -> float:
    """A looser threshold on the block values that keeps every pair whose exact value passes
    ``threshold``: twice a worst-case bound on the rounding error of the products (inputs and
    output rounded to the product dtype, d terms accumulated in float32)."""
    u = float(torch.finfo(px.precision.matmul).eps) / 2
    u32 = float(torch.finfo(px.precision.value).eps) / 2
    a, b = px.max_norm, py.max_norm
    err = 2 * (3 * u + px.d * u32) * a * b  # bound on |dot error|
    if px.metric == "euclidean":
        err2 = 2 * err + 8 * u32 * (a * a + b * b)  # |d^2 error|: products and squared norms
        t2 = threshold * threshold
        return math.sqrt(t2 + err2) if below else math.sqrt(max(t2 - err2, 0.0))
    return threshold + err if below else threshold - err


def estimate_shift(px: Prepared, py: Prepared | None, budget: int, n: int = 4096) -> float:
    """A shift for summing squares: the mean of ``n`` random pairs (seeded) when it is large
    against their spread, else 0."""
    gen = torch.Generator().manual_seed(0)
    other = px if py is None else py
    i = torch.randint(0, px.n, (n,), generator=gen)
    j = torch.randint(0, other.n, (n,), generator=gen)
    if py is None:
        keep = i != j
        i, j = i[keep], j[keep]
    if len(i) == 0:
        return 0.0
    v = exact_pairs(px, other, i, j, budget).to(torch.float64)
    mean, sd = float(v.mean()), float(v.std(correction=0))
    return mean if abs(mean) > 4 * sd else 0.0
