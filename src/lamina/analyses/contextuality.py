"""How contextual is each layer? (Ethayarajh 2019, "How contextual are contextualized word
representations?"), with rogue dimensions (Timkey & van Schijndel 2021) and massive
activations (Sun et al. 2024).

Every occurrence of every word of a corpus is represented at each layer (its sentence is the
model's input; see :mod:`lamina.analyses.contextuality_text` for sentences, words and
pooling). Per layer, exactly over all occurrences and all pairs, streamed (nothing N x N; see
:mod:`lamina.analyses.contextuality_stats` for the formulas): self-similarity, intra-sentence
similarity, maximum explainable variance (MEV), the anisotropy baseline (mean cosine of
occurrences of different words) and the MEV baseline, each raw and adjusted (minus its
baseline); each dimension's share of the mean cosine and the similarities after per-dimension
standardisation; and the token entries whose magnitude exceeds 100x the layer's median.

Two passes over the vectors: the standardised values need each dimension's mean and standard
deviation, and the massive-activation threshold the exact median, before the second pass
(the vectors of pass 1 are kept for it up to :data:`CACHE_LIMIT`, else the model runs
again). Memory: per site, a sum vector per word type seen twice, and per measured word type the
smaller of its occurrence rows and its ``d x d`` Gram (checked before the run).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lamina.analyses.contextuality_plots import plot_outliers, plot_profile
from lamina.analyses.contextuality_stats import Layout, SiteStats, memory_bytes
from lamina.analyses.contextuality_text import prepare, select_types, split_sentences
from lamina.checks import check_int
from lamina.corpus import text_of
from lamina.errors import LaminaError
from lamina.models import Model, load
from lamina.results import Result
from lamina.sites import layer_of

#: Columns of :meth:`ContextualityResult.to_frame`, in order.
COLUMNS = ("layer", "site", "n_occurrences", "self_similarity", "intra_sentence_similarity",
           "mev", "anisotropy_baseline", "mev_baseline", "self_similarity_adjusted",
           "intra_sentence_similarity_adjusted", "mev_adjusted", "mean_cosine",
           "self_similarity_std", "intra_sentence_similarity_std", "anisotropy_baseline_std",
           "self_similarity_std_adjusted", "intra_sentence_similarity_std_adjusted",
           "top_dim", "top_dim_share", "median_abs", "max_abs", "max_ratio", "n_massive")
#: Accumulator memory allowed over all sites (bytes) before the run is refused.
MEMORY_LIMIT = 6 * 2**30
#: Word vectors and token rows kept from pass 1 for pass 2 (bytes); beyond it the model
#: runs again (same batches, same values).
CACHE_LIMIT = 2 * 2**30
#: Rogue dimensions listed per layer, and largest token entries kept per layer.
TOP_DIMS, TOP_ENTRIES = 10, 20
MASSIVE_RATIO = 100.0

Block = tuple[torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]


@dataclass
class ContextualityResult(Result):
    """``to_frame()``: one row per site (:data:`COLUMNS`). ``words``: per site and measured
    word type, ``n``, ``self_similarity``, ``self_similarity_std``, ``mev``. ``dims``: per
    site the :data:`TOP_DIMS` dimensions adding most to the mean cosine (``contribution``,
    ``share``). ``massive``: per site the :data:`TOP_ENTRIES` largest ``|a|`` token entries
    (``sentence``, ``position``, ``token``, ``dim``, ``value``, ``ratio`` to the median,
    ``massive`` when above 100x)."""

    table: pd.DataFrame
    words: pd.DataFrame
    dims: pd.DataFrame
    massive: pd.DataFrame
    name = "contextuality"

    def to_frame(self) -> pd.DataFrame:
        return self.table.copy()

    def extra_tables(self) -> dict[str, pd.DataFrame]:
        return {"contextuality_words": self.words, "contextuality_dims": self.dims,
                "contextuality_massive": self.massive}

    def plot(self, **kwargs: Any) -> Any:
        """The contextuality profile across layers, with the anisotropy baselines."""
        return plot_profile(self.table, f"How contextual is each layer? "
                                        f"({self.meta.get('model', '')})")

    def plot_outliers(self) -> Any:
        """Rogue dimensions and massive activations per layer."""
        return plot_outliers(self.table, f"Outlier dimensions ({self.meta.get('model', '')})")

    def figures(self) -> dict[str, Any]:
        return {"contextuality": self.plot(), "contextuality_outliers": self.plot_outliers()}


def _measure(blocks: Callable[[], Iterator[Block]], layout: Layout, progress: Any) -> dict:
    """Both passes over ``blocks()``; site -> the statistics of :meth:`SiteStats.finish`."""
    stats: dict[str, SiteStats] = {}
    cache: list[Block] | None = []
    cached = 0
    for occ, per_site, tok_idx in blocks():
        if not stats:
            need = sum(memory_bytes(layout, x.shape[1]) for x, _ in per_site.values())
            if need > MEMORY_LIMIT:
                raise LaminaError(
                    f"contextuality would hold {need / 2**30:.1f} GiB of sums and Gram "
                    f"matrices (limit {MEMORY_LIMIT / 2**30:.0f} GiB): use fewer sentences "
                    "(max_sentences), fewer sites, or a larger min_occurrences.",
                    cli=f"contextuality would hold {need / 2**30:.1f} GiB of sums and Gram "
                    "matrices: use a smaller --max-sentences, fewer --site or a larger "
                    "--min-occurrences.")
            stats = {site: SiteStats(layout, x.shape[1], ratio=MASSIVE_RATIO, top=TOP_ENTRIES)
                     for site, (x, _) in per_site.items()}
        for site, (x, tok) in per_site.items():
            stats[site].update(x, occ, tok, tok_idx)
        if cache is not None:  # keep the blocks for pass 2 while they fit in CACHE_LIMIT
            cached += sum(x.numel() * 8 + t.numel() * 4 for x, t in per_site.values())
            if cached <= CACHE_LIMIT:
                cache.append((occ, per_site, tok_idx))
            else:
                cache = None
        progress.update()
    for s in stats.values():
        s.start_second()
    for occ, per_site, _ in (cache if cache is not None else blocks()):
        for site, (x, tok) in per_site.items():
            stats[site].update_second(x, occ, tok)
        progress.update()
    progress.close()
    return {site: s.finish() for site, s in stats.items()}


def _frames(stats: dict[str, dict], layout: Layout, token_info: Callable[[int], tuple]
            ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rows, words, dims, massive = [], [], [], []
    for i, (site, s) in enumerate(stats.items()):
        layer = layer_of(site) if layer_of(site) >= 0 else i
        contrib = s["dim_contribution"]
        share = contrib / contrib.sum() if np.isfinite(contrib).all() else contrib
        order = np.argsort(-contrib, kind="stable")[:TOP_DIMS]
        dims += [{"layer": layer, "site": site, "rank": r + 1, "dim": int(k),
                  "contribution": float(contrib[k]), "share": float(share[k])}
                 for r, k in enumerate(order)]
        med = s["median_abs"]
        for e in s["top"]:
            sent, pos, tok = token_info(e["token_index"])
            massive.append({"layer": layer, "site": site, "sentence": sent, "position": pos,
                            "token": tok, "dim": e["dim"], "value": e["value"],
                            "ratio": e["ratio"], "massive": e["ratio"] > MASSIVE_RATIO})
        pt = s["per_type"]
        words.append(pd.DataFrame({
            "layer": layer, "site": site, "word": [layout.types[t] for t in pt["type_index"]],
            "n": pt["n"], "self_similarity": pt["self_similarity"],
            "self_similarity_std": pt["self_similarity_std"], "mev": pt["mev"]}))
        rows.append({
            "layer": layer, "site": site, **{k: s[k] for k in COLUMNS[2:12] if k in s},
            "self_similarity_adjusted": s["self_similarity"] - s["anisotropy_baseline"],
            "intra_sentence_similarity_adjusted":
                s["intra_sentence_similarity"] - s["anisotropy_baseline"],
            "mev_adjusted": s["mev"] - s["mev_baseline"],
            "self_similarity_std": s["self_similarity_std"],
            "intra_sentence_similarity_std": s["intra_sentence_similarity_std"],
            "anisotropy_baseline_std": s["anisotropy_baseline_std"],
            "self_similarity_std_adjusted":
                s["self_similarity_std"] - s["anisotropy_baseline_std"],
            "intra_sentence_similarity_std_adjusted":
                s["intra_sentence_similarity_std"] - s["anisotropy_baseline_std"],
            "top_dim": int(order[0]), "top_dim_share": float(share[order[0]]),
            "median_abs": med, "max_abs": s["max_abs"],
            "max_ratio": s["max_abs"] / med if med > 0 else np.nan,
            "n_massive": s["n_massive"]})
    table = pd.DataFrame(rows)[list(COLUMNS)]
    return table, pd.concat(words, ignore_index=True), pd.DataFrame(dims), \
        pd.DataFrame(massive)


def _summary(table: pd.DataFrame, layout: Layout, extra: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers and the conclusion, read off the table."""
    ctx = table[table["layer"] > 0] if (table["layer"] > 0).any() else table
    best = ctx.loc[ctx["self_similarity_adjusted"].idxmin()]
    first, last = table.iloc[0], table.iloc[-1]
    conclusion = (
        f"Adjusted self-similarity is lowest (most contextual) at layer {int(best['layer'])}: "
        f"{best['self_similarity_adjusted']:.3f} (raw {best['self_similarity']:.3f} over an "
        f"anisotropy baseline of {best['anisotropy_baseline']:.3f}). From {first['site']} to "
        f"{last['site']} the baseline goes from {first['anisotropy_baseline']:.3f} to "
        f"{last['anisotropy_baseline']:.3f} and MEV from {first['mev']:.3f} to "
        f"{last['mev']:.3f}.")
    return {"most_contextual_layer": int(best["layer"]),
            "most_contextual_site": str(best["site"]),
            "min_self_similarity_adjusted": float(best["self_similarity_adjusted"]),
            "n_occurrences": int(len(layout.type_of)), "n_word_types": len(layout.types),
            "n_types_measured": int(layout.selected.sum()),
            "n_sentences": int(len(np.unique(layout.sentence_of))),
            "max_ratio": float(table["max_ratio"].max()),
            "n_massive_total": float(table["n_massive"].sum()),
            "conclusion_short": f"most contextual: layer {int(best['layer'])}",
            "conclusion": conclusion, **extra}


