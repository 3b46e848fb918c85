"""The linear comparison measures, exactly, from the streamed float64 sums of :mod:`.sums`.

Notation: rows ``x_i`` (one site of side A, width d_A) and ``y_i`` (one site of side B), N rows;
``Xc``, ``Yc`` the column-centred data; ``C_xy = Xc^T Yc`` (d_A x d_B) etc. (unnormalised).

* ``cka`` (Kornblith et al. 2019): ``||C_xy||_F^2 / (||C_xx||_F ||C_yy||_F)``.
* ``cka_debiased``: CKA with the unbiased HSIC of Song et al. 2012 on ``K = X X^T``,
  ``L = Y Y^T`` (platonic-rep's ``hsic_unbiased``, without its ``+1e-6``). With ``K~``, ``L~``
  the kernels with zeroed diagonals and ``q_i = |x_i|^2``, ``r_i = |y_i|^2``:
  ``tr(K~L~) = ||X^T Y||_F^2 - sum q r``, ``1^T K~ 1 = |sum x|^2 - sum q`` and
  ``1^T K~ L~ 1 = s_x^T X^T Y s_y - s_y . sum q y - s_x . sum r x + sum q r``. The estimator is
  invariant to translating the features, so it is evaluated about the column means.
* ``rsa`` / ``rsa_correlation``: Pearson correlation over the N(N-1)/2 pairs i < j of the
  cosine similarities ``u_i . u_j`` (u the unit rows; for ``rsa_correlation`` rows are first
  centred across features). With ``U^T V`` from the sums: ``sum_{i<j} S_ij = (|sum u|^2 - N)/2``,
  ``sum_{i<j} S_ij^2 = (||U^T U||_F^2 - N)/2``, ``sum_{i<j} S_ij T_ij = (||U^T V||_F^2 - N)/2``.
* ``procrustes``: ``||C_xy||_* / sqrt(tr C_xx tr C_yy)`` (nuclear norm), 1 for a representation
  with itself up to rotation and scale; Williams et al.'s angular shape distance (netrep
  ``LinearMetric(alpha=1)``) is ``arccos`` of it.
* ``svcca`` (Raghu et al. 2017): on each side keep the fewest top principal directions of
  ``C_xx`` whose eigenvalues hold >= 99% of the variance; the mean of the canonical correlations
  between the two reduced spaces (``min(k_A, k_B)`` of them).
* ``pwcca`` (Morcos et al. 2018): CCA between the full spaces (directions with eigenvalue below
  1e-10 of the largest dropped), correlations weighted by ``alpha_i = sum_j |<h_i, xc_j>|``,
  ``h_i`` the unit canonical variates (over the N rows) of the side with fewer directions (side
  A on a tie) and ``xc_j`` its centred neurons. (The paper's weights; the reference code's
  ``compute_pwcca`` omits the whitening in its directions.) Not symmetric in A and B. With N
  close to d the canonical correlations crowd near 1 and the weights are ill-determined: from
  the d x d sums (whose condition is the square of the data's) PWCCA then differs from an SVD
  of the N x d data by up to ~1e-3 (N = 1.2 d, minilm tokens); agreement is ~1e-14 by N = 2.5 d.

Nuclear norms (procrustes, svcca) come from the eigenvalues of the smaller Gram ``M^T M`` where
a rounding bound on them keeps the sum within 1e-8 relative, else from an SVD.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

F64 = torch.float64
QUARTIC = ("n_a", "n_b", "t1_ab", "t2_ab", "t3_ab", "t1_aa", "t1_bb", "t2_aa", "t2_bb")
SVCCA_VARIANCE = 0.99
PWCCA_RANK_TOL = 1e-10


def reshift_quartic(mom: Any, d: torch.Tensor, e: torch.Tensor) -> None:
    """Move the squared-norm sums of ``mom`` (a ``_Moments``) from rows ``p``, ``q`` to rows
    ``p - d``, ``q - e`` (``d`` [D_A], ``e`` [D_B]); reads the old ``s`` and Grams."""
    n, ea, eb = float(mom.n), mom.la.indicator, mom.lb.indicator
    g, sa, sb = mom.g_ab, mom.s_a, mom.s_b
    dd, ee = ea @ (d * d), eb @ (e * e)  # |d_s|^2 per site
    ds, es = ea @ (d * sa), eb @ (e * sb)  # d_s . s_s
    gd = ea @ (d[:, None] * g)  # [sites_a, D_B]
    ge = (g * e[None, :]) @ eb.T  # [D_A, sites_b]
    dge = ea @ (d[:, None] * ge)
    et2 = (mom.t2_ab * e[None, :]) @ eb.T
    dt3 = ea @ (d[:, None] * mom.t3_ab)
    na_new, nb_new = mom.n_a - 2 * ds + n * dd, mom.n_b - 2 * es + n * ee
    t1 = (mom.t1_ab - 2 * et2 - 2 * dt3 + 4 * dge + ee[None, :] * mom.n_a[:, None]
          + dd[:, None] * mom.n_b[None, :] - 2 * ee[None, :] * ds[:, None]
          - 2 * dd[:, None] * es[None, :] + n * dd[:, None] * ee[None, :])
    t2 = mom.t2_ab - 2 * gd + dd[:, None] * sb[None, :] - na_new[:, None] * e[None, :]
    t3 = mom.t3_ab - 2 * ge + sa[:, None] * ee[None, :] - d[:, None] * nb_new[None, :]
    selfs = []
    for grams, lay, s, dv, nn, t1s, t2s, dsv, ddv in (
            (mom.g_aa, mom.la, sa, d, mom.n_a, mom.t1_aa, mom.t2_aa, ds, dd),
            (mom.g_bb, mom.lb, sb, e, mom.n_b, mom.t1_bb, mom.t2_bb, es, ee)):
        gdd = torch.cat([gm @ dv[sl] for gm, sl in zip(grams, lay.slices, strict=True)])
        dgd = lay.indicator @ (dv * gdd)
        dt2 = lay.indicator @ (dv * t2s)
        n_new = nn - 2 * dsv + n * ddv
        t1_new = t1s - 4 * dt2 + 2 * ddv * nn + 4 * dgd - 4 * ddv * dsv + n * ddv * ddv
        t2_new = t2s - 2 * gdd + (ddv @ lay.indicator) * s - (n_new @ lay.indicator) * dv
        selfs.append((t1_new, t2_new))
    mom.t1_ab, mom.t2_ab, mom.t3_ab, mom.n_a, mom.n_b = t1, t2, t3, na_new, nb_new
    (mom.t1_aa, mom.t2_aa), (mom.t1_bb, mom.t2_bb) = selfs


def _segsq(m: torch.Tensor, ea: torch.Tensor, eb: torch.Tensor) -> torch.Tensor:
    """Squared Frobenius norm of every (site_a, site_b) block of ``m`` [D_A, D_B]."""
    return ea @ (m * m) @ eb.T


def _fro2(blocks: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([(b * b).sum() for b in blocks])


def _centred(mom: Any) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    n = float(mom.n)
    c_ab = mom.g_ab - torch.outer(mom.s_a, mom.s_b) / n
    c_aa = [g - torch.outer(mom.s_a[sl], mom.s_a[sl]) / n
            for g, sl in zip(mom.g_aa, mom.la.slices, strict=True)]
    c_bb = [g - torch.outer(mom.s_b[sl], mom.s_b[sl]) / n
            for g, sl in zip(mom.g_bb, mom.lb.slices, strict=True)]
    return c_ab, c_aa, c_bb


def _ratio(num: torch.Tensor, den: torch.Tensor, notes: list[list[str | None]],
           why: str) -> np.ndarray:
    out = (num / den).numpy()
    bad = ~np.isfinite(out) | (den.numpy() <= 0)
    out[bad] = np.nan
    for i, j in zip(*np.nonzero(bad), strict=True):
        notes[i][j] = notes[i][j] or why
    return out


def _hsic_u(a: torch.Tensor, kx: torch.Tensor, ly: torch.Tensor, c: torch.Tensor,
            n: float) -> torch.Tensor:
    return (a + kx * ly / ((n - 1) * (n - 2)) - 2 * c / (n - 2)) / (n * (n - 3))


def _debiased(m: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """HSIC_u for every site pair [sites_a, sites_b] and the product of the self terms, from
    the sums about the reference shift (HSIC_u is invariant to translating the features)."""
    n = float(m.n)
    ea, eb, sa, sb = m.la.indicator, m.lb.indicator, m.s_a, m.s_b
    a = _segsq(m.g_ab, ea, eb) - m.t1_ab
    kx, ly = ea @ (sa * sa) - m.n_a, eb @ (sb * sb) - m.n_b
    c = (ea @ (sa[:, None] * m.g_ab * sb[None, :]) @ eb.T - ea @ (sa[:, None] * m.t3_ab)
         - (m.t2_ab * sb[None, :]) @ eb.T + m.t1_ab)
    cross = _hsic_u(a, kx[:, None], ly[None, :], c, n)
    own = []
    for grams, lay, s, t1, t2, k in ((m.g_aa, m.la, sa, m.t1_aa, m.t2_aa, kx),
                                     (m.g_bb, m.lb, sb, m.t1_bb, m.t2_bb, ly)):
        sgs = torch.stack([s[sl] @ g @ s[sl] for g, sl in zip(grams, lay.slices, strict=True)])
        c_own = sgs - 2 * (lay.indicator @ (s * t2)) + t1
        own.append(_hsic_u(_fro2(grams) - t1, k, k, c_own, n))
    return cross, torch.sqrt(own[0][:, None].clamp(min=0) * own[1][None, :].clamp(min=0))


def nuclear_norm(m: torch.Tensor) -> float:
    """Sum of the singular values of ``m`` (float64): from the eigenvalues of its smaller Gram
    when their error bound (rounding of the Gram and of the eigensolver) keeps the sum within
    1e-8 relative, else from an SVD (slower, exact to rounding)."""
    inner, k = max(m.shape), min(m.shape)
    g = m.T @ m if m.shape[1] <= m.shape[0] else m @ m.T
    lam = torch.linalg.eigvalsh(g)
    eps = torch.finfo(F64).eps
    delta = 2 * eps * (inner * float((m * m).sum()) + k * float(lam.abs().max()))
    est = float(torch.sqrt(lam.clamp(min=0)).sum())
    spread = torch.sqrt((lam + delta).clamp(min=0)) - torch.sqrt((lam - delta).clamp(min=0))
    if float(spread.sum()) <= 1e-8 * est:
        return est
    return float(torch.linalg.svdvals(m).sum())


def _eig_desc(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lam, vec = torch.linalg.eigh(c)
    return lam.flip(0).clamp(min=0), vec.flip(1)


def _svcca_pwcca(c_ab: torch.Tensor, c_aa: list[torch.Tensor], c_bb: list[torch.Tensor],
                 mom: Any, wanted: list[str], out: dict, notes: dict) -> None:
    def bases(c: torch.Tensor) -> dict[str, Any] | None:
        lam, vec = _eig_desc(c)
        if lam[0] <= 0:
            return None
        k_sv = min(int((torch.cumsum(lam, 0) / lam.sum() < SVCCA_VARIANCE).sum()) + 1, len(lam))
        k_pw = int((lam > lam[0] * PWCCA_RANK_TOL).sum())
        return {"svcca": vec[:, :k_sv] / torch.sqrt(lam[:k_sv]),  # whitening of the kept PCs
                "pwcca": vec[:, :k_pw] / torch.sqrt(lam[:k_pw]),
                "up": vec[:, :k_pw] * torch.sqrt(lam[:k_pw])}  # C w for whitened directions w

    side_a, side_b = [bases(c) for c in c_aa], [bases(c) for c in c_bb]
    for i, sla in enumerate(mom.la.slices):
        for j, slb in enumerate(mom.lb.slices):
            ba, bb = side_a[i], side_b[j]
            if ba is None or bb is None:
                for m in wanted:
                    notes[m][i][j] = "a site is constant over the rows (zero variance)"
                continue
            block = c_ab[sla, slb]
            if "svcca" in wanted:  # mean canonical correlation of the reduced spaces
                whitened = ba["svcca"].T @ block @ bb["svcca"]
                out["svcca"][i, j] = nuclear_norm(whitened) / min(whitened.shape)
            if "pwcca" in wanted:
                u, rho, vh = torch.linalg.svd(ba["pwcca"].T @ block @ bb["pwcca"],
                                              full_matrices=False)
                ka, kb = ba["pwcca"].shape[1], bb["pwcca"].shape[1]
                dirs = ba["up"] @ u if ka <= kb else bb["up"] @ vh.T
                alpha = dirs.abs().sum(0)  # sum over neurons of |<h_i, x_j>|
                out["pwcca"][i, j] = float((alpha * rho.clamp(max=1)).sum() / alpha.sum())


def _rsa(mom: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Numerator and denominator of the Pearson correlation over pairs i < j of the unit rows'
    similarities, every site pair, from the (shifted) sums of the unit rows."""
    n, ea, eb = float(mom.n), mom.la.indicator, mom.lb.indicator
    ca, cb = mom.shift_a, mom.shift_b  # the raw sums from the shifted ones
    g = mom.g_ab + torch.outer(mom.s_a, cb) + torch.outer(ca, mom.s_b) + n * torch.outer(ca, cb)
    sum_a, sum_b = mom.s_a + n * ca, mom.s_b + n * cb
    own = []
    for grams, lay, s, c in ((mom.g_aa, mom.la, mom.s_a, ca), (mom.g_bb, mom.lb, mom.s_b, cb)):
        raw = [gm + torch.outer(s[sl], c[sl]) + torch.outer(c[sl], s[sl])
               + n * torch.outer(c[sl], c[sl]) for gm, sl in zip(grams, lay.slices, strict=True)]
        own.append((_fro2(raw) - n) / 2)
    pairs = n * (n - 1) / 2
    sx, sy = (ea @ (sum_a * sum_a) - n) / 2, (eb @ (sum_b * sum_b) - n) / 2
    sxy = (_segsq(g, ea, eb) - n) / 2
    num = pairs * sxy - sx[:, None] * sy[None, :]
    vx, vy = pairs * own[0] - sx * sx, pairs * own[1] - sy * sy
    return num, torch.sqrt(vx[:, None].clamp(min=0) * vy[None, :].clamp(min=0))


