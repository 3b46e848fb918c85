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
from lamina.analyses.compare._moments import F64, Layout, Moments, unit_rows
from lamina.errors import LaminaError

MEASURES_LINEAR = ("cka", "cka_debiased", "rsa", "rsa_correlation", "procrustes", "svcca",
                   "pwcca")
# which row transform each measure's sums are taken over
_GROUP = {"cka": "raw", "cka_debiased": "raw", "procrustes": "raw", "svcca": "raw",
          "pwcca": "raw", "rsa": "cos", "rsa_correlation": "corr"}


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
        self.la, self.lb = Layout(dims_a, "a"), Layout(dims_b, "b")
        self.measures = list(dict.fromkeys(measures))
        self.product_dtype, self.flush_rows = product_dtype, flush_rows
        self._groups: dict[str, Moments] = {}

    def _ensure_groups(self, dtype: torch.dtype) -> None:
        if self._groups:
            return
        product = self.product_dtype or dtype
        for m in self.measures:
            g = _GROUP[m]
            if g not in self._groups:
                quartic = g == "raw" and "cka_debiased" in self.measures
                self._groups[g] = Moments(self.la, self.lb, quartic, product, self.flush_rows)

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
            rows[g] = (x, y) if g == "raw" else (unit_rows(x, self.la, centre, first),
                                                 unit_rows(y, self.lb, centre, first))
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