def _model_blocks(model: Model, prep: Any, sites: Any, batch_size: int
                  ) -> tuple[Callable[[], Iterator[Block]], int, list[str]]:
    """Blocks of whole sentences (sorted by length, to limit padding), each run through the
    model: occurrence indices, site -> (word vectors ``[W, d]`` float64, token rows ``[T, d]``),
    global token indices."""
    names = [s.name for s in model.resolve_sites(sites)]
    lens = np.array([len(i) for i in prep.ids])
    tok_start = np.concatenate([[0], np.cumsum(lens)])
    order = np.argsort(lens, kind="stable")
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    def blocks() -> Iterator[Block]:
        for chunk in chunks:
            acts = model.collect([prep.ids[i] for i in chunk], names, positions="all",
                                 batch_size=batch_size, progress=False)
            if acts.meta.get("no_sequence_axis"):
                raise LaminaError(f"Site(s) {acts.meta['no_sequence_axis']} have no sequence "
                                  "axis: contextuality needs one vector per token.")
            ws = prep.word_start
            occ = torch.from_numpy(np.concatenate([np.arange(ws[s], ws[s + 1]) for s in chunk]))
            w_off = np.concatenate([[0], np.cumsum([ws[s + 1] - ws[s] for s in chunk])])
            t_off = np.concatenate([[0], np.cumsum(lens[chunk])])
            pw = np.concatenate([prep.pair_word[s] + w_off[j] for j, s in enumerate(chunk)])
            pt = torch.from_numpy(np.concatenate([prep.pair_token[s] + t_off[j]
                                                  for j, s in enumerate(chunk)]))
            starts = np.flatnonzero(np.r_[True, pw[1:] != pw[:-1]])  # pw is grouped by word
            cnt = torch.from_numpy(np.diff(np.r_[starts, len(pw)])).double()[:, None]
            tok_idx = torch.from_numpy(np.concatenate(
                [np.arange(tok_start[s], tok_start[s + 1]) for s in chunk]))
            per_site = {}
            for site in acts.sites:
                t = acts[site].flatten(2)
                rows = torch.cat([t[j, : lens[s]] for j, s in enumerate(chunk)])
                x = np.add.reduceat(rows[pt].double().numpy(), starts, axis=0)
                per_site[site] = (torch.from_numpy(x) / cnt, rows)
            yield occ, per_site, tok_idx

    return blocks, len(chunks), names


