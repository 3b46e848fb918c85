"""Fast mode: exact float32 re-scoring of candidates found with low-precision products, and the
margins that make thresholded pairs exact."""

from __future__ import annotations

import math

import torch

from lamina.similarity._blocks import BOUNDED, Prepared


def _finish(dots: torch.Tensor, metric: str, sq_a: torch.Tensor | None, sq_b: torch.Tensor | None):
    if metric in BOUNDED:
        return dots.clamp_(-1.0, 1.0)
    if metric == "euclidean":
        return (sq_a + sq_b - 2.0 * dots).clamp_min_(0.0).sqrt_()
    return dots


def exact_pairs(px: Prepared, py: Prepared, i: torch.Tensor, j: torch.Tensor, budget: int):
    """Exact values (value dtype) of pairs at positions ``i`` of x and ``j`` of y (1-D)."""
    out = []
    step = max(1, budget // 4 // (8 * px.d * px.precision.value.itemsize))
    euclid = px.metric == "euclidean"
    for s in range(0, len(i), step):
        ii, jj = i[s : s + step].to(px.device), j[s : s + step].to(px.device)
        dots = (px.take(ii) * py.take(jj)).sum(1)
        out.append(_finish(
            dots, px.metric,
            px.sqnorm[ii] if euclid else None, py.sqnorm[jj] if euclid else None,
        ))
    return torch.cat(out) if out else torch.empty(0, dtype=px.precision.value)


def rescore_topk(
    px: Prepared, py: Prepared, cand: torch.Tensor, k: int, largest: bool, budget: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` among candidate columns ``cand`` (n, kc) of every row of x."""
    n, kc = cand.shape
    step = max(1, budget // 4 // (kc * px.d * px.precision.value.itemsize * 2))
    euclid = px.metric == "euclidean"
    vals, idx = [], []
    for s in range(0, n, step):
        rows = torch.arange(s, min(s + step, n), device=px.device)
        c = cand[s : s + step].to(px.device)
        a = px.take(rows)  # (r, d)
        b = py.take(c)  # (r, kc, d)
        dots = torch.bmm(b, a[:, :, None])[:, :, 0]
        v = _finish(
            dots, px.metric,
            px.sqnorm[rows][:, None] if euclid else None, py.sqnorm[c] if euclid else None,
        )
        top_v, top_p = torch.topk(v, k, dim=1, largest=largest)
        vals.append(top_v)
        idx.append(torch.gather(c, 1, top_p))
    return torch.cat(vals), torch.cat(idx)


def candidate_threshold(
    threshold: float, below: bool, px: Prepared, py: Prepared
) -> float:
    """A looser threshold on low-precision values that keeps every pair whose exact value
    passes ``threshold``: twice a bound on the rounding error of the products."""
    mm = px.precision.matmul
    u = float(torch.finfo(mm).eps) / 2
    err = 2 * (3 * u + px.d * 2.0**-24) * px.max_norm * py.max_norm  # bound on |dot error|
    if px.metric == "euclidean":
        t2 = threshold * threshold
        return math.sqrt(t2 + 2 * err) if below else math.sqrt(max(t2 - 2 * err, 0.0))
    return threshold + err if below else threshold - err
