"""Next-token approximation from similar strings (the first seed study's headline).

For each prompt and block ``b``, ``S_b`` is the set of stored strings whose feed-forward output
(``blocks.{b}.hook_mlp_out`` at the last position) has cosine at or above the block's threshold
with the prompt's. The approximation is ``normalise(sum_b w_b * sum_{s in S_b} counts(s))``
with ``counts(s)`` the next-character counts after every occurrence of ``s`` in the corpus, and
it is compared with the model's own next-token distribution by the Hellinger distance
``sqrt(sum (sqrt p - sqrt q)^2) / sqrt 2``.

The study drew its prompts from the stored strings, so each prompt's own string is in every
``S_b``; both figures are reported: ``hellinger_with_self`` (the study's) and
``hellinger_without_self`` (the honest one). A prompt whose sets are all empty has no
approximation: it gets the maximum distance 1 and is counted in ``n_empty``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from lamina.analyses.layerwise import load_models
from lamina.analyses.similar_strings import next_token_counts
from lamina.errors import LaminaError
from lamina.models import Model, load
from lamina.ray_runtime import check_engine
from lamina.results import Result
from lamina.similarity import threshold_sums
from lamina.store import Store

STUDY_THRESHOLDS = (0.95, 0.94, 0.85, 0.76, 0.81, 0.89)
STUDY_WEIGHTS = (0.01, 0.01, 0.1, 1.5, 6.0, 0.01)
THRESHOLD_GRID = tuple(np.round(np.arange(0.70, 0.991, 0.02), 2))
WEIGHT_GRID = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def hellinger(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Hellinger distance between rows of two distributions, in [0, 1]."""
    return np.sqrt(np.sum((np.sqrt(p) - np.sqrt(q)) ** 2, axis=-1)) / np.sqrt(2)


def next_token_distribution(model: Model, prompts: Sequence[str], batch_size: int = 256
                            ) -> np.ndarray:
    """The model's next-token distribution after each prompt, ``[n_prompts, vocab]``."""
    from lamina.readout import logits_from_resid

    last = f"blocks.{model.n_layers - 1}.hook_resid_post"
    acts = model.collect(list(prompts), last, batch_size=batch_size)
    # the logits are on the model's device (CUDA for a GPU model): numpy needs them on the CPU
    return torch.softmax(logits_from_resid(model, acts[last]).double(), -1).cpu().numpy()


def model_distance(model_a: Model | str, model_b: Model | str, prompts: Sequence[str]
                   ) -> np.ndarray:
    """Hellinger distance between two models' next-token distributions per prompt (the
    study's baseline: the same architecture retrained with another seed)."""
    a, b = load_models({"a": model_a, "b": model_b}).values()  # the same spec: loaded once
    return hellinger(next_token_distribution(a, prompts), next_token_distribution(b, prompts))


@dataclass
class BlockSums:
    """Per block: ``sums[t]`` = ``[n_prompts, vocab]`` next-token counts summed over the
    strings at or above threshold ``grid[t]`` (with and without each prompt's own string)."""

    grid: tuple[float, ...]
    with_self: list[np.ndarray]
    without_self: list[np.ndarray]
    matches: list[np.ndarray]  # [n_prompts] number of strings per threshold


