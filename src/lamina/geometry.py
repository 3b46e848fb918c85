"""Small vector-geometry helpers: projections onto a span and row-wise cosines."""

from __future__ import annotations

import numpy as np
import torch

from lamina.errors import LaminaError

Array = np.ndarray | torch.Tensor


def _as_tensor(x: Array) -> torch.Tensor:
    """``x`` as a tensor of finite numbers (NaN or infinite entries raise: they would make
    every projection or cosine they touch NaN)."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise LaminaError("The vectors have NaN or infinite entries: remove or fix them first.")
    return t


def orthonormal_basis(directions: Array, tol: float = 1e-10) -> torch.Tensor:
    """Orthonormal rows spanning ``directions`` (``[k, d]`` or ``[d]``), by Gram–Schmidt
    (Householder QR, its numerically stable form); dependent directions are dropped."""
    dirs = _as_tensor(directions).double()
    if dirs.ndim == 1:
        dirs = dirs[None]
    if dirs.ndim != 2 or dirs.shape[0] == 0:
        raise LaminaError(f"directions must be [k, d] or [d], not shape {tuple(dirs.shape)}.")
    q, r = torch.linalg.qr(dirs.T)  # [d, k]
    keep = r.diagonal().abs() > tol * max(1.0, float(r.diagonal().abs().max()))
    if not keep.any():
        raise LaminaError("The directions are all zero: there is no span to project onto.")
    return q[:, keep].T


def project(vectors: Array, directions: Array) -> tuple[Array, Array]:
    """Split ``vectors`` (``[n, d]`` or ``[d]``) into the component in the span of
    ``directions`` (``[k, d]`` or ``[d]``) and the orthogonal rest.

    Returns ``(parallel, perpendicular)`` with ``parallel + perpendicular == vectors``, in the
    input's type (numpy or torch) and dtype.
    """
    v = _as_tensor(vectors)
    if v.shape[-1] != _as_tensor(directions).shape[-1]:
        raise LaminaError(
            f"vectors have dimension {v.shape[-1]} but directions have "
            f"{_as_tensor(directions).shape[-1]}.")
    basis = orthonormal_basis(directions)  # [k', d]
    vd = v.double()
    parallel = (vd @ basis.T) @ basis
    perpendicular = vd - parallel
    out = (parallel.to(v.dtype), perpendicular.to(v.dtype))
    if isinstance(vectors, torch.Tensor):
        return out
    return out[0].numpy(), out[1].numpy()


def cosine(a: Array, b: Array) -> torch.Tensor:
    """Cosine of each row of ``a`` (``[n, d]`` or ``[d]``) with ``b`` (``[d]`` or ``[n, d]``),
    in float64. A zero vector has no cosine: it raises instead of returning NaN."""
    x, y = _as_tensor(a).double(), _as_tensor(b).double()
    nx, ny = x.norm(dim=-1), y.norm(dim=-1)
    if (nx == 0).any() or (ny == 0).any():
        raise LaminaError("A zero vector has no cosine: remove zero rows first.")
    return (x * y).sum(-1) / (nx * ny)
