"""Embedding-matrix geometry: all-to-all similarity of a vocabulary, at full size and exact.

The second seed notebook computed an N x N cosine matrix, cast it to float16 and subsampled
every 3rd or 5th token to fit in memory. Here every statistic comes from one streaming pass of
the similarity engine over the whole vocabulary: exact histograms of the unique pairs (cosine
and correlation), summary statistics, every token's nearest neighbours, groups of identical or
near-identical embeddings (BERT's untrained ``[unused*]`` tokens), plus the notebook's other
questions: how many distinct values the unused tokens' similarities take, cosine vs correlation,
arithmetic vs L1 means of the rows, and a two-token probe.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats

from lamina.analyses import embedding_plots as plots
from lamina.analyses._checks import single_token
from lamina.checks import check_int, check_number
from lamina.errors import LaminaError
from lamina.models import Model, load
from lamina.results import Result
from lamina.similarity import duplicate_groups, matrix, scan
from lamina.weights import embedding_matrix


@dataclass
class EmbeddingsResult(Result):
    """``summary``: every headline number (``n_tokens``, ``n_pairs``, ``mean``, ``std``,
    ``n_unused``, ``unused_unique_values``, ``n_duplicate_groups``, ...). ``to_frame()``: the
    histogram (bin edges, cosine and correlation counts). ``neighbours``: top-k per token.
    ``duplicates``: one row per token in a duplicate group."""

    histogram: pd.DataFrame
    neighbours: pd.DataFrame
    duplicates: pd.DataFrame
    arrays: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    name = "embeddings"

    def to_frame(self) -> pd.DataFrame:
        return self.histogram.copy()

    def extra_tables(self) -> dict[str, pd.DataFrame]:
        return {"neighbours": self.neighbours, "duplicate_groups": self.duplicates}

    def plot(self, **kwargs: Any) -> Any:
        """Similarity heat map (subsample) and the histogram of all unique pairs."""
        return plots.similarity_overview(self)

    def figures(self) -> dict[str, Any]:
        figs = {"embeddings_similarity": self.plot(),
                "embeddings_matrix": plots.matrix_heatmap(self.arrays["W_sample"],
                                                          self.arrays["sample_ids"]),
                "embeddings_cosine_vs_correlation": plots.cosine_vs_correlation(self)}
        if "unused_mask" in self.arrays and self.summary["n_unused"]:
            figs["embeddings_unused"] = plots.unused_tokens(self.arrays["unused_mask"],
                                                            self.summary)
        if "probe_a" in self.arrays:
            figs["embeddings_probe"] = plots.probe(self)
        return figs


def token_subset(model: Model, tokens: Any) -> np.ndarray | None:
    """Row ids for ``tokens``: None/"all" (every token), a list of ids, ``"re:<regex>"`` over
    the token strings, ``"unused"`` or ``"special"``."""
    if tokens is None or tokens == "all":
        return None
    strings = model.token_strings(list(range(model.vocab_size)))
    if isinstance(tokens, str):
        if tokens == "unused":
            ids = unused_ids(model)
        elif tokens == "special":
            ids = np.array(sorted(set(model.tokenizer.all_special_ids or [])), dtype=np.int64)
        elif tokens.startswith("re:"):
            try:
                pattern = re.compile(tokens[3:])
            except re.error as err:
                raise LaminaError(f"tokens={tokens!r} is not a valid regular expression: {err}.",
                                  cli=f"--tokens {tokens!r} is not a valid regular expression: "
                                  f"{err}.") from None
            ids = np.array([i for i, s in enumerate(strings) if pattern.search(s)], np.int64)
        else:
            raise LaminaError(f"Unknown token group {tokens!r}: use 'all', 'unused', 'special', "
                              "'re:<regex>' or a list of token ids.",
                              cli=f"Unknown --tokens {tokens!r}: use all, unused, special, "
                              "re:<regex> or comma-separated token ids.")
    else:
        ids = _token_ids(tokens, model.vocab_size)
    if len(ids) < 2:
        what = f"selects {len(ids)} token(s): give a subset of 2 or more" + (
            " (the regular expression matches too few token strings)."
            if isinstance(tokens, str) and tokens.startswith("re:") else ".")
        raise LaminaError(f"tokens={tokens!r} {what}", cli=f"--tokens {tokens!r} {what}")
    return ids


def _token_ids(tokens: Any, vocab_size: int) -> np.ndarray:
    """A list of token ids, checked: integers, in the vocabulary, each once."""
    try:
        ids = np.asarray(list(tokens))
    except TypeError:
        raise LaminaError(f"tokens must be 'all', 'unused', 'special', 're:<regex>' or a list "
                          f"of token ids, not {type(tokens).__name__}.") from None
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise LaminaError(f"Token ids must be integers, not {ids.dtype} values.")
    ids = ids.astype(np.int64)
    bad = ids[(ids < 0) | (ids >= vocab_size)]
    if bad.size:
        raise LaminaError(f"Token ids must lie in [0, {vocab_size}): {bad[:5].tolist()} do not.")
    values, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise LaminaError(f"Token ids repeat ({values[counts > 1][:5].tolist()}): give each "
                          "once (a repeated row would pair a token with itself).")
    return ids


def unused_ids(model: Model) -> np.ndarray:
    """Tokenizer-declared unused/reserved tokens (BERT's ``[unused0]``..., ``<unused12>``...)."""
    pattern = re.compile(r"^[\[<]\|?(unused|reserved)[_\w]*\|?[\]>]$", re.IGNORECASE)
    strings = model.token_strings(list(range(model.vocab_size)))
    return np.array([i for i, s in enumerate(strings) if pattern.match(s)], dtype=np.int64)


def _unique_values(W: torch.Tensor, ids: np.ndarray) -> dict[str, int]:
    """Distinct similarity values among the unique pairs of ``ids`` (as the notebook counts
    them), at float32 (this computation) and at the notebook's float16."""
    if len(ids) < 2:
        return {"unused_unique_values": 0, "unused_unique_values_float16": 0}
    sub = matrix(W[torch.as_tensor(ids)], dtype="float32")
    sub = sub.numpy() if isinstance(sub, torch.Tensor) else np.asarray(sub)
    upper = sub[np.triu_indices(len(ids), 1)]
    return {"unused_unique_values": int(len(np.unique(upper))),
            "unused_unique_values_float16": int(len(np.unique(upper.astype(np.float16))))}


def _sampled_pairs(W: torch.Tensor, rows: np.ndarray, n: int, seed: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Cosine and correlation of ``n`` random unique pairs (for the scatter and agreement),
    among rows that have both (neither zero nor constant, as in the scans)."""
    sub = W[torch.as_tensor(rows)]
    rows = rows[((sub != sub[:, :1]).any(1)).numpy()]  # constant (incl. zero) rows: no pair
    if len(rows) < 2:
        return np.empty(0), np.empty(0)
    rng = np.random.default_rng(seed)
    i, j = rng.choice(rows, n), rng.choice(rows, n)
    keep = i != j
    a, b = W[torch.as_tensor(i[keep])].double(), W[torch.as_tensor(j[keep])].double()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    ac, bc = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    cor = torch.nn.functional.cosine_similarity(ac, bc, dim=-1)
    return cos.numpy(), cor.numpy()


def _agreement(sc: np.ndarray, sr: np.ndarray) -> dict[str, Any]:
    """How closely cosine and correlation agree over the sampled pairs; a figure that is
    undefined is None, and ``note`` says why."""
    out: dict[str, Any] = {"pearson_r": None, "mean_abs_difference": None,
                           "max_abs_difference": None, "n_sampled_pairs": len(sc)}
    if len(sc) == 0:
        out["note"] = "no two rows that are neither zero nor constant: nothing to compare"
        return out
    out.update(mean_abs_difference=float(np.abs(sc - sr).mean()),
               max_abs_difference=float(np.abs(sc - sr).max()))
    if len(sc) < 3 or np.ptp(sc) == 0 or np.ptp(sr) == 0:
        out["note"] = "the sampled cosines or correlations do not vary: pearson_r is undefined"
    else:
        out["pearson_r"] = float(stats.pearsonr(sc, sr).statistic)
    return out


def embeddings(model: Model | str, *, tokens: Any = None, which: str = "input",
               bins: int = 200, topk: int = 10, duplicate_threshold: float = 0.999,
               probe: Sequence[str] | None = None, n_scatter: int = 20000, seed: int = 0,
               fast: bool = False) -> EmbeddingsResult:
    """All-to-all similarity of an embedding matrix.

    Args:
        model: any model lamina loads.
        tokens: the rows to compare (see :func:`token_subset`; default every token).
        which: ``"input"`` (``W_E``) or ``"output"`` (the unembedding, when a separate matrix).
        bins: histogram bins over [-1, 1] (exact counts over every unique pair).
        topk: nearest neighbours per token (by cosine).
        duplicate_threshold: cosine at or above which tokens are grouped as duplicates.
        probe: two single-token words whose embeddings are compared and plotted.
        n_scatter: random pairs for the cosine-vs-correlation scatter and agreement figures.
        fast: bfloat16 products with exactly re-scored top-k (see the similarity engine).
    """
    check_int(bins, "bins", 1, option="--bins")
    check_int(topk, "topk", 1, option="--topk")
    check_int(n_scatter, "n_scatter", 1)
    check_number(duplicate_threshold, "duplicate_threshold", 0, 1, low_open=True,
                 option="--duplicate-threshold", why=" (the cosine at or above which tokens "
                 "are duplicates)")
    model = load(model)
    W = _matrix(model, which).float().cpu()
    subset = token_subset(model, tokens)
    probe_ids = _probe_ids(model, probe) if probe is not None else None
    rows = np.arange(len(W)) if subset is None else subset
    dtype = "bfloat16" if fast else None
    cos = duplicate_groups(W, duplicate_threshold, bins=bins, range=(-1, 1), topk=topk,
                           subset=subset, dtype=dtype).scan  # one pass: groups and statistics
    cor = scan(W, metric="correlation", bins=bins, range=(-1, 1), subset=subset, dtype=dtype)
    strings = model.token_strings(list(range(model.vocab_size)))
    unused = unused_ids(model)
    neighbours = _neighbours(cos, strings)
    groups = cos.duplicate_groups or []
    duplicates = pd.DataFrame([{"group": g, "token_id": int(t), "token": strings[t]}
                               for g, members in enumerate(groups) for t in members])
    sc, sr = _sampled_pairs(W, rows, n_scatter, seed)
    row_means, l1_means = W[torch.as_tensor(rows)].mean(1), W[torch.as_tensor(rows)].abs().mean(1)
    norms = W[torch.as_tensor(rows)].norm(dim=1)
    summary: dict[str, Any] = {
        "matrix": which, "n_tokens": int(len(rows) - cos.n_zero), "n_zero_rows": cos.n_zero,
        "n_pairs": int(cos.count), "mean": cos.mean, "std": cos.std, "min": cos.min,
        "max": cos.max, "quantiles": cos.quantiles,
        "correlation": {"mean": cor.mean, "std": cor.std, "min": cor.min, "max": cor.max},
        "n_unused": int(len(unused)), **_unique_values(W, unused),
        "n_duplicate_groups": len(groups),
        "largest_duplicate_group": max((len(g) for g in groups), default=0),
        "duplicate_threshold": duplicate_threshold,
        "cosine_correlation_agreement": _agreement(sc, sr),
        "row_mean": {"mean": float(row_means.mean()), "std": float(row_means.std())},
        "row_l1_mean": {"mean": float(l1_means.mean()), "std": float(l1_means.std())},
        "norm": {"mean": float(norms.mean()), "std": float(norms.std()),
                 "min": float(norms.min()), "max": float(norms.max())},
        "seconds": {"cosine_scan": cos.meta.get("seconds"),
                    "correlation_scan": cor.meta.get("seconds")},
    }
    sample = rows[:: max(1, len(rows) // 1000)][:1000]
    arrays = {"sample_ids": sample, "W_sample": W[torch.as_tensor(sample)].numpy(),
              "sample_sim": np.asarray(matrix(W[torch.as_tensor(sample)])),
              "scatter_cos": sc, "scatter_cor": sr, "row_means": row_means.numpy(),
              "l1_means": l1_means.numpy(), "norms": norms.numpy()}
    if len(unused):
        mask = np.zeros(model.vocab_size, bool)
        mask[unused] = True
        arrays["unused_mask"] = mask
    if probe_ids is not None:
        summary["probe"] = _probe(W, probe, probe_ids, arrays)
    histogram = pd.DataFrame({"bin_low": cos.edges[:-1], "bin_high": cos.edges[1:],
                              "cosine": cos.counts, "correlation": cor.counts})
    return EmbeddingsResult(
        histogram, neighbours, duplicates, arrays, summary=summary,
        meta=model.describe(which=which, tokens=tokens if tokens is None or isinstance(
            tokens, str) else f"{len(rows)} ids", bins=bins, topk=topk,
            duplicate_threshold=duplicate_threshold, fast=fast, computation_dtype=(
                "bfloat16 products, float32 re-scoring" if fast else "float32")),
    )


def _matrix(model: Model, which: str) -> torch.Tensor:
    W_E = embedding_matrix(model)
    if which == "input":
        return W_E
    if which != "output":
        raise LaminaError(f"which must be 'input' or 'output', not {which!r}.",
                          cli=f"--which must be input or output, not {which!r}.")
    head = model.hf_model.get_output_embeddings() if hasattr(
        model.hf_model, "get_output_embeddings") else None
    if head is None:
        raise LaminaError(f"{model.name} has no unembedding matrix.")
    if head.weight.data_ptr() == W_E.data_ptr():
        raise LaminaError(f"{model.name} ties its unembedding to the input embedding: "
                          "which='input' already covers it.",
                          cli=f"{model.name} ties its unembedding to the input embedding: "
                          "--which input already covers it.")
    return head.weight.detach()


def _neighbours(cos: Any, strings: list[str]) -> pd.DataFrame:
    rows, k = cos.rows, cos.topk_values.shape[1]
    ids = cos.topk_indices
    return pd.DataFrame({
        "token_id": np.repeat(rows, k), "token": np.repeat(np.array(strings, object)[rows], k),
        "rank": np.tile(np.arange(1, k + 1), len(rows)), "neighbour_id": ids.ravel(),
        "neighbour": np.array(strings + [""], object)[ids.ravel()],
        "cosine": cos.topk_values.ravel(),
    })


def _probe_ids(model: Model, words: Sequence[str]) -> tuple[int, int]:
    """Token ids of the two probe words (checked before the scan)."""
    if isinstance(words, str) or len(words) != 2 or len(set(words)) != 2:
        raise LaminaError(f"probe takes two different words, not {words!r}.",
                          cli=f"--probe takes two different words, comma-separated (e.g. "
                          f"--probe cat,dog), not {','.join(words)!r}.")
    a, b = (single_token(model, word, "probe", "--probe") for word in words)
    return a, b


def _probe(W: torch.Tensor, words: Sequence[str], ids: tuple[int, int], arrays: dict) -> dict:
    a, b = ids
    arrays["probe_a"], arrays["probe_b"] = W[a].numpy(), W[b].numpy()
    arrays["probe_words"] = np.array(list(words))
    cosine = float(torch.nn.functional.cosine_similarity(W[a].double(), W[b].double(), dim=0))
    return {"words": list(words), "token_ids": [a, b], "cosine": cosine}
