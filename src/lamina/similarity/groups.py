"""``group_stats``: similarity within and across labelled groups.

For cosine, correlation and dot the figures come exactly from per-group sums and Gram
matrices (O(N d^2), see ``_group_gram``); euclidean, per-group-pair histograms or
``method="stream"`` stream the pair values block by block (O(N^2 d)). Pairs are unique
(i < j), self pairs excluded; variances use ddof=1 (as the t-tests)."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats

from lamina.similarity._args import block_size as pick_block_size
from lamina.similarity._args import (
    check_int,
    check_metric,
    memory_budget,
    resolve_device,
    resolve_precision,
)
from lamina.similarity._errors import SimilarityInputError, UndefinedStatisticWarning
from lamina.similarity._group_gram import GramAccumulator, permuted_within_sums
from lamina.similarity._group_stream import stream_moments
from lamina.similarity._hist import make_edges
from lamina.similarity._prepare import RowSource, prepare_inputs, select_rows


@dataclass
class GroupStats:
    """``table``: one row per pair of groups (a <= b; ``within`` when a == b) with ``count``,
    ``mean``, ``var`` (ddof=1) and ``std`` of its pair values. ``summary``: the within- vs
    across-group comparison (``delta`` = within mean - across mean, Student's ``t`` and
    ``p_t``, Welch's ``t_welch``, ``df_welch`` and ``p_welch``, ``cohens_d`` with the pooled SD,
    ``p_permutation``). ``histograms`` (rows of ``table``, n_bins) and ``edges`` when ``bins``
    was given. ``notes``: why any statistic is NaN (no within- or across-group pairs, a single
    pair, values that do not vary); each note is also issued as an
    :class:`UndefinedStatisticWarning`."""

    table: pd.DataFrame
    summary: dict[str, Any]
    histograms: np.ndarray | None = None
    edges: np.ndarray | None = None
    permutation_deltas: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        """The per-group-pair table."""
        return self.table.copy()

    def __getattr__(self, name: str) -> Any:  # summary figures as attributes: res.t, res.delta
        summary = self.__dict__.get("summary", {})
        if name in summary:
            return summary[name]
        raise AttributeError(name)


def _codes(labels: Any, n: int, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Group code of every row of x (-1 outside ``rows``, the selected ids) and group names."""
    if labels is None:
        raise SimilarityInputError(f"labels is None; pass one label per row of x ({n} rows).")
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    try:
        lab = np.asarray(labels)
    except ValueError:  # ragged nested sequences
        lab = np.empty(0)
    if lab.ndim != 1 or len(lab) != n:
        raise SimilarityInputError(
            f"labels must be 1-D with one label per row of x ({n} rows), got shape {lab.shape}."
        )
    picked = lab if rows is None else lab[rows]
    try:
        try:
            codes, names = pd.factorize(picked, sort=True)
        except TypeError:  # labels of mixed types do not sort
            codes, names = pd.factorize(picked, sort=False)
    except TypeError:
        raise SimilarityInputError(
            "labels must be hashable values such as strings or integers, one per row."
        ) from None
    if (codes < 0).any():
        raise SimilarityInputError("labels contain missing values (NaN/None); label every row.")
    out = np.full(n, -1, dtype=np.int64)
    out[slice(None) if rows is None else rows] = codes
    return out, np.asarray(names)


def _ttests(nw: float, mw: float, vw: float, nx: float, mx: float, vx: float) -> dict:
    out = dict(t=math.nan, p_t=math.nan, t_welch=math.nan, df_welch=math.nan,
               p_welch=math.nan, cohens_d=math.nan)
    if nw < 2 or nx < 2:
        return out
    delta = mw - mx
    pooled = ((nw - 1) * vw + (nx - 1) * vx) / (nw + nx - 2)
    df = nw + nx - 2
    if pooled > 0:
        out["t"] = delta / math.sqrt(pooled * (1 / nw + 1 / nx))
        out["p_t"] = float(2 * stats.t.sf(abs(out["t"]), df))
        out["cohens_d"] = delta / math.sqrt(pooled)
    a, b = vw / nw, vx / nx
    if a + b > 0:
        out["t_welch"] = delta / math.sqrt(a + b)
        out["df_welch"] = (a + b) ** 2 / (a * a / (nw - 1) + b * b / (nx - 1))
        out["p_welch"] = float(2 * stats.t.sf(abs(out["t_welch"]), out["df_welch"]))
    return out


