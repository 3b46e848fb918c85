"""Exact streamed linear comparison measures: float64 sums over rows, memory independent of N.

Every measure in :data:`MEASURES_LINEAR` is a function of a few sums over the N rows: the
column sums, the d x d Grams of each site and the d_A x d_B cross products (for the debiased
estimator also sums of the rows' squared norms times the rows; for RSA the same sums over the
rows scaled to unit length, or centred and then scaled). One pass over the rows accumulates
them; the measures follow exactly, with no N x N matrix anywhere (formulas in
:mod:`lamina.analyses.compare.measures`).

Cost per batch: the sites of each side are laid side by side, so every site pair's cross
products come from ONE ``[B, D_A]^T @ [B, D_B]`` product (plus each site's own Gram). RSA needs a
second product of the same size over the unit rows (``rsa_correlation`` a third, over the
centred unit rows). Rows are shifted by a fixed per-column reference (the first batch's mean)
before the product, so the product runs on nearly centred values: in float32 (the default for
float32 inputs) its rounding is relative to the centred scale, not to the mean, and float32
partial products are folded into float64 sums every ``flush_rows`` rows (unit rows are formed
and shifted in float64 and rounded once). Measured against the float64 product, the measures
stay within ~1e-7 relative on minilm's token rows and on random rows (the tests hold 1e-6).
float64 inputs use a float64 product. Sums about different references (other chunks, see
:meth:`StreamedMeasures.merge`) are moved exactly to a common one before they are added.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from lamina.analyses.compare import measures as _m
from lamina.errors import LaminaError

MEASURES_LINEAR = ("cka", "cka_debiased", "rsa", "rsa_correlation", "procrustes", "svcca",
                   "pwcca")
# which row transform each measure's sums are taken over
_GROUP = {"cka": "raw", "cka_debiased": "raw", "procrustes": "raw", "svcca": "raw",
          "pwcca": "raw", "rsa": "cos", "rsa_correlation": "corr"}
F64 = torch.float64


class _Layout:
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


def _unit_rows(x: torch.Tensor, lay: _Layout, centre: bool, first_row: int) -> torch.Tensor:
    """Each site's rows scaled to unit length (after removing each row's mean if ``centre``),
    in float64 (rounded to the product's dtype only after the shift, see ``_Moments``)."""
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


class _Moments:
    """Float64 sums of the rows of sides A and B, each shifted by a fixed reference:
    ``s = sum(x - c)``, cross ``G_ab = sum (x - c)(y - e)^T``, own Grams per site; with
    ``quartic`` also the squared-norm terms the debiased HSIC needs (``t1 = sum |x_s|^2 |y_t|^2``,
    ``t2 = sum |x_s|^2 y``, ``t3 = sum |y_t|^2 x``, and each side's own ``sum |x_s|^4``,
    ``sum |x_s|^2 x_s``)."""

    def __init__(self, la: _Layout, lb: _Layout, quartic: bool, product: torch.dtype,
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

    def add(self, other: _Moments) -> None:
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


class StreamedMeasures:
    """Exact float64 streamed sums for every (site_a, site_b) pair; memory independent of N.

    Args:
        dims_a: site -> width of side A's rows; dims_b: the same for side B.
        measures: names from :data:`MEASURES_LINEAR`.
        product_dtype: dtype of the big per-batch products; ``None``: float32 for float32 (or
            narrower) inputs, float64 when a batch is float64. Sums are float64 either way.
        flush_rows: rows of float32 partial products accumulated before they are folded into
            the float64 sums.

    Memory: O((sum d_A) x (sum d_B)) float64 per row transform (raw; unit rows for ``rsa``;
    centred unit rows for ``rsa_correlation``), independent of N; :meth:`nbytes` reports it.
    """

    def __init__(self, dims_a: Mapping[str, int], dims_b: Mapping[str, int],
                 measures: Sequence[str], *, product_dtype: torch.dtype | None = None,
                 flush_rows: int = 8192) -> None:
        if isinstance(measures, str) or not isinstance(measures, Sequence) or not measures:
            raise LaminaError(f"measures must be a non-empty list of names from "
                              f"{MEASURES_LINEAR}, got {measures!r}.")
        unknown = [m for m in measures if m not in MEASURES_LINEAR]
        if unknown:
            raise LaminaError(f"Unknown linear measure(s) {unknown}; choose from "
                              f"{MEASURES_LINEAR}.")
        if product_dtype not in (None, torch.float32, F64):
            raise LaminaError(f"product_dtype must be None, torch.float32 or torch.float64, "
                              f"got {product_dtype!r}.")
        if isinstance(flush_rows, bool) or not isinstance(flush_rows, int) or flush_rows < 1:
            raise LaminaError(f"flush_rows must be a positive int, got {flush_rows!r}.")
        self.la, self.lb = _Layout(dims_a, "a"), _Layout(dims_b, "b")
        self.measures = list(dict.fromkeys(measures))
        self.product_dtype, self.flush_rows = product_dtype, flush_rows
        self._groups: dict[str, _Moments] = {}

    def _ensure_groups(self, dtype: torch.dtype) -> None:
        if self._groups:
            return
        product = self.product_dtype or dtype
        for m in self.measures:
            g = _GROUP[m]
            if g not in self._groups:
                quartic = g == "raw" and "cka_debiased" in self.measures
                self._groups[g] = _Moments(self.la, self.lb, quartic, product, self.flush_rows)

    def update(self, rows_a: Mapping[str, torch.Tensor],
               rows_b: Mapping[str, torch.Tensor]) -> None:
        """One batch: rows_a[site] [B, d_site], rows_b[site] [B, d_site], the same B rows."""
        x, y = self.la.cat(rows_a), self.lb.cat(rows_b)
        if x.shape[0] != y.shape[0]:
            raise LaminaError(f"rows_a and rows_b must hold the same rows; got {x.shape[0]} "
                              f"and {y.shape[0]}.")
        if x.shape[0] == 0:
            return
        ones = torch.ones(x.shape[0], dtype=x.dtype)
        if not (bool(torch.isfinite(torch.mv(x.T, ones)).all())
                and bool(torch.isfinite(torch.mv(y.T, ones.to(y.dtype))).all())):
            raise LaminaError("rows contain NaN or infinite values; clean or drop those rows "
                              "before comparing.")
        self._ensure_groups(F64 if F64 in (x.dtype, y.dtype) else torch.float32)
        first, rows = self.n, {}
        for g in self._groups:  # every check before any sum changes
            centre = g == "corr"
            rows[g] = (x, y) if g == "raw" else (_unit_rows(x, self.la, centre, first),
                                                 _unit_rows(y, self.lb, centre, first))
        for g, mom in self._groups.items():
            mom.update(*rows[g])

    def _check_like(self, other: object, what: str) -> None:
        if not isinstance(other, StreamedMeasures) or (
                (self.la.sites, self.la.dims, self.lb.sites, self.lb.dims, self.measures)
                != (other.la.sites, other.la.dims, other.lb.sites, other.lb.dims,
                    other.measures)):
            raise LaminaError(f"{what} needs StreamedMeasures with the same sites, widths and "
                              "measures.")

    def merge(self, other: StreamedMeasures) -> StreamedMeasures:
        """Sums of two disjoint row sets (used for bootstrap over row chunks); a new object."""
        self._check_like(other, "merge")
        for mom in [*self._groups.values(), *other._groups.values()]:
            mom.flush(release=True)
        if not other._groups:
            return copy.deepcopy(self)
        if not self._groups:
            return copy.deepcopy(other)
        out = copy.deepcopy(self)
        for g, mom in out._groups.items():
            theirs = copy.deepcopy(other._groups[g])
            theirs.reshift(mom.shift_a, mom.shift_b)
            mom.add(theirs)
        return out

    @classmethod
    def combine(cls, parts: Sequence[StreamedMeasures],
                counts: Sequence[int]) -> StreamedMeasures:
        """The sums of ``parts`` (disjoint row sets, e.g. row chunks), part ``i`` taken
        ``counts[i]`` times: a bootstrap resample in one weighted sum instead of a chain of
        :meth:`merge`. Each part's sums are re-expressed about the first non-empty part's
        references (exact float64 algebra, as :meth:`merge`; done once, later calls find
        them aligned); the values the parts give are unchanged. A new object."""
        if len(parts) != len(counts) or not parts:
            raise LaminaError("combine needs one count per part, and at least one part.")
        for part in parts[1:]:
            parts[0]._check_like(part, "combine")
        filled = [part for part in parts if part._groups]
        if not filled:
            return copy.deepcopy(parts[0])
        ref = filled[0]._groups
        for part in filled:
            for g, mom in part._groups.items():
                mom.flush(release=True)
                if mom is not ref[g] and not (torch.equal(mom.shift_a, ref[g].shift_a)
                                              and torch.equal(mom.shift_b, ref[g].shift_b)):
                    mom.reshift(ref[g].shift_a, ref[g].shift_b)
        out = copy.deepcopy(filled[0])
        used = [(int(k), part) for k, part in zip(counts, parts, strict=True)
                if k and part._groups]
        for g, mom in out._groups.items():
            for i, t in enumerate(mom.tensors()):
                t.zero_()
                for k, part in used:
                    t.add_(part._groups[g].tensors()[i], alpha=k)
            mom.n = sum(k * part._groups[g].n for k, part in used)
        return out

    @property
    def n(self) -> int:
        """Rows seen so far."""
        return next(iter(self._groups.values())).n if self._groups else 0

    def nbytes(self) -> int:
        """Memory the sums hold while streaming (bytes), for budget checks: float64 sums plus,
        for a float32 product, the float32 partial products; the same before the first
        update (planned) as after."""
        la, lb = self.la, self.lb
        na, nb, da, db = len(la.dims), len(lb.dims), la.total, lb.total
        grams = da * db + sum(d * d for d in la.dims) + sum(d * d for d in lb.dims)
        total = 8 * (na * da + nb * db)  # the site indicators
        for group in dict.fromkeys(_GROUP[m] for m in self.measures):
            mom = self._groups.get(group)
            product = mom.product if mom is not None else self.product_dtype or torch.float32
            total += 8 * (da + db + grams) + (4 * grams if product != F64 else 0)
            if group == "raw" and "cka_debiased" in self.measures:
                total += 8 * (2 * (na + nb) + na * nb + na * db + da * nb + da + db)
        return int(total)

    def values(self) -> list[dict]:
        """One dict per (site_a, site_b, measure): keys site_a, site_b, measure, value; plus
        'note' (str or None) where a value is undefined (NaN) and why."""
        for mom in self._groups.values():
            mom.flush(release=True)
        table: dict[str, tuple[np.ndarray, list[list[str | None]]]] = {}
        for g, mom in self._groups.items():
            wanted = [m for m in self.measures if _GROUP[m] == g]
            table.update(_m.compute(mom, wanted))
        out = []
        for i, sa in enumerate(self.la.sites):
            for j, sb in enumerate(self.lb.sites):
                for m in self.measures:
                    if m in table:
                        vals, notes = table[m]
                        val, note = float(vals[i, j]), notes[i][j]
                    else:
                        val, note = float("nan"), "no rows were given"
                    out.append({"site_a": sa, "site_b": sb, "measure": m, "value": val,
                                "note": note})
        return out