def _sentences(corpus: Any) -> list[str]:
    if isinstance(corpus, (list, tuple)):
        if not corpus or not all(isinstance(s, str) for s in corpus):
            raise LaminaError("A corpus given as a list must be non-empty strings, one "
                              "sentence each.")
        return [s for s in corpus if s.strip()]
    return split_sentences(text_of(corpus))


def _progress(total: int, show: bool | None) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="contextuality (2 passes)",
                disable=not (total > 8 if show is None else show))


def contextuality(model: Model | str, corpus: str | Path | Sequence[str], sites: Any = "hidden.*",
                  *, max_sentences: int | None = None, min_occurrences: int = 5,
                  words: Sequence[str] | None = None, batch_size: int = 32, seed: int = 0,
                  progress: bool | None = None) -> ContextualityResult:
    """How contextual each layer's word representations are (Ethayarajh 2019), exactly.

    Args:
        model: any model lamina loads (it needs a fast tokenizer, for character offsets).
        corpus: running text (a ``str``), a UTF-8 file (a :class:`pathlib.Path`), split into
            sentences; or a list of strings, each one sentence. One sentence is one input.
        sites: the layers (default every ``hidden.{i}``); per-head sites are flattened.
        max_sentences: use a random sample of this many usable sentences (drawn with
            ``seed``, kept in corpus order); ``None``: all.
        min_occurrences: a word type is measured (self-similarity, MEV) when it occurs at
            least this often (Ethayarajh used 5); at least 2.
        words: measure exactly these word types instead (each must occur
            ``min_occurrences`` times).
        batch_size: sentences per forward pass.
        progress: show a progress bar (default: for more than 8 batches).

    Sentences longer than the model's context are left out (``summary["dropped"]`` counts
    them). Returns a :class:`ContextualityResult`; ``to_frame()`` has one row per site.
    """
    check_int(min_occurrences, "min_occurrences", 2, option="--min-occurrences",
              why=" (self-similarity needs a pair of occurrences)")
    if max_sentences is not None:
        check_int(max_sentences, "max_sentences", 1, option="--max-sentences")
    check_int(batch_size, "batch_size", 1, option="--batch-size")
    check_int(seed, "seed", 0, option="--seed")
    if words is not None and (isinstance(words, str) or not all(
            isinstance(w, str) and w for w in words) or not words):
        raise LaminaError("words must be a non-empty list of words (strings).")
    sentences = _sentences(corpus)
    model = load(model)
    if model.tokenizer is None:
        raise LaminaError("contextuality needs the model's tokenizer, to find words.")
    model.resolve_sites(sites)  # an unknown site fails before the tokenization
    prep = prepare(model, sentences, min_occurrences=min_occurrences,
                   words=list(words) if words is not None else None,
                   max_sentences=max_sentences, seed=seed)
    blocks, n_chunks, names = _model_blocks(model, prep, sites, batch_size)
    stats = _measure(blocks, prep.layout, _progress(2 * n_chunks, progress))
    tok_start = np.concatenate([[0], np.cumsum([len(i) for i in prep.ids])])

    def token_info(g: int) -> tuple[int, int, str]:
        s = int(np.searchsorted(tok_start, g, side="right") - 1)
        pos = g - int(tok_start[s])
        return s, pos, model.token_strings([prep.ids[s][pos]])[0]

    table, per_word, dims, massive = _frames(stats, prep.layout, token_info)
    notes = [] if not prep.dropped["too_long"] else [
        f"{prep.dropped['too_long']} sentence(s) longer than the model's context of "
        f"{model.max_length} tokens were left out."]
    summary = _summary(table, prep.layout, {"dropped": prep.dropped, "notes": notes})
    corpus_name = str(corpus) if isinstance(corpus, Path) else (
        f"<{len(corpus)} sentences>" if isinstance(corpus, (list, tuple))
        else f"<text of {len(corpus)} characters>")
    return ContextualityResult(
        table, per_word, dims, massive, summary=summary,
        meta=model.describe(sites=names, corpus=corpus_name, max_sentences=max_sentences,
                            min_occurrences=min_occurrences, words=words, seed=seed))


