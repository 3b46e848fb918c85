"""The float64 moment sums behind :class:`~lamina.analyses.compare.sums.StreamedMeasures`:
the sites of a side laid side by side (:class:`Layout`), rows scaled to unit length
(:func:`unit_rows`), and the shifted sums with their flush, re-shift and add
(:class:`Moments`). See :mod:`lamina.analyses.compare.sums` for what they are for."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from lamina.analyses.compare import measures as _m
from lamina.errors import LaminaError

F64 = torch.float64


class Layout:
    """The sites of one side laid side by side: rows ``[B, D]``, D the sum of the dims."""

    def __init__(self, dims: Mapping[str, int], side: str) -> None:
        if not isinstance(dims, Mapping) or not dims:
            raise LaminaError(f"dims_{side} must be a non-empty mapping site -> width, got "
                              f"{dims!r}.")
        self.sites = [str(s) for s in dims]
        self.dims = []
        for site, d in dims.items():
            if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
                raise LaminaError(f"dims_{side}[{site!r}] must be a positive int, got {d!r}.")
            self.dims.append(int(d))
        self.side = side
        self.offsets = np.concatenate([[0], np.cumsum(self.dims)]).tolist()
        self.slices = [slice(a, b) for a, b in
                       zip(self.offsets[:-1], self.offsets[1:], strict=True)]
        self.total = int(self.offsets[-1])
        self.indicator = torch.zeros(len(self.dims), self.total, dtype=F64)  # [sites, D]
        for i, sl in enumerate(self.slices):
            self.indicator[i, sl] = 1.0

    def cat(self, rows: Mapping[str, object]) -> torch.Tensor:
        """``rows[site]`` ``[B, d_site]`` (torch or numpy) -> one CPU tensor ``[B, D]``."""
        if not isinstance(rows, Mapping):
            raise LaminaError(f"rows_{self.side} must be a mapping site -> [B, d] rows, got "
                              f"{type(rows).__name__}.")
        missing = [s for s in self.sites if s not in rows]
        extra = [s for s in rows if s not in self.sites]
        if missing or extra:
            raise LaminaError(f"rows_{self.side} must have exactly the sites {self.sites}; "
                              f"missing {missing}, unexpected {extra}.")
        parts = []
        for site, d in zip(self.sites, self.dims, strict=True):
            x = torch.as_tensor(rows[site]).detach()
            if x.dim() != 2 or x.shape[1] != d:
                raise LaminaError(f"rows_{self.side}[{site!r}] must have shape [B, {d}], got "
                                  f"{tuple(x.shape)}.")
            if x.is_complex():
                raise LaminaError(f"rows_{self.side}[{site!r}] must be real, got {x.dtype}.")
            parts.append(x.to("cpu"))
        n_rows = {p.shape[0] for p in parts}
        if len(n_rows) != 1:
            raise LaminaError(f"rows_{self.side}: every site needs the same rows; got row "
                              f"counts {sorted(n_rows)}.")
        dtype = F64 if any(p.dtype == F64 for p in parts) else torch.float32
        return torch.cat([p.to(dtype) for p in parts], dim=1)


def unit_rows(x: torch.Tensor, lay: Layout, centre: bool, first_row: int) -> torch.Tensor:
    """Each site's rows scaled to unit length (after removing each row's mean if ``centre``),
    in float64 (rounded to the product's dtype only after the shift, see ``Moments``)."""
    x64 = x.to(F64)
    if centre:
        means = torch.stack([x64[:, sl].mean(1) for sl in lay.slices], 1)  # [B, sites]
        x64 = x64 - means @ lay.indicator
    sq = torch.stack([x64[:, sl].square().sum(1) for sl in lay.slices], 1)
    bad = torch.nonzero(sq == 0)
    if len(bad):
        site = lay.sites[int(bad[0, 1])]
        rows = (bad[bad[:, 1] == bad[0, 1], 0] + first_row).tolist()
        what = "constant (zero variance across features)" if centre else "exactly zero"
        measure = "rsa_correlation" if centre else "rsa"
        raise LaminaError(
            f"{measure}: rows {rows[:8]}{' ...' if len(rows) > 8 else ''} of site {site!r} "
            f"(side {lay.side}) are {what}, so their similarity to other rows is undefined. "
            f"Drop those rows (e.g. padding or masked positions) or leave {measure!r} out.")
    return x64 * (torch.rsqrt(sq) @ lay.indicator)


class Moments:
    """Float64 sums of the rows of sides A and B, each shifted by a fixed reference:
    ``s = sum(x - c)``, cross ``G_ab = sum (x - c)(y - e)^T``, own Grams per site; with
    ``quartic`` also the squared-norm terms the debiased HSIC needs (``t1 = sum |x_s|^2 |y_t|^2``,
    ``t2 = sum |x_s|^2 y``, ``t3 = sum |y_t|^2 x``, and each side's own ``sum |x_s|^4``,
    ``sum |x_s|^2 x_s``)."""

    def __init__(self, la: Layout, lb: Layout, quartic: bool, product: torch.dtype,
                 flush_rows: int) -> None:
        self.la, self.lb, self.quartic, self.product = la, lb, quartic, product
        self.flush_rows, self.n = flush_rows, 0
        self.shift_a = self.shift_b = None
        z = lambda *shape: torch.zeros(*shape, dtype=F64)  # noqa: E731
        self.s_a, self.s_b, self.g_ab = z(la.total), z(lb.total), z(la.total, lb.total)
        self.g_aa = [z(d, d) for d in la.dims]
        self.g_bb = [z(d, d) for d in lb.dims]
        na, nb = len(la.dims), len(lb.dims)
        if quartic:
            self.n_a, self.n_b, self.t1_ab = z(na), z(nb), z(na, nb)
            self.t2_ab, self.t3_ab = z(na, lb.total), z(la.total, nb)
            self.t1_aa, self.t1_bb, self.t2_aa, self.t2_bb = z(na), z(nb), z(la.total), z(lb.total)
        self._pending = 0  # rows in the low-precision partial products (held while streaming)
        self._p_ab: torch.Tensor | None = None
        self._p_aa: list[torch.Tensor] = []
        self._p_bb: list[torch.Tensor] = []

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add rows ``x`` ``[B, D_A]``, ``y`` ``[B, D_B]`` (float32 or float64)."""
        if self.shift_a is None:  # the reference shift, exactly representable in `product`
            self.shift_a = x.mean(0, dtype=F64).to(self.product).to(F64)
            self.shift_b = y.mean(0, dtype=F64).to(self.product).to(F64)
        xp, yp = _shifted(x, self.shift_a, self.product), _shifted(y, self.shift_b, self.product)
        ones = torch.ones(x.shape[0], dtype=self.product)
        self.s_a += torch.mv(xp.T, ones)  # a BLAS column sum, like the product's own sums
        self.s_b += torch.mv(yp.T, ones)
        self.n += x.shape[0]
        if self.product == F64:
            self.g_ab.addmm_(xp.T, yp)
            for g, sl in zip(self.g_aa, self.la.slices, strict=True):
                g.addmm_(xp[:, sl].T, xp[:, sl])
            for g, sl in zip(self.g_bb, self.lb.slices, strict=True):
                g.addmm_(yp[:, sl].T, yp[:, sl])
        else:
            if self._p_ab is None:
                e = lambda *shape: torch.empty(*shape, dtype=self.product)  # noqa: E731
                self._p_ab = e(self.la.total, self.lb.total)
                self._p_aa = [e(d, d) for d in self.la.dims]
                self._p_bb = [e(d, d) for d in self.lb.dims]
            fresh = self._pending == 0
            _acc(self._p_ab, xp, yp, fresh)
            for p, sl in zip(self._p_aa, self.la.slices, strict=True):
                _acc(p, xp[:, sl], xp[:, sl], fresh)
            for p, sl in zip(self._p_bb, self.lb.slices, strict=True):
                _acc(p, yp[:, sl], yp[:, sl], fresh)
            self._pending += x.shape[0]
            if self._pending >= self.flush_rows:
                self.flush()
        if self.quartic:
            self._quartic(xp, yp)

    def _quartic(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The squared-norm sums of one batch, in the product's dtype, added in float64."""
        na = len(self.la.dims)
        sq_x, sq_y = x * x, y * y
        qa = torch.stack([sq_x[:, sl].sum(1) for sl in self.la.slices], 1)  # [B, sites_a]
        qb = torch.stack([sq_y[:, sl].sum(1) for sl in self.lb.slices], 1)
        qt = torch.cat([qa, qb], 1).T.contiguous()  # [sites_a + sites_b, B]
        on_x, on_y = qt @ x, qt @ y  # sum q_s x, sum q_s y for every site s of A and B
        qa, qb, qt = qa.to(F64), qb.to(F64), qt.to(F64)
        self.n_a += qa.sum(0)
        self.n_b += qb.sum(0)
        self.t1_ab += qt[:na] @ qb
        self.t2_ab += on_y[:na]
        self.t3_ab += on_x[na:].T
        self.t1_aa += (qa * qa).sum(0)
        self.t1_bb += (qb * qb).sum(0)
        self.t2_aa += (on_x[:na] * self.la.indicator).sum(0)
        self.t2_bb += (on_y[na:] * self.lb.indicator).sum(0)

    def flush(self, release: bool = False) -> None:
        """Fold the low-precision partial products into the float64 sums (and, with
        ``release``, free their buffers until the next update)."""
        if self._pending:
            self.g_ab += self._p_ab
            for g, p in zip(self.g_aa + self.g_bb, self._p_aa + self._p_bb, strict=True):
                g += p
            self._pending = 0
        if release:
            self._p_ab, self._p_aa, self._p_bb = None, [], []

    def reshift(self, new_a: torch.Tensor, new_b: torch.Tensor) -> None:
        """Re-express every sum about new references (exact algebra in float64)."""
        self.flush()
        if self.shift_a is None:
            self.shift_a, self.shift_b = new_a.clone(), new_b.clone()
            return
        d, e, n = new_a - self.shift_a, new_b - self.shift_b, float(self.n)
        if self.quartic:
            _m.reshift_quartic(self, d, e)
        self.g_ab += n * torch.outer(d, e) - torch.outer(self.s_a, e) - torch.outer(d, self.s_b)
        for gs, lay, s, dv in ((self.g_aa, self.la, self.s_a, d),
                               (self.g_bb, self.lb, self.s_b, e)):
            for g, sl in zip(gs, lay.slices, strict=True):
                g += (n * torch.outer(dv[sl], dv[sl]) - torch.outer(s[sl], dv[sl])
                      - torch.outer(dv[sl], s[sl]))
        self.s_a -= n * d
        self.s_b -= n * e
        self.shift_a, self.shift_b = new_a.clone(), new_b.clone()

    def add(self, other: Moments) -> None:
        """Add another set of sums taken about the same references."""
        for name in ("s_a", "s_b", "g_ab") + (_m.QUARTIC if self.quartic else ()):
            getattr(self, name).add_(getattr(other, name))
        for g, h in zip(self.g_aa + self.g_bb, other.g_aa + other.g_bb, strict=True):
            g += h
        self.n += other.n

    def tensors(self) -> list[torch.Tensor]:
        out = [self.s_a, self.s_b, self.g_ab, *self.g_aa, *self.g_bb]
        if self.quartic:
            out += [getattr(self, name) for name in _m.QUARTIC]
        if self._p_ab is not None:
            out += [self._p_ab, *self._p_aa, *self._p_bb]
        return out


def _shifted(x: torch.Tensor, shift: torch.Tensor, product: torch.dtype) -> torch.Tensor:
    """``x - shift`` in ``product`` dtype, rounded once: relative to the centred scale."""
    if x.dtype == F64:
        return (x - shift).to(product)
    return x.to(product) - shift.to(product)  # exact operands: one rounding of the difference


def _acc(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor, fresh: bool) -> None:
    if fresh:
        torch.mm(a.T, b, out=p)
    else:
        p.addmm_(a.T, b)
