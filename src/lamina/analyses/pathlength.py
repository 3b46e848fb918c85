"""Residual path length: how far each token's representation moves from layer to layer, and
whether the last step predicts the next-token logit (the fifth seed notebook, several models
side by side).

Layers: ``sites="hidden"`` uses Hugging Face's hidden states (reproduces the notebook; for
causal families the last one is after the final norm), ``sites="resid_post"`` uses the block
input then every block output (no final norm). The correlation uses positions ``1 .. T-2``:
the first token is skipped (as the notebook intends) and the last has no next token (the
notebook's code left it in with a logit of 0; lamina does not).

Path lengths are measured for any model. The next-token correlations need a causal LM with an
unembedding and at least four usable positions; where they cannot be computed (an encoder such
as BERT, a too-short text, constant values) the ``per_model`` table's ``correlation_note``
says why, and the correlation columns are empty. (:func:`~lamina.analyses.lens`, which has
nothing else to show, refuses such a model instead.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats

from lamina.analyses.layerwise import load_models
from lamina.analyses.lens import text_ids
from lamina.errors import LaminaError
from lamina.models import Model, versions
from lamina.results import Result

TARGETS = ("logit", "logprob", "loss")


@dataclass
class PathLengthResult(Result):
    """``to_frame()``: one row per model, position and layer (``model``, ``position``,
    ``token``, ``layer``, ``step_norm``, ``cumulative``, ``cos_prev``); ``per_model`` (saved
    as ``pathlength_summary.csv``): one row per model with ``pearson_r``/``spearman_r``
    (final step vs next-token logit), their 95% confidence intervals and p-values, the same
    against log-probability and loss, and ``correlation_note``: why the correlations are
    missing, or empty when they are there. ``summary``: ``models`` (the names), ``n_models``
    and ``notes`` (:meth:`notes`)."""

    table: pd.DataFrame
    targets: pd.DataFrame  # model, position, logit, logprob, loss
    per_model: pd.DataFrame
    name = "pathlength"

    def to_frame(self) -> pd.DataFrame:
        return self.table.copy()

    def extra_tables(self) -> dict[str, pd.DataFrame]:
        return {"pathlength_summary": self.per_model, "next_token": self.targets}

    def plot(self, **kwargs: Any) -> Any:
        import matplotlib as mpl
        import matplotlib.pyplot as plt

        from lamina.plotting import integer_axis

        site_names = self.meta.get("sites", "hidden")
        names = list(self.table["model"].unique())
        has_logits = not self.targets.empty
        fig, axs = plt.subplots(2 if has_logits else 1, len(names), squeeze=False,
                                figsize=(4.5 * len(names), 7 if has_logits else 3.8))
        for k, name in enumerate(names):
            t = self.table[self.table["model"] == name]
            wide = t.pivot(index="layer", columns="position", values="cumulative")
            n_pos = wide.shape[1]
            for pos in wide.columns[1:]:
                axs[0, k].plot(wide.index, wide[pos], "s-", alpha=0.25, linewidth=0.5,
                               markersize=3, color=mpl.cm.plasma(pos / max(n_pos, 1)))
            axs[0, k].set(title=f"{name}, sites {site_names}: cumulative path (line = token)",
                          xlabel=f"Layer ({site_names})", ylabel="Cumulative path length")
            integer_axis(axs[0, k])
            if has_logits:
                row = self.per_model[self.per_model["model"] == name].iloc[0]
                used = self._final_steps(name)
                axs[1, k].plot(used["logit"], used["step_norm"], "ko", markersize=6,
                               markerfacecolor=(0.9, 0.7, 0.7), alpha=0.6)
                r, rho = row["pearson_r"], row["spearman_r"]
                label = "no correlation" if np.isnan(r) else f"r = {r:.2f}, ρ = {rho:.2f}"
                axs[1, k].set(title=f"{name}, sites {site_names} ({label})",
                              xlabel="Next-token logit",
                              ylabel=f"Path length at final layer ({site_names})")
        fig.tight_layout()
        return fig

    def _final_steps(self, name: str) -> pd.DataFrame:
        t = self.table[self.table["model"] == name]
        last = t[t["layer"] == t["layer"].max()][["position", "step_norm"]]
        tg = self.targets[(self.targets["model"] == name) & self.targets["used"]]
        return tg.merge(last, on="position")

    def notes(self) -> list[str]:
        """One line per model whose next-token correlations are missing, saying why."""
        return _notes(self.per_model)


def _notes(per_model: pd.DataFrame) -> list[str]:
    """``"model: note"`` for each row of ``per_model`` whose ``correlation_note`` is set."""
    if "correlation_note" not in per_model:
        return []
    return [f"{row.model}: {row.correlation_note}" for row in per_model.itertuples()
            if isinstance(row.correlation_note, str) and row.correlation_note]


def _correlate(x: np.ndarray, y: np.ndarray, prefix: str) -> tuple[dict[str, float], str]:
    """Pearson (exact CI from scipy) and Spearman (Fisher-z CI with the Fieller et al.
    standard error 1.06/sqrt(n-3)) correlations of x with y, or NaNs and the reason why they
    are undefined."""
    n = len(x)
    out = {f"pearson_r{prefix}": np.nan, f"spearman_r{prefix}": np.nan}
    if n < 4:
        return out, f"{n} usable position(s): a correlation with a confidence interval needs 4"
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        which = "final-layer path lengths" if np.ptp(x) == 0 else (
            f"next-token {prefix[1:] or 'logit'} values")
        return out, f"the {which} are all equal: a correlation is undefined"
    p = stats.pearsonr(x, y)
    ci = p.confidence_interval(0.95)
    s = stats.spearmanr(x, y)
    z, half = math.atanh(min(max(s.statistic, -0.999999), 0.999999)), 1.96 * 1.06 / math.sqrt(
        n - 3)
    out.update({
        f"pearson_r{prefix}": float(p.statistic), f"pearson_ci_low{prefix}": float(ci.low),
        f"pearson_ci_high{prefix}": float(ci.high), f"pearson_p{prefix}": float(p.pvalue),
        f"spearman_r{prefix}": float(s.statistic),
        f"spearman_ci_low{prefix}": math.tanh(z - half),
        f"spearman_ci_high{prefix}": math.tanh(z + half), f"spearman_p{prefix}": float(s.pvalue),
    })
    return out, ""


def _points(model: Model, sites: str) -> list[str]:
    if sites == "hidden":
        return [f"hidden.{i}" for i in range(model.n_layers + 1)]
    return ["blocks.0.hook_resid_pre"] + [  # "resid_post", checked by pathlength()
        f"blocks.{L}.hook_resid_post" for L in range(model.n_layers)]


def _no_correlation(model: Model, n: int) -> str:
    """Why the next-token correlations cannot be computed for ``model`` ("" if they can)."""
    if not model.is_causal:
        return ("path lengths only: the next-token correlations need a causal LM, and this "
                f"model is not one ({model.family or type(model.hf_model).__name__})")
    if getattr(model.hf_model, "get_output_embeddings", lambda: None)() is None:
        return (f"path lengths only: {type(model.hf_model).__name__} has no unembedding; load "
                "the model with its language-modelling head for the next-token correlations")
    if n < 3:
        return f"path lengths only: the text is {n} token(s), too short for next-token pairs"
    return ""


def _one(name: str, model: Model, text: str | list[int], sites: str, truncate: bool
         ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    points = _points(model, sites)
    ids = text_ids(model, text, truncate=truncate)
    acts = model.collect([ids], points, positions="all")
    n = len(ids)
    h = torch.stack([acts[s][0, :n] for s in points]).double()  # [layers, T, d]
    steps = torch.zeros(h.shape[:2], dtype=torch.float64)
    steps[1:] = (h[1:] - h[:-1]).norm(dim=-1)
    cos = torch.full(h.shape[:2], float("nan"), dtype=torch.float64)
    cos[1:] = torch.nn.functional.cosine_similarity(h[1:], h[:-1], dim=-1)
    cumulative = steps.cumsum(0)
    step_out = steps.clone()
    step_out[0] = float("nan")
    tokens = acts.token_strings[0]
    layer, pos = np.meshgrid(np.arange(len(points)), np.arange(n), indexing="ij")
    table = pd.DataFrame({
        "model": name, "position": pos.ravel(),
        "token": np.array(tokens, dtype=object)[pos.ravel()],
        "layer": layer.ravel(), "site": np.array(points, dtype=object)[layer.ravel()],
        "step_norm": step_out.numpy().ravel(), "cumulative": cumulative.numpy().ravel(),
        "cos_prev": cos.numpy().ravel(),
    })
    note = _no_correlation(model, n)
    row: dict[str, Any] = {"model": name, "n_tokens": n, "sites": sites}
    targets = pd.DataFrame()
    if not note:
        with torch.inference_mode():
            logits = model.hf_model(input_ids=torch.tensor([ids], device=model.device)
                                    ).logits[0].double().cpu()  # [T, vocab]
        nxt = torch.tensor(ids[1:])
        logit = logits[:-1].gather(1, nxt[:, None]).squeeze(1)
        logprob = torch.log_softmax(logits[:-1], -1).gather(1, nxt[:, None]).squeeze(1)
        targets = pd.DataFrame({"model": name, "position": np.arange(n - 1),
                                "logit": logit.numpy(), "logprob": logprob.numpy(),
                                "loss": -logprob.numpy(), "used": np.arange(n - 1) >= 1})
        used = targets[targets["used"]]
        final = steps[-1, 1 : n - 1].numpy()
        row["n_pairs"] = len(used)
        reasons = []
        for target in TARGETS:
            values, reason = _correlate(final, used[target].to_numpy(),
                                        "" if target == "logit" else f"_{target}")
            row.update(values)
            reasons += [reason] if reason and reason not in reasons else []
        row["mean_loss"] = float(used["loss"].mean())
        note = "; ".join(reasons)
    row["correlation_note"] = note
    return table, targets, row


def pathlength(models: Model | str | Mapping[str, Model | str], text: str | list[int], *,
               sites: str = "hidden", truncate: bool = False) -> PathLengthResult:
    """Per-token path length through the layers for one or several models.

    Args:
        models: a model, or a dict display name -> model (anything :func:`lamina.load` takes).
        text: a string (tokenized by each model's tokenizer) or token ids.
        sites: ``"hidden"`` (Hugging Face hidden states) or ``"resid_post"`` (no final norm).
        truncate: read the first tokens of a text longer than a model's context instead of
            raising.

    Returns:
        :class:`PathLengthResult`; for a model whose next-token correlations cannot be
        computed (an encoder, a text under three tokens) its ``per_model`` row's
        ``correlation_note`` says why (see :meth:`PathLengthResult.notes`). Each model is
        loaded once (:func:`~lamina.analyses.layerwise.load_models`).
    """
    if sites not in ("hidden", "resid_post"):
        raise LaminaError(f"sites must be 'hidden' or 'resid_post', not {sites!r}.",
                          cli=f"--sites must be hidden or resid_post, not {sites!r}.")
    loaded = load_models(models)
    tables, targets, rows = [], [], []
    for name, model in loaded.items():
        t, tg, row = _one(name, model, text, sites, truncate)
        tables.append(t)
        targets.append(tg)
        rows.append(row)
    per_model = pd.DataFrame(rows)
    return PathLengthResult(
        pd.concat(tables, ignore_index=True),
        pd.concat(targets, ignore_index=True),
        per_model,
        summary={"models": list(loaded), "n_models": len(loaded), "notes": _notes(per_model)},
        meta={"models": {k: m.describe() for k, m in loaded.items()}, "sites": sites,
              "text": text if isinstance(text, str) else None, "versions": versions()},
    )
