"""Comparing representations across layers and models: :func:`compare`.

Which layers of model A correspond to which of model B? :func:`compare` computes similarity
measures between every site of A and every site of B over the same N inputs, exactly and in
one pass: both models run on each batch of texts and both sides' rows go into the same
streamed float64 sums (:class:`~lamina.analyses.compare.sums.StreamedMeasures`), whose memory
does not depend on N. The linear measures (``cka``, ``cka_debiased``, ``rsa``,
``rsa_correlation``, ``procrustes``, ``svcca``, ``pwcca``) come from those sums, never from an
N x N matrix. ``mutual_knn``, ``cknna`` (:mod:`~lamina.analyses.compare.knn`) and
``rsa_spearman`` (:mod:`~lamina.analyses.compare.spearman`) and ``cka_rbf`` (RBF-kernel
CKA, only when asked for and up to 4,000 rows: :mod:`~lamina.analyses.compare.rbf`) need the
rows themselves: when one
of them is asked for, every site's rows are kept in memory as float32 (checked against the
available memory before the pass).

Modules: ``sums``/``measures`` (the streamed linear measures), ``knn``/``spearman``,
``inputs`` (the inputs, aligned and streamed), ``result`` (:class:`CompareResult`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from lamina.analyses.compare.inputs import (
    DEFAULT_SITES,
    Plan,
    batches,
    plan,
    read_texts,
    resolve_pair,
)
from lamina.analyses.compare.knn import MEASURES_KNN
from lamina.analyses.compare.result import CompareResult, best_matches
from lamina.analyses.compare.sums import MEASURES_LINEAR, StreamedMeasures
from lamina.checks import check_int
from lamina.errors import LaminaError

#: Measures that need the rows kept (float32, in memory).
MEASURES_ROWS = (*MEASURES_KNN, "rsa_spearman", "cka_rbf")
MEASURES = (*MEASURES_LINEAR, *MEASURES_ROWS)
#: Row chunks the bootstrap resamples, and the most memory their sums may take.
BOOTSTRAP_CHUNKS, BOOTSTRAP_BYTES = 50, 2_000_000_000
#: Share of the available memory the kept rows may take.
KEEP_SHARE = 0.5


def _check_measures(measures: Any) -> tuple[str, ...]:
    names = (measures,) if isinstance(measures, str) else tuple(measures or ())
    if not names:
        raise LaminaError("measures is empty: give at least one, e.g. ('cka',).",
                          cli="Give at least one --measure, e.g. --measure cka.")
    unknown = [m for m in names if m not in MEASURES]
    if unknown:
        raise LaminaError(f"Unknown measure {unknown[0]!r}: choose from {', '.join(MEASURES)}.",
                          cli=f"Unknown --measure {unknown[0]}: choose from "
                              f"{', '.join(MEASURES)}.")
    return tuple(dict.fromkeys(names))


def _check_options(rows: Any, pooling: Any) -> None:
    if rows not in ("tokens", "pooled"):
        raise LaminaError(f"rows must be 'tokens' or 'pooled', not {rows!r}.",
                          cli=f"--rows must be tokens or pooled, not {rows}.")
    if pooling not in ("mean", "last"):
        raise LaminaError(f"pooling must be 'mean' or 'last', not {pooling!r}.",
                          cli=f"--pooling must be mean or last, not {pooling}.")


def _available_bytes() -> int:
    """Memory available to this process now (``MemAvailable``; the page count otherwise)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def _check_rows_budget(p: Plan, row_measures: Sequence[str], k: int) -> None:
    """Refuse, before the pass, kept rows that would not fit and sizes the kNN and Spearman
    measures cannot take."""
    if not row_measures:
        return
    if "rsa_spearman" in row_measures:
        from lamina.analyses.compare.spearman import SPEARMAN_MAX_ROWS

        if p.n > SPEARMAN_MAX_ROWS:
            raise LaminaError(
                f"rsa_spearman is exact up to {SPEARMAN_MAX_ROWS:,} rows; these inputs give "
                f"{p.n:,}: pass max_rows={SPEARMAN_MAX_ROWS} or use 'rsa' (Pearson over the "
                "same pairs, streamed, no limit).",
                cli=f"rsa_spearman is exact up to {SPEARMAN_MAX_ROWS:,} rows; these inputs give "
                    f"{p.n:,}: pass --max-rows {SPEARMAN_MAX_ROWS} or --measure rsa.")
    if "cka_rbf" in row_measures:
        from lamina.analyses.compare.rbf import RBF_MAX_ROWS

        if p.n > RBF_MAX_ROWS:
            raise LaminaError(
                f"cka_rbf builds an N x N kernel per site and is computed up to "
                f"{RBF_MAX_ROWS:,} rows; these inputs give {p.n:,}: pass max_rows="
                f"{RBF_MAX_ROWS} or use 'cka' (linear, streamed, no limit).",
                cli=f"cka_rbf is computed up to {RBF_MAX_ROWS:,} rows; these inputs give "
                    f"{p.n:,}: pass --max-rows {RBF_MAX_ROWS} or --measure cka.")
    if any(m in MEASURES_KNN for m in row_measures) and k > p.n - 2:
        # with k >= N - 1 every row's neighbours are all the others: mutual kNN would be 1
        raise LaminaError(f"k={k} neighbours need at least {k + 2} rows; there are {p.n}: "
                          "pass a smaller k or more inputs.",
                          cli=f"--k {k} needs at least {k + 2} rows; there are {p.n}.")
    width = sum(p.a.dims.values()) + sum(p.b.dims.values())
    need, have = 4 * p.n * width, _available_bytes()
    if need > KEEP_SHARE * have:
        raise LaminaError(
            f"{', '.join(row_measures)} need the rows kept in memory: {p.n:,} rows x {width:,} "
            f"float32 features = {_gb(need)}, more than half of the {_gb(have)} available. "
            "Pass max_rows=, fewer sites, or only the streamed measures (cka, rsa, procrustes, "
            "..., whose memory does not depend on N).",
            cli=f"{', '.join(row_measures)} need the rows kept in memory ({_gb(need)}, more "
                f"than half of the {_gb(have)} available): pass --max-rows, fewer sites, or "
                "only streamed measures.")


