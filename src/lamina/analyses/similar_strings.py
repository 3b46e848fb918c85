"""Similar strings: which stored strings produce an intermediate most like a query's?

For each query and site, the query's activation at the store's position is compared with every
stored row by the similarity engine (streamed block by block, so the store may exceed memory),
keeping the top k or everything above a threshold. For stores built from
:func:`lamina.store.substrings`, each string's next characters in the corpus come along.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from lamina.errors import LaminaError
from lamina.models import Model, load
from lamina.results import Result
from lamina.similarity import scan
from lamina.store import Store, Substrings


def next_token_counts(sub: Substrings, vocab: dict[str, int]) -> sp.csr_matrix:
    """``[n_strings, vocab]`` sparse counts of the character after every occurrence of each
    unique substring in its text (the study's ``counts(s)``). ``vocab`` maps characters to
    token ids (a character tokenizer's vocabulary)."""
    text, n = sub.text, sub.n
    index = {s: i for i, s in enumerate(sub.strings)}
    missing = sorted(set(text) - set(vocab))
    if missing:
        raise LaminaError(f"Characters of the text are not in the vocabulary: {missing[:10]}.")
    rows = np.fromiter((index[text[i : i + n]] for i in range(len(text) - n)), np.int64,
                       count=len(text) - n)
    cols = np.fromiter((vocab[c] for c in text[n:]), np.int64, count=len(text) - n)
    data = np.ones(len(rows), dtype=np.float64)
    return sp.csr_matrix((data, (rows, cols)), shape=(len(sub.strings), max(vocab.values()) + 1))


@dataclass
class SimilarStringsResult(Result):
    """``to_frame()``: one row per query, site and match: ``query``, ``site``, ``rank``,
    ``string``, ``similarity``, ``row`` (the store row) and ``next`` (the most frequent next
    characters of the string in the corpus, for substring stores)."""

    table: pd.DataFrame
    name = "similar_strings"

    def to_frame(self) -> pd.DataFrame:
        return self.table.copy()

    def plot(self, **kwargs: Any) -> Any:
        """Similarity of the matches by rank, one line per query and site."""
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for (query, site), rows in self.table.groupby(["query", "site"], sort=False):
            ax.plot(rows["rank"], rows["similarity"], marker="o", label=f"{query!r} {site}")
        ax.set(xlabel="Rank", ylabel=self.meta.get("metric", "similarity"),
               title="Most similar stored strings")
        ax.legend(fontsize=7)
        fig.tight_layout()
        return fig


def _next_summary(counts: sp.csr_matrix | None, row: int, itos: dict[int, str]) -> str:
    if counts is None:
        return ""
    r = counts.getrow(row)
    order = np.argsort(-r.data)[:3]
    return " ".join(f"{itos[int(r.indices[o])]!r}:{int(r.data[o])}" for o in order)


def similar_strings(model: Model | str, store: Store, queries: Sequence[str] | str, *,
                    site: str | Sequence[str], k: int = 10, threshold: float | None = None,
                    metric: str = "cosine", allow_partial: bool = False
                    ) -> SimilarStringsResult:
    """The stored strings whose activation is most similar to each query's.

    Args:
        model: the model the store was collected from.
        store: an activation store (:func:`lamina.store.open`).
        queries: query strings (captured at the store's position).
        site: one or several stored sites.
        k: matches per query (ignored when ``threshold`` is given).
        threshold: keep every match at or above it (cosine) or at or below it (euclidean).
        metric: ``"cosine"`` or ``"euclidean"``.
        allow_partial: search the committed rows of an incomplete store (else an error);
            ``meta`` says ``partial`` with ``n_committed`` of ``n_rows``.
    """
    state = store.require_complete(allow_partial)
    model = load(model)
    store.check_model(model)
    queries = [queries] if isinstance(queries, str) else list(queries)
    sites = [site] if isinstance(site, str) else list(site)
    if metric not in ("cosine", "euclidean"):
        raise LaminaError(f"metric must be 'cosine' or 'euclidean', not {metric!r}.")
    acts = model.collect(queries, sites, positions=store.manifest["positions"])
    strings = store.strings
    counts, itos = None, {}
    if store.manifest.get("substring_length"):
        vocab = model.tokenizer.get_vocab()
        counts = next_token_counts(store.substrings(), vocab)
        itos = {v: k for k, v in vocab.items()}
    rows = []
    for s in sites:
        x = acts[s].flatten(1).float()
        y = store[s].flat()
        if threshold is None:
            res = scan(x, y, metric=metric, topk=k, largest=metric == "cosine")
            for qi, query in enumerate(queries):
                for rank, (j, v) in enumerate(zip(res.topk_indices[qi], res.topk_values[qi],
                                                  strict=True), start=1):
                    rows.append((query, s, rank, int(j), float(v)))
        else:
            res = scan(x, y, metric=metric, threshold=threshold,
                       threshold_below=metric == "euclidean")
            frame = pd.DataFrame({"i": res.pairs_i, "j": res.pairs_j, "v": res.pairs_values})
            frame = frame.sort_values(["i", "v"], ascending=[True, metric == "euclidean"])
            for qi, group in frame.groupby("i", sort=True):
                for rank, (j, v) in enumerate(zip(group["j"], group["v"], strict=True), 1):
                    rows.append((queries[qi], s, rank, int(j), float(v)))
    table = pd.DataFrame(rows, columns=["query", "site", "rank", "row", "similarity"])
    table.insert(3, "string", [strings[j] for j in table["row"]])
    table["next"] = [_next_summary(counts, j, itos) for j in table["row"]]
    return SimilarStringsResult(table, meta=model.describe(
        sites=sites, k=k, threshold=threshold, metric=metric, store=str(store.path), **state))