def _mean_var(count: np.ndarray, total: np.ndarray, total_sq: np.ndarray):
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        ss = np.maximum(total_sq - count * np.where(count > 0, mean, 0) ** 2, 0.0)
        var = np.where(count > 1, ss / np.maximum(count - 1, 1), np.nan)
    return mean, var


def group_stats(
    x: Any,
    labels: Any,
    *,
    metric: str = "cosine",
    permutations: int = 0,
    seed: int = 0,
    bins: int | np.ndarray | None = None,
    range: tuple[float, float] | None = (-1, 1),
    subset: Any = None,
    method: str = "auto",
    device: str | torch.device | None = None,
    dtype: Any = "float64",
    block_size: int | None = None,
    memory: int | None = None,
    progress: bool = False,
) -> GroupStats:
    """Pair statistics of ``x`` (N, d) within and across the groups given by ``labels`` (N,).

    permutations, seed: label-permutation test of ``delta``: permutation p relabels the usable
        rows (ascending row order) with ``codes[rng.permutation(n)]``, rng =
        ``numpy.random.default_rng(seed)``; ``p_permutation`` = (1 + #{delta_p >= delta}) /
        (1 + permutations). O(N d) per permutation on the Gram route.
    bins, range: per-group-pair histograms (numpy's rules), streamed.
    method: "auto" (Gram route unless euclidean or too many groups), "gram" or "stream".
    dtype: precision of the computation, float64 by default.
    Zero vectors (cosine) and constant rows (correlation) are excluded (``n_zero``).
    Statistics the labels leave undefined (one label: no across-group pairs; only singleton
    groups: no within-group pairs; a single pair: no variance) are NaN and explained in
    ``notes`` (each also issued as an :class:`UndefinedStatisticWarning`); fewer than two
    usable rows raise :class:`SimilarityInputError`."""
    t0 = time.perf_counter()
    if method not in ("auto", "gram", "stream"):
        raise SimilarityInputError(f"unknown method {method!r}; choose 'auto', 'gram', 'stream'.")
    check_metric(metric)
    n_perm = check_int(permutations, "permutations", 0)
    check_int(seed, "seed", 0)
    edges = None if bins is None else make_edges(bins, range, resolve_precision(dtype).value)
    source = RowSource(x, "x")
    (n_all, d), dev = source.shape, resolve_device(device)
    selected = select_rows(subset, n_all)
    code_of_id, names = _codes(labels, n_all, selected)
    g, n = len(names), n_all if selected is None else len(selected)
    budget = memory_budget(dev, memory)
    gram_ok = metric != "euclidean" and g * d * d * 8 * 2 <= budget
    gram_cheaper = n * d * d + g * g * d * d < n * n * d / 2
    if method == "gram" and not gram_ok:
        raise SimilarityInputError(
            "method='gram' needs metric cosine, correlation or dot and G*d*d*16 bytes of memory;"
            " use method='stream'."
        )
    use_gram = method == "gram" or (method == "auto" and gram_ok and gram_cheaper)
    acc = GramAccumulator(code_of_id, g, d, dev) if use_gram else None
    px, _, size, budget = prepare_inputs(  # the Gram sums are taken in this same pass
        source, None, metric, selected, None, dev, dtype, False, memory, block_size,
        visit=None if acc is None else acc.add,
    )
    # groups are those with usable rows (zero vectors are excluded), in label order
    present, codes = np.unique(code_of_id[px.rows], return_inverse=True)
    names, g, n = names[present], len(present), px.n
    chunk = max(256, min(8192, budget // 8 // max(1, d * 8)))
    rng = np.random.default_rng(seed)
    perm_codes = None
    if n_perm:
        perm_codes = np.stack([codes[rng.permutation(n)] for _ in np.arange(n_perm)])
    streamed: dict[str, np.ndarray] = {}
    if not use_gram or edges is not None:
        streamed = stream_moments(
            px, codes, g, pick_block_size(px.device, budget, block_size), sums=not use_gram,
            perm_codes=None if use_gram else perm_codes, hist_edges=edges, progress=progress,
        )
    sizes = np.bincount(codes, minlength=g).astype(np.float64)
    count = np.outer(sizes, sizes)
    np.fill_diagonal(count, sizes * (sizes - 1) / 2)
    if use_gram:
        count, total, total_sq = acc.moments(present, sizes)
    else:
        total, total_sq = streamed["total"], streamed["total_sq"]
    mean, var = _mean_var(count, total, total_sq)
    a_idx, b_idx = np.triu_indices(g)
    table = pd.DataFrame({
        "group_a": names[a_idx], "group_b": names[b_idx], "within": a_idx == b_idx,
        "count": count[a_idx, b_idx].astype(np.int64), "mean": mean[a_idx, b_idx],
        "var": var[a_idx, b_idx], "std": np.sqrt(var[a_idx, b_idx]),
    })
    eye = np.eye(g, dtype=bool)
    upper = np.triu(np.ones((g, g), dtype=bool), 1)
    nw, nx = count[eye].sum(), count[upper].sum()
    sw, sx = total[eye].sum(), total[upper].sum()
    qw, qx = total_sq[eye].sum(), total_sq[upper].sum()
    (mw, mx), (vw, vx) = _mean_var(np.array([nw, nx]), np.array([sw, sx]), np.array([qw, qx]))
    summary: dict[str, Any] = dict(
        metric=metric, method="gram" if use_gram else "stream", n_rows=n, n_groups=g,
        n_zero=len(px.zero_rows), within_count=int(nw), within_mean=float(mw),
        within_var=float(vw), across_count=int(nx), across_mean=float(mx), across_var=float(vx),
        delta=float(mw - mx),
    )
    summary.update(_ttests(nw, mw, vw, nx, mx, vx))
    summary.update(permutations=n_perm, seed=seed, p_permutation=math.nan)
    perm_deltas = None
    if n_perm and nw > 0 and nx > 0:
        grand = sw + sx
        ident = codes[None, :]
        if use_gram:
            within = permuted_within_sums(px, np.concatenate([ident, perm_codes]), g, chunk,
                                          budget)
            observed, within = within[0], within[1:]
        else:
            observed, within = sw, streamed["perm_within"]
        deltas = within / nw - (grand - within) / nx
        obs = observed / nw - (grand - observed) / nx
        tol = 1e-9 * (abs(mw) + abs(mx)) + 1e-15
        summary["p_permutation"] = float((1 + np.sum(deltas >= obs - tol)) / (1 + n_perm))
        perm_deltas = deltas
    meta = dict(device=str(px.device), dtype=str(px.precision.value).replace("torch.", ""),
                seconds=time.perf_counter() - t0)
    notes = _notes(table, summary)
    for note in notes:
        warnings.warn(note, UndefinedStatisticWarning, stacklevel=2)
    return GroupStats(
        table=table, summary=summary,
        histograms=None if edges is None else streamed["hist"][:, 1:-1],
        edges=edges, permutation_deltas=perm_deltas, meta=meta, notes=notes,
    )


def _notes(table: pd.DataFrame, s: dict[str, Any]) -> list[str]:
    """Why each NaN of the summary and the table is undefined."""
    notes = []
    tests = "delta, t, t_welch, cohens_d and p_permutation" if s["permutations"] else (
        "delta, t, t_welch and cohens_d")
    if s["across_count"] == 0:
        notes.append(f"no across-group pairs: all {s['n_rows']} usable rows have one label, so "
                     f"across_mean, across_var, {tests} are undefined (NaN); pass labels "
                     "with at least two groups.")
    if s["within_count"] == 0:
        notes.append(f"no within-group pairs: each of the {s['n_groups']} groups has one "
                     f"usable row, so within_mean, within_var, {tests} are undefined (NaN); "
                     "pass at least one group with two or more rows.")
    for side in ("within", "across"):
        if s[f"{side}_count"] == 1:
            notes.append(f"a single {side}-group pair: {side}_var (ddof=1) and the t-tests "
                         "are undefined (NaN); pass more rows.")
    if (s["within_count"] >= 2 and s["across_count"] >= 2 and math.isnan(s["t"])
            and math.isnan(s["t_welch"])):
        notes.append("the pair values do not vary within either side: t, t_welch, cohens_d "
                     "and their p-values are undefined (NaN).")
    lonely = table["group_a"][table["within"] & (table["count"] == 0)]
    if len(lonely) and s["within_count"] > 0:
        notes.append(f"{len(lonely)} groups have a single usable row ({_names(lonely)}): their "
                     "within rows of the table have no pairs, mean and std NaN.")
    single = (table["count"] == 1).sum()
    if single:
        notes.append(f"{single} rows of the table hold a single pair: their var and std "
                     "(ddof=1) are NaN.")
    return notes


def _names(values: pd.Series, n: int = 5) -> str:
    shown = ", ".join(map(str, values.iloc[:n]))
    return shown + (", ..." if len(values) > n else "")