class _Sums:
    """The streamed sums of one pass: one :class:`StreamedMeasures`, or one per row chunk
    when bootstrapping (merged for the point estimate)."""

    def __init__(self, p: Plan, linear: tuple[str, ...], bootstrap: int) -> None:
        self.chunks: list[StreamedMeasures] = []
        self.edges = np.array([0, p.n])
        self.args = (p.a.dims, p.b.dims, linear)
        if not linear:
            return
        n_chunks = min(BOOTSTRAP_CHUNKS, p.n) if bootstrap else 1
        each = StreamedMeasures(*self.args).nbytes() if bootstrap else 0
        need = each * n_chunks
        if need > BOOTSTRAP_BYTES:
            raise LaminaError(
                f"The bootstrap keeps the sums of {n_chunks} row chunks: {_gb(need)} for these "
                f"site pairs ({_gb(each)} each), above the {_gb(BOOTSTRAP_BYTES)} "
                "limit. Compare fewer sites, or pass bootstrap=0.",
                cli=f"--bootstrap keeps the sums of {n_chunks} row chunks ({_gb(need)}), above "
                    f"the {_gb(BOOTSTRAP_BYTES)} limit: use fewer --site-a/--site-b or no "
                    "--bootstrap.")
        self.chunks = [StreamedMeasures(*self.args) for _ in range(n_chunks)]
        self.edges = np.linspace(0, p.n, n_chunks + 1).round().astype(np.int64)

    def update(self, start: int, ra: dict[str, torch.Tensor], rb: dict[str, torch.Tensor]
               ) -> None:
        stop = start + len(next(iter(ra.values())))
        for c, sums in enumerate(self.chunks):
            lo, hi = max(start, int(self.edges[c])), min(stop, int(self.edges[c + 1]))
            if hi > lo:
                sums.update({s: t[lo - start: hi - start] for s, t in ra.items()},
                            {s: t[lo - start: hi - start] for s, t in rb.items()})

    def merged(self, counts: Sequence[int] | None = None) -> StreamedMeasures:
        """The sums of all rows, or of each chunk taken ``counts[c]`` times (a bootstrap
        resample)."""
        if counts is None:
            if len(self.chunks) == 1:
                return self.chunks[0]
            counts = [1] * len(self.chunks)
        return StreamedMeasures.combine(self.chunks, counts)