def block_sums(x: torch.Tensor, store: Store, site: str, counts: sp.csr_matrix,
               self_rows: np.ndarray, grid: Sequence[float], progress: bool = False,
               engine: str = "local") -> BlockSums:
    """Sum the next-token counts of the stored strings at or above every threshold of ``grid``
    for the prompts ``x`` (one streaming pass over the stored site: the matches are never
    listed, they can be billions). Without self: each prompt's own row (``self_rows``, -1 when
    the prompt is not stored) is taken out of the sums it falls in."""
    vocab = counts.shape[1]
    weights = sp.hstack([counts, np.ones((counts.shape[0], 1))]).tocsr()  # last: matches
    y = store[site].flat()
    sums = threshold_sums(x, y, weights, grid, progress=progress, engine=engine)  # (n, G, V+1)
    own_counts = np.zeros((len(x), vocab))
    own_sim = np.full(len(x), -np.inf)
    has = self_rows >= 0
    if has.any():
        rows = self_rows[has]
        own_counts[has] = counts[rows].toarray()
        a = torch.nn.functional.normalize(x[torch.as_tensor(has)].float(), dim=1)
        b = torch.nn.functional.normalize(y[rows].float(), dim=1)
        own_sim[has] = (a * b).sum(1).clamp(-1, 1).double().numpy()
    out = BlockSums(tuple(grid), [], [], [])
    for g, t in enumerate(grid):
        own = (own_sim >= np.float32(t))[:, None]
        out.with_self.append(sums[:, g, :vocab])
        out.without_self.append(sums[:, g, :vocab] - own * own_counts)
        out.matches.append(np.rint(sums[:, g, vocab] - own[:, 0]).astype(np.int64))
    return out


def _combine(sums: list[BlockSums], t_idx: Sequence[int], weights: Sequence[float],
             self_: bool) -> tuple[np.ndarray, np.ndarray]:
    total = sum(w * (b.with_self if self_ else b.without_self)[t]
                for b, t, w in zip(sums, t_idx, weights, strict=True))
    mass = total.sum(-1)
    empty = mass <= 0
    q = total / np.where(empty, 1, mass)[:, None]
    return q, empty


def _distances(p: np.ndarray, sums: list[BlockSums], t_idx: Sequence[int],
               weights: Sequence[float], self_: bool) -> tuple[np.ndarray, np.ndarray]:
    q, empty = _combine(sums, t_idx, weights, self_)
    d = hellinger(p, q)
    d[empty] = 1.0
    return d, empty