def compute(mom: Any, wanted: list[str]) -> dict[str, tuple[np.ndarray, list[list[str | None]]]]:
    """Every measure in ``wanted`` (all of one row transform) for every site pair of ``mom``:
    ``{measure: (values [sites_a, sites_b], notes)}``."""
    na, nb, n = len(mom.la.dims), len(mom.lb.dims), float(mom.n)
    out = {m: np.full((na, nb), np.nan) for m in wanted}
    notes: dict[str, list[list[str | None]]] = {m: [[None] * nb for _ in range(na)]
                                                for m in wanted}
    least = {"cka_debiased": 4, "rsa": 3, "rsa_correlation": 3}
    ready = []
    for m in wanted:
        if n < least.get(m, 2):
            for row in notes[m]:
                row[:] = [f"{m} needs at least {least.get(m, 2)} rows, got {int(n)}"] * nb
        else:
            ready.append(m)
    if not ready:
        return {m: (out[m], notes[m]) for m in wanted}
    ea, eb = mom.la.indicator, mom.lb.indicator
    constant = "a site is constant over the rows (zero variance)"
    if ready[0] in ("rsa", "rsa_correlation"):
        m = ready[0]
        num, den = _rsa(mom)
        out[m] = _ratio(num, den, notes[m], "all pairwise similarities of a site are equal")
        return {k: (out[k], notes[k]) for k in wanted}
    c_ab, c_aa, c_bb = _centred(mom)
    norm_a, norm_b = torch.sqrt(_fro2(c_aa)), torch.sqrt(_fro2(c_bb))
    if "cka" in ready:
        out["cka"] = _ratio(_segsq(c_ab, ea, eb), norm_a[:, None] * norm_b[None, :],
                            notes["cka"], constant)
    if "cka_debiased" in ready:
        cross, den = _debiased(mom)
        out["cka_debiased"] = _ratio(cross, den, notes["cka_debiased"],
                                     "an unbiased HSIC self term is not positive (a constant "
                                     "site, or too few rows)")
    if "procrustes" in ready:
        tr_a = torch.stack([torch.trace(c) for c in c_aa])
        tr_b = torch.stack([torch.trace(c) for c in c_bb])
        nuc = torch.tensor([[nuclear_norm(c_ab[sa, sb]) for sb in mom.lb.slices]
                            for sa in mom.la.slices], dtype=F64)
        out["procrustes"] = _ratio(nuc, torch.sqrt(tr_a[:, None] * tr_b[None, :]),
                                   notes["procrustes"], constant)
    cca = [m for m in ("svcca", "pwcca") if m in ready]
    if cca:
        _svcca_pwcca(c_ab, c_aa, c_bb, mom, cca, out, notes)
    return {m: (out[m], notes[m]) for m in wanted}