def contextuality_from_vectors(vectors: Mapping[str, Any], words: Sequence[Any],
                               sentences: Sequence[int], *, min_occurrences: int = 5,
                               tokens: Mapping[str, Any] | None = None,
                               block_rows: int = 4096) -> ContextualityResult:
    """The same statistics from given word vectors: ``vectors`` site -> ``[N, d]`` (one row
    per occurrence), ``words`` ``[N]`` the word type of each row (used as given, not
    case-folded), ``sentences`` ``[N]`` the sentence of each row (any integer labels).
    Massive activations are read on ``tokens`` site -> ``[T, d]`` (default: the rows of
    ``vectors``), in float32."""
    check_int(min_occurrences, "min_occurrences", 2)
    check_int(block_rows, "block_rows", 1)
    if not isinstance(vectors, Mapping) or not vectors:
        raise LaminaError("vectors must be a non-empty dict {site: array [N, d]}.")
    n = len(words)
    mats = {}
    for site, v in vectors.items():
        t = torch.as_tensor(np.asarray(v), dtype=torch.float64)
        if t.ndim != 2 or t.shape[0] != n or not bool(torch.isfinite(t).all()):
            raise LaminaError(f"vectors[{site!r}] must be a finite [N, d] array with one row "
                              f"per word (N = {n}), not of shape {tuple(t.shape)}.")
        mats[site] = t
    sent = np.asarray(sentences)
    if sent.shape != (n,) or not np.issubdtype(sent.dtype, np.integer):
        raise LaminaError(f"sentences must be {n} integers, one per row.")
    order = np.argsort(sent, kind="stable")
    types, type_of = np.unique(np.asarray(words, dtype=object)[order].astype(str),
                               return_inverse=True)
    counts = np.bincount(type_of, minlength=len(types))
    layout = Layout([str(t) for t in types], type_of.astype(np.int64),
                    sent[order].astype(np.int64),
                    select_types(list(types), counts, min_occurrences, None, len(set(sent))))
    cuts = [0]
    s_sorted = sent[order]
    for i in range(1, n + 1):
        if i == n or (i - cuts[-1] >= block_rows and s_sorted[i] != s_sorted[i - 1]):
            cuts.append(i)
    if tokens is not None and (not isinstance(tokens, Mapping) or set(tokens) != set(mats)):
        raise LaminaError("tokens must be a dict with the same sites as vectors.")
    toks = {site: torch.as_tensor(np.asarray(tokens[site]), dtype=torch.float32)
            if tokens is not None else mats[site][torch.from_numpy(order)].float()
            for site in mats}
    if len({t.shape[0] for t in toks.values()}) != 1 or any(t.ndim != 2 for t in toks.values()):
        raise LaminaError("tokens must be [T, d] arrays with the same T for every site.")
    nb, n_tok = len(cuts) - 1, next(iter(toks.values())).shape[0]

    def blocks() -> Iterator[Block]:
        for b in range(nb):
            lo, hi = cuts[b], cuts[b + 1]
            occ = torch.arange(lo, hi)
            per_site = {}
            t_lo, t_hi = b * n_tok // nb, (b + 1) * n_tok // nb
            for site, m in mats.items():
                per_site[site] = (m[torch.from_numpy(order[lo:hi])], toks[site][t_lo:t_hi])
            yield occ, per_site, torch.arange(t_lo, t_hi)

    stats = _measure(blocks, layout, _progress(2 * nb, False))
    table, per_word, dims, massive = _frames(stats, layout, lambda g: (-1, int(g), ""))
    return ContextualityResult(table, per_word, dims, massive,
                               summary=_summary(table, layout, {}),
                               meta={"model": "vectors", "sites": list(mats)})