def fit(p: np.ndarray, sums: list[BlockSums], self_: bool = False, rounds: int = 3
        ) -> tuple[list[float], list[float]]:
    """Thresholds and weights minimising the mean Hellinger distance on a tuning set, by
    coordinate descent over ``THRESHOLD_GRID`` and ``WEIGHT_GRID``."""
    t_idx = [len(b.grid) // 2 for b in sums]
    w = [1.0] * len(sums)

    def loss(t: list[int], ww: list[float]) -> float:
        return float(_distances(p, sums, t, ww, self_)[0].mean())

    best = loss(t_idx, w)
    for _ in range(rounds):
        for b in range(len(sums)):
            for t in range(len(sums[b].grid)):
                trial = [*t_idx[:b], t, *t_idx[b + 1 :]]
                if (value := loss(trial, w)) < best:
                    best, t_idx = value, trial
            for weight in WEIGHT_GRID:
                trial_w = [*w[:b], weight, *w[b + 1 :]]
                if any(trial_w) and (value := loss(t_idx, trial_w)) < best:
                    best, w = value, trial_w
    return [sums[b].grid[t] for b, t in enumerate(t_idx)], w


@dataclass
class ApproximationResult(Result):
    """``to_frame()``: one row per prompt (``prompt``, ``hellinger`` (the variant asked for),
    ``hellinger_with_self``, ``hellinger_without_self``, ``empty``, matches per block, and
    ``baseline_hellinger`` when a baseline model was given).
    ``summary``: ``mean_hellinger`` and std, quantiles, share below 0.2, ``n_empty`` of both
    variants, the thresholds and weights and whether they were fitted."""

    table: pd.DataFrame
    model_p: np.ndarray
    approx_q: np.ndarray
    vocab: list[str]
    name = "approximation"

    def to_frame(self) -> pd.DataFrame:
        return self.table.copy()

    def plot(self, examples: int = 3, **kwargs: Any) -> Any:
        """Distribution of distances, and the model's vs the approximation's distribution for
        a few prompts."""
        import matplotlib.pyplot as plt

        from lamina.plotting import token_label

        fig, axs = plt.subplots(1, 1 + examples, figsize=(4.5 * (1 + examples), 3.8))
        bins = np.linspace(0, 1, 41)
        for col in ("hellinger_with_self", "hellinger_without_self", "baseline_hellinger"):
            if col in self.table:
                label = ("model vs other seed" if col.startswith("baseline") else
                         col.removeprefix("hellinger_").replace("_", " "))
                axs[0].hist(self.table[col], bins=bins, alpha=0.5, label=label)
        axs[0].axvline(0.2, color="k", linestyle=":", linewidth=0.8)
        axs[0].set(xlabel="Hellinger distance", ylabel="prompts",
                   title=f"mean {self.summary['mean_hellinger']:.3f}")
        axs[0].legend(fontsize=8)
        rng = np.random.default_rng(0)
        picks = rng.choice(len(self.table), size=min(examples, len(self.table)), replace=False)
        for ax, i in zip(axs[1:], picks, strict=False):
            top = np.argsort(-self.model_p[i])[:12]
            x = np.arange(len(top))
            ax.bar(x - 0.2, self.model_p[i, top], width=0.4, label="model")
            ax.bar(x + 0.2, self.approx_q[i, top], width=0.4, label="approximation")
            ax.set_xticks(x, [token_label(self.vocab[t]) for t in top], fontsize=8)
            ax.set(title=f"{token_label(self.table['prompt'].iloc[i], 24)} "
                         f"(H = {self.table['hellinger'].iloc[i]:.2f})", ylabel="probability")
            ax.legend(fontsize=7)
        fig.tight_layout()
        return fig


def _prompts(store: Store, prompts: Any, seed: int, exclude: set[str] = frozenset()
             ) -> list[str]:
    if isinstance(prompts, int):
        rng = np.random.default_rng(seed)
        pool = [s for s in store.strings if s not in exclude] if exclude else store.strings
        if prompts > len(pool):
            raise LaminaError(f"Asked for {prompts} prompts from {len(pool)} stored strings.")
        return [pool[i] for i in rng.choice(len(pool), size=prompts, replace=False)]
    return [prompts] if isinstance(prompts, str) else list(prompts)


def approximation(model: Model | str, store: Store, prompts: Any, *,
                  thresholds: Sequence[float] | None = None,
                  weights: Sequence[float] | None = None, exclude_self: bool = False,
                  tune: Any = 500, seed: int = 1337,
                  site: str = "blocks.{b}.hook_mlp_out",
                  baseline: Model | str | None = None, allow_partial: bool = False,
                  progress: bool = True, engine: str = "local") -> ApproximationResult:
    """Approximate the model's next-token distribution from similar stored strings.

    Args:
        model: the (character) model the store was collected from.
        store: a store built from :func:`lamina.store.substrings` holding ``site`` per block.
        prompts: strings, or an int: that many stored strings drawn with ``seed``.
        thresholds, weights: per block; default: fitted on ``tune`` prompts disjoint from the
            evaluation prompts (the study's hand-tuned values are ``STUDY_THRESHOLDS`` and
            ``STUDY_WEIGHTS``).
        exclude_self: report the distance without each prompt's own string (``hellinger``
            column and ``mean_hellinger``); both variants are always in the table.
        baseline: the same architecture trained with another seed (``lamina train --seed``):
            its Hellinger distance to ``model`` on the same prompts is the ``baseline_hellinger``
            column and ``summary["baseline"]``, the scale against which the approximation's
            distance means something.
        allow_partial: use the committed rows of an incomplete store (else an error); the
            summary and ``meta`` say ``partial`` with ``n_committed`` of ``n_rows``.
        progress: a progress bar for each block's pass over the store.
        engine: "local" (default) or "ray": each block's pass over the store as Ray tasks
            (:func:`lamina.similarity.threshold_sums` with ``engine="ray"``); the same sums.
    """
    check_engine(engine)
    state = store.require_complete(allow_partial)
    model = load(model)
    store.check_model(model)
    if not store.manifest.get("substring_length"):
        raise LaminaError("The approximation needs a store built from lamina.store.substrings "
                          "(it uses the next characters of every stored string).")
    prompts = _prompts(store, prompts, seed)
    sites = [site.format(b=b) for b in range(model.n_layers)]
    missing = [s for s in sites if s not in store.sites]
    if missing:
        raise LaminaError(f"The store lacks {missing}: collect them (lamina collect --site ...).")
    counts = next_token_counts(store.substrings(), model.tokenizer.get_vocab())[: len(store)]
    row_of = {s: i for i, s in enumerate(store.strings)}

    def sums_for(texts: list[str], grids: list[Sequence[float]]) -> list[BlockSums]:
        acts = model.collect(texts, sites, positions=store.manifest["positions"])
        self_rows = np.array([row_of.get(t, -1) for t in texts])
        return [block_sums(acts[s].flatten(1).float(), store, s, counts, self_rows, g,
                           progress, engine)
                for s, g in zip(sites, grids, strict=True)]

    fitted = thresholds is None or weights is None
    meta_tune: dict[str, Any] = {}
    if fitted:
        tune_prompts = _prompts(store, tune, seed + 1, exclude=set(prompts))
        tune_sums = sums_for(tune_prompts, [THRESHOLD_GRID] * len(sites))
        fit_t, fit_w = fit(next_token_distribution(model, tune_prompts), tune_sums,
                           self_=not exclude_self)
        thresholds = fit_t if thresholds is None else thresholds
        weights = fit_w if weights is None else weights
        meta_tune = {"n_tune": len(tune_prompts)}
    if len(thresholds) != len(sites) or len(weights) != len(sites):
        raise LaminaError(
            f"Give one threshold and one weight per block ({len(sites)}), not "
            f"{len(thresholds)} and {len(weights)} (the study's STUDY_THRESHOLDS and "
            "STUDY_WEIGHTS are for its 6-block model); leave them out to fit them.")
    sums = sums_for(prompts, [[t] for t in thresholds])
    p = next_token_distribution(model, prompts)
    ones = [0] * len(sites)
    d_with, e_with = _distances(p, sums, ones, weights, True)
    d_without, e_without = _distances(p, sums, ones, weights, False)
    q, _ = _combine(sums, ones, weights, not exclude_self)
    chosen = d_without if exclude_self else d_with
    table = pd.DataFrame({"prompt": prompts, "hellinger": chosen, "hellinger_with_self": d_with,
                          "hellinger_without_self": d_without,
                          "empty": e_without if exclude_self else e_with,
                          **{f"matches_block_{b}": s.matches[0] for b, s in enumerate(sums)}})

    def stats(d: np.ndarray, empty: np.ndarray) -> dict[str, Any]:
        return {"mean": float(d.mean()), "std": float(d.std(ddof=1)) if len(d) > 1 else 0.0,
                "min": float(d.min()), "max": float(d.max()),
                "quantiles": {str(k): float(np.quantile(d, k)) for k in (0.1, 0.25, 0.5, 0.75,
                                                                          0.9)},
                "share_below_0.2": float((d < 0.2).mean()), "n_below_0.2": int((d < 0.2).sum()),
                "n_empty": int(empty.sum())}

    summary = {"mean_hellinger": float(chosen.mean()), "n_prompts": len(prompts),
               "exclude_self": exclude_self, "with_self": stats(d_with, e_with),
               "without_self": stats(d_without, e_without),
               "thresholds": [float(t) for t in thresholds],
               "weights": [float(w) for w in weights], "fitted": fitted, **meta_tune, **state}
    if baseline is not None:
        other = load_models({"baseline": baseline})["baseline"]
        base = hellinger(p, next_token_distribution(other, prompts))
        table["baseline_hellinger"] = base
        summary["baseline"] = {**stats(base, np.zeros(len(base), bool)), "model": str(
            baseline if isinstance(baseline, str) else baseline.name)}
    vocab = model.token_strings(list(range(model.vocab_size)))
    return ApproximationResult(table, p, q, vocab, summary=summary, meta=model.describe(
        store=str(store.path), site=site, seed=seed, engine=engine, **state))
