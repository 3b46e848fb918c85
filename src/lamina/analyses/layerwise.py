"""The layer-wise toolkit shared by the analyses and the atlas, so that each rule exists once:

* :func:`within_across`: per layer, the within- vs across-group cosine comparison (means, Δ,
  Student's and Welch's t, Cohen's d, the p-values, the mean-centred Δ and t and a random-pair
  baseline), the table behind :func:`~lamina.analyses.categories` and
  :func:`~lamina.analyses.contexts`;
* :func:`load_models`: the "for each model" loop's loading, each model once;
* :func:`relative_depth` and :func:`matching_layer`: where a layer sits in its model
  (``layer / n_layers``, 0 = the embeddings, 1 = the last block's output), and which layer of
  another model, of a different depth, sits at the same relative depth.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from lamina.errors import LaminaError

if TYPE_CHECKING:
    import torch

    from lamina.models import Model

#: Columns of :attr:`WithinAcross.table`, in order. ``p_t`` and ``p_welch`` are the t-tests'
#: p-values over the pairs (optimistic: pairs share items), ``centred_*`` the same comparison
#: after subtracting the mean vector of the layer, ``baseline_mean`` the mean cosine of random
#: pairs (NaN without a baseline).
COLUMNS = ("layer", "site", "within_mean", "across_mean", "delta", "t", "t_welch", "cohens_d",
           "p_permutation", "p_t", "p_welch", "centred_delta", "centred_t", "baseline_mean")


@dataclass
class WithinAcross:
    """Result of :func:`within_across`. ``table``: one row per site (:data:`COLUMNS`);
    ``pairs``: every site's per-group-pair rows (``group_a``, ``group_b``, ``within``,
    ``count``, ``mean``, ``var``, ``std``, then ``layer``, ``site``); ``histograms``: site ->
    ``[n_group_pairs, n_bins]`` counts and ``edges`` (only when ``bins`` was given);
    ``notes``: why a statistic is undefined, each once."""

    table: pd.DataFrame
    pairs: pd.DataFrame
    histograms: dict[str, np.ndarray] = field(default_factory=dict)
    edges: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)


def within_across(vectors: Mapping[str, torch.Tensor], labels: Any, *,
                  baseline: Mapping[str, float] | None = None, permutations: int = 0,
                  seed: int = 0, bins: int | None = None,
                  range: tuple[float, float] | None = None,
                  notes: list[str] | None = None) -> WithinAcross:
    """Within- vs across-group cosine similarity of each site's vectors.

    Args:
        vectors: site -> ``[n_items, d]`` vectors, in layer order (the table's row order).
        labels: ``[n_items]`` group of each item (a category, a word).
        baseline: site -> mean cosine of random pairs (``baseline_mean``; NaN where absent).
        permutations, seed: the label-permutation test of Δ (``p_permutation``; NaN with 0).
        bins, range: per-group-pair histograms of the raw cosines (``None``: none).
        notes: a list to extend with the notes on undefined statistics (default: a new one).

    Per site, :func:`lamina.similarity.group_stats` on the vectors gives the raw columns and
    on the vectors minus their mean (``x - x.mean(0)``) the ``centred_*`` ones; its notes on
    undefined statistics go to ``notes`` (``"centred: "`` before the centred ones) instead of
    warnings.
    """
    from lamina.analyses._checks import noted_group_stats
    from lamina.sites import layer_of

    notes = [] if notes is None else notes
    baseline = {} if baseline is None else baseline
    extra: dict[str, Any] = {} if bins is None else {"bins": bins, "range": range}
    rows, pairs, hists, edges = [], [], {}, None
    for site, x in vectors.items():
        gs = noted_group_stats(x, labels, notes, permutations=permutations, seed=seed, **extra)
        centred = noted_group_stats(x - x.mean(0, keepdim=True), labels, notes, "centred: ")
        s, c = gs.summary, centred.summary
        layer = layer_of(site)
        rows.append({
            "layer": layer, "site": site, "within_mean": s["within_mean"],
            "across_mean": s["across_mean"], "delta": s["delta"], "t": float(s["t"]),
            "t_welch": float(s["t_welch"]), "cohens_d": float(s["cohens_d"]),
            "p_permutation": s["p_permutation"], "p_t": s["p_t"], "p_welch": s["p_welch"],
            "centred_delta": c["delta"], "centred_t": float(c["t"]),
            "baseline_mean": baseline.get(site, float("nan")),
        })
        pairs.append(gs.table.assign(layer=layer, site=site))
        if bins is not None:
            hists[site], edges = gs.histograms, gs.edges
    if not rows:
        raise LaminaError("No sites to compare: give at least one site (e.g. 'hidden.*').")
    return WithinAcross(pd.DataFrame(rows, columns=list(COLUMNS)),
                        pd.concat(pairs, ignore_index=True), hists,
                        None if edges is None else np.asarray(edges), notes)


def load_models(models: Model | str | Mapping[str, Model | str] | Sequence[Model | str]
                ) -> dict[str, Model]:
    """Each model loaded once: display name -> :class:`~lamina.models.Model`.

    Args:
        models: a model (anything :func:`lamina.load` takes; its name is ``model.name``), a
            dict display name -> model, or a list of models (named by ``model.name``, a
            repeated name getting `` (2)``, `` (3)``, ...).

    The same specification (an equal string, or the same object) given under several names is
    loaded once and shared; an already loaded :class:`Model` is used as it is (not loaded
    again). :func:`lamina.models.load` is looked up at each call, so a test may count loads by
    replacing it.
    """
    import os

    from lamina import models as _models

    cache: dict[Any, Model] = {}

    def one(spec: Any) -> Model:
        if isinstance(spec, _models.Model):
            return spec
        key = str(spec) if isinstance(spec, (str, os.PathLike)) else id(spec)
        if key not in cache:
            cache[key] = _models.load(spec)
        return cache[key]

    if isinstance(models, Mapping):
        if not models:
            raise LaminaError("No models were given: pass a model or a dict name -> model.")
        return {str(name): one(spec) for name, spec in models.items()}
    if isinstance(models, (str, os.PathLike, _models.Model, tuple)):
        m = one(models)
        return {m.name: m}
    items = list(models or [])
    if not items:
        raise LaminaError("No models were given: pass a model, a list or a dict name -> model.")
    loaded = [one(m) for m in items]
    seen: dict[str, int] = {}
    out: dict[str, Model] = {}
    for m in loaded:
        seen[m.name] = seen.get(m.name, 0) + 1
        out[m.name if seen[m.name] == 1 else f"{m.name} ({seen[m.name]})"] = m
    return out


def _check_depth(n_layers: Any, name: str, least: int) -> int:
    if isinstance(n_layers, bool) or not isinstance(n_layers, (int, np.integer)) or (
            n_layers < least):
        raise LaminaError(f"{name} must be an integer of at least {least} (a model's number of "
                          f"blocks), not {n_layers!r}.")
    return int(n_layers)


def relative_depth(layer: Any, n_layers: int) -> Any:
    """Where ``layer`` sits in a model of ``n_layers`` blocks, from 0 to 1: ``layer /
    n_layers`` (``n_layers`` 0, a model of embeddings only, counts as 1).

    ``layer`` counts as the hidden states do: 0 is the embeddings, ``L`` the output of block
    ``L - 1``, ``n_layers`` the last block's output; a point inside block ``L`` (after its
    attention) is ``L + 0.5``. A number gives a float, an array (e.g. a table's ``layer``
    column) an array; a layer outside ``[0, n_layers]`` (``-1``, a site outside the blocks)
    maps outside ``[0, 1]``.
    """
    n = max(_check_depth(n_layers, "n_layers", 0), 1)
    if isinstance(layer, (int, float, np.integer, np.floating)) and not isinstance(layer, bool):
        return layer / n
    values = np.asarray(layer)
    if values.dtype.kind not in "iuf":
        raise LaminaError(f"layer must be a number or an array of numbers, not {layer!r}.")
    return values / n


def matching_layer(layer: int, n_layers: int, n_layers_other: int) -> int:
    """The layer of a model of ``n_layers_other`` blocks at the same relative depth as
    ``layer`` of a model of ``n_layers`` blocks: the ``j`` in ``0..n_layers_other`` nearest
    to ``layer / n_layers`` on the depth scale (hidden-state counting, as
    :func:`relative_depth`), the shallower one on a tie (computed in integers, so a tie is
    exact). The embeddings match the embeddings and the last layer the last layer.
    """
    n_a = _check_depth(n_layers, "n_layers", 1)
    n_b = _check_depth(n_layers_other, "n_layers_other", 1)
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not (
            0 <= layer <= n_a):
        raise LaminaError(f"layer must be an integer in [0, {n_a}] (0: the embeddings, {n_a}: "
                          f"the last block's output), not {layer!r}.")
    # |j / n_b - layer / n_a| is smallest where |j * n_a - layer * n_b| is
    return min(range(n_b + 1), key=lambda j: (abs(j * n_a - int(layer) * n_b), j))