def _bootstrap(sums: _Sums, replicates: int, seed: int) -> pd.DataFrame:
    """Percentile 95% intervals over ``replicates`` resamples of the row chunks (with
    replacement, multinomial counts): columns site_a, site_b, measure, ci_low, ci_high."""
    rng = np.random.default_rng(seed)
    n = len(sums.chunks)
    draws: list[list[float]] = []
    keys: list[tuple[str, str, str]] = []
    for _ in range(replicates):
        counts = rng.multinomial(n, np.full(n, 1.0 / n))
        values = sums.merged(counts).values()
        keys = [(v["site_a"], v["site_b"], v["measure"]) for v in values]
        draws.append([float(v["value"]) for v in values])
    arr = np.asarray(draws, dtype=np.float64)
    finite = np.isfinite(arr).any(0)
    low = np.full(arr.shape[1], math.nan)
    high = np.full(arr.shape[1], math.nan)
    if finite.any():
        low[finite], high[finite] = np.nanpercentile(arr[:, finite], [2.5, 97.5], axis=0)
    return pd.DataFrame([{"site_a": a, "site_b": b, "measure": m, "ci_low": lo, "ci_high": hi}
                         for (a, b, m), lo, hi in zip(keys, low, high, strict=True)])


def _frame(records: list[dict[str, Any]], measures: tuple[str, ...], p: Plan) -> pd.DataFrame:
    frame = pd.DataFrame(records)
    frame["note"] = frame["note"].fillna("") if "note" in frame else ""
    order = {m: i for i, m in enumerate(measures)}
    ia = {s: i for i, s in enumerate(p.a.sites)}
    ib = {s: i for i, s in enumerate(p.b.sites)}
    frame = frame[frame["measure"].isin(order)].copy()
    frame["_o"] = [(order[m], ia[a], ib[b]) for m, a, b in
                   zip(frame["measure"], frame["site_a"], frame["site_b"], strict=True)]
    frame = frame.sort_values("_o", kind="stable").drop(columns="_o").reset_index(drop=True)
    frame["value"] = frame["value"].astype(float)
    return frame[["site_a", "site_b", "measure", "value", "note"]]


def compare(a: Any, b: Any, *, texts: Sequence[str] | None = None, corpus: Any = None,
            sites_a: Any = DEFAULT_SITES, sites_b: Any = DEFAULT_SITES,
            measures: Sequence[str] = ("cka", "cka_debiased", "rsa", "procrustes"),
            k: int = 10, rows: str = "tokens", pooling: str = "mean", bootstrap: int = 0,
            seed: int = 0, batch_size: int = 32, max_rows: int | None = None,
            progress: bool | None = None, truncate: bool = False) -> CompareResult:
    """Similarity of every site of ``a`` with every site of ``b`` on the same inputs.

    Args:
        a, b: models (a :class:`lamina.Model`, or anything :func:`lamina.load` takes) run on
            the same texts; :class:`lamina.Activations`; an activation store (or its path);
            or a dict ``{site: array [N, d]}`` (numpy or torch), row ``i`` of every site the
            same input. The same model twice compares it with itself (each batch runs once
            per side).
        texts, corpus: the texts the models run on: a list of strings, or a corpus split into
            its non-empty lines (a :class:`~pathlib.Path` is read as a UTF-8 file, a ``str``
            is the text itself). Default: the texts behind stored activations.
        sites_a, sites_b: site names or globs of each side (default ``hidden.*``; for
            arrays, stores and activations, every site when none is called ``hidden.*``).
        measures: any of ``cka``, ``cka_debiased``, ``rsa``, ``rsa_correlation``,
            ``procrustes``, ``svcca``, ``pwcca`` (streamed, memory independent of N),
            ``mutual_knn``, ``cknna``, ``rsa_spearman`` and ``cka_rbf`` (these keep every
            site's rows in memory as float32: ``N x (sum of the sites' widths) x 4``
            bytes, refused before the pass above half of the available memory).
        k: neighbours of ``mutual_knn`` and ``cknna``.
        rows: ``"tokens"``: one row per token (the two sides must tokenize every text
            identically, else an error says to use ``"pooled"``); ``"pooled"``: one row per
            text, which works across tokenizers.
        pooling: the pooled row: ``"mean"`` over the text's tokens (special tokens included:
            every real, non-padding token) or its ``"last"`` token.
        bootstrap: replicates of a bootstrap over the inputs (0: none): the rows are cut into
            50 consecutive chunks, each replicate merges a multinomial resample of the
            chunks' sums, and ``ci_low``/``ci_high`` are the percentile 95% interval. Linear
            measures only; refused when 50 chunks' sums exceed 2 GB.
        seed: the bootstrap's seed.
        batch_size: texts per step (both models run on each batch).
        max_rows: compare only the first ``max_rows`` rows.
        progress: a progress bar (default: when there is more than one step).
        truncate: cut texts longer than a model's context to its first tokens.

    Returns:
        :class:`CompareResult`: ``to_frame()`` long form (``site_a``, ``site_b``,
        ``measure``, ``value``, ...), ``matrix(measure)`` L_A x L_B, ``best_match(measure)``,
        ``plot()``, ``save(dir)``.
    """
    names = _check_measures(measures)
    _check_options(rows, pooling)
    k = check_int(k, "k", 1, option="--k")
    bootstrap = check_int(bootstrap, "bootstrap", 0, option="--bootstrap")
    seed = check_int(seed, "seed", 0, option="--seed")
    check_int(batch_size, "batch_size", 1, option="--batch-size")
    if max_rows is not None:
        max_rows = check_int(max_rows, "max_rows", 2, option="--max-rows")
    chosen = read_texts(texts, corpus)
    side_a, side_b = resolve_pair(a, b, sites_a, sites_b)
    p = plan(side_a, side_b, chosen, rows, pooling, max_rows, truncate)
    linear = tuple(m for m in names if m in MEASURES_LINEAR)
    kept = tuple(m for m in names if m in MEASURES_ROWS)
    _check_rows_budget(p, kept, k)
    sums = _Sums(p, linear, bootstrap)
    keep_a = {s: torch.empty((p.n, d), dtype=torch.float32) for s, d in p.a.dims.items()} \
        if kept else {}
    same = a is b or (p.a.model is not None and p.a.model is p.b.model)
    keep_b = {s: keep_a[s] if same and s in keep_a else torch.empty((p.n, d), dtype=torch.float32)
              for s, d in p.b.dims.items()} if kept else {}  # one copy of rows on both sides
    for start, ra, rb in batches(p, batch_size, progress):
        if linear:
            sums.update(start, ra, rb)
        for s, t in keep_a.items():
            t[start: start + len(ra[s])] = ra[s]
        for s, t in keep_b.items():
            if t is not keep_a.get(s):
                t[start: start + len(rb[s])] = rb[s]
    records: list[dict[str, Any]] = []
    if linear:
        records += sums.merged().values()
    if any(m in MEASURES_KNN for m in kept):
        from lamina.analyses.compare.knn import knn_measures

        records += knn_measures(keep_a, keep_b, [m for m in kept if m in MEASURES_KNN], k,
                                progress=bool(progress))
    if "rsa_spearman" in kept:
        from lamina.analyses.compare.spearman import spearman_rsa

        records += spearman_rsa(keep_a, keep_b)
    if "cka_rbf" in kept:
        from lamina.analyses.compare.rbf import rbf_cka

        records += rbf_cka(keep_a, keep_b)
    table = _frame(records, names, p)
    notes = []
    if bootstrap and linear:
        ci = _bootstrap(sums, bootstrap, seed)
        table = table.merge(ci, on=["site_a", "site_b", "measure"], how="left")
        table = table[["site_a", "site_b", "measure", "value", "ci_low", "ci_high", "note"]]
        if kept:
            notes.append(f"No bootstrap interval for {', '.join(kept)}: the bootstrap resamples "
                         "the streamed sums of the linear measures only.")
    if p.truncated:
        notes.append(f"Only the first {p.n:,} of {p.n_available:,} rows were compared "
                     "(max_rows).")
    return _result(table, p, names, k, bootstrap, seed, notes)


def _result(table: pd.DataFrame, p: Plan, names: tuple[str, ...], k: int, bootstrap: int,
            seed: int, notes: list[str]) -> CompareResult:
    from lamina.models import versions

    mode = "given rows" if p.texts is None else (
        "tokens" if p.rows == "tokens" else f"pooled per text ({p.pooling})")
    res = CompareResult(table, list(p.a.sites), list(p.b.sites), meta={
        "models": [p.a.label, p.b.label], "rows": mode, "measures": list(names),
        "k": k, "bootstrap": bootstrap, "seed": seed, "n_rows": p.n,
        "n_texts": None if p.texts is None else len(p.texts),
        "sites_a": list(p.a.sites), "sites_b": list(p.b.sites), "versions": versions()})
    res.summary = {"n_rows": p.n, "n_texts": res.meta["n_texts"],
                   "models": [p.a.label, p.b.label], "measures": list(names), "rows": mode,
                   "best_matches": best_matches(res), "notes": notes}
    return res


__all__ = ["MEASURES", "MEASURES_KNN", "MEASURES_LINEAR", "MEASURES_ROWS", "CompareResult",
           "compare"]
