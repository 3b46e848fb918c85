"""Residual path length: how far each token's representation moves from layer to layer, and
whether the last step predicts the next-token logit (the fifth seed notebook, several models
side by side).

Layers: ``sites="hidden"`` uses Hugging Face's hidden states (reproduces the notebook; for
causal families the last one is after the final norm), ``sites="resid_post"`` uses the block
input then every block output (no final norm). The correlation uses positions ``1 .. T-2``:
the first token is skipped (as the notebook intends) and the last has no next token (the
notebook's code left it in with a logit of 0; lamina does not).
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

from lamina.errors import LaminaError
from lamina.models import Model, load, versions
from lamina.results import Result

TARGETS = ("logit", "logprob", "loss")


@dataclass
class PathLengthResult(Result):
    """``to_frame()``: one row per model, position and layer (``model``, ``position``,
    ``token``, ``layer``, ``step_norm``, ``cumulative``, ``cos_prev``); ``summary``: one row
    per model with ``pearson_r``/``spearman_r`` (final step vs next-token logit), their 95%
    confidence intervals and p-values, and the same against log-probability and loss."""

    table: pd.DataFrame
    targets: pd.DataFrame  # model, position, logit, logprob, loss
    name = "pathlength"

    def to_frame(self) -> pd.DataFrame:
        return self.table.copy()

    def extra_tables(self) -> dict[str, pd.DataFrame]:
        return {"pathlength_summary": self.summary, "next_token": self.targets}

    def plot(self, **kwargs: Any) -> Any:
        import matplotlib as mpl
        import matplotlib.pyplot as plt

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
            axs[0, k].set(title=f"{name}: cumulative path (line = token)", xlabel="Layer",
                          ylabel="Cumulative path length")
            if has_logits:
                row = self.summary[self.summary["model"] == name].iloc[0]
                used = self._final_steps(name)
                axs[1, k].plot(used["logit"], used["step_norm"], "ko", markersize=6,
                               markerfacecolor=(0.9, 0.7, 0.7), alpha=0.6)
                axs[1, k].set(title=f"{name} (r = {row['pearson_r']:.2f}, "
                              f"ρ = {row['spearman_r']:.2f})",
                              xlabel="Next-token logit", ylabel="Path length at final layer")
        fig.tight_layout()
        return fig

    def _final_steps(self, name: str) -> pd.DataFrame:
        t = self.table[self.table["model"] == name]
        last = t[t["layer"] == t["layer"].max()][["position", "step_norm"]]
        tg = self.targets[(self.targets["model"] == name) & self.targets["used"]]
        return tg.merge(last, on="position")


def _correlate(x: np.ndarray, y: np.ndarray, prefix: str) -> dict[str, float]:
    """Pearson (exact CI from scipy) and Spearman (Fisher-z CI with the Fieller et al.
    standard error 1.06/sqrt(n-3)) correlations of x with y."""
    n = len(x)
    out = {f"pearson_r{prefix}": np.nan, f"spearman_r{prefix}": np.nan}
    if n < 4 or np.std(x) == 0 or np.std(y) == 0:
        return out
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
    return out


def _points(model: Model, sites: str) -> list[str]:
    if sites == "hidden":
        return [f"hidden.{i}" for i in range(model.n_layers + 1)]
    if sites == "resid_post":
        return ["blocks.0.hook_resid_pre"] + [
            f"blocks.{L}.hook_resid_post" for L in range(model.n_layers)]
    raise LaminaError(f"sites must be 'hidden' or 'resid_post', not {sites!r}.")


def _one(name: str, model: Model, text: str | list[int], sites: str, truncate: bool
         ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    points = _points(model, sites)
    acts = model.collect([text], points, positions="all", truncate=truncate)
    n = int(acts.lengths[0])
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
    row: dict[str, Any] = {"model": name, "n_tokens": n, "sites": sites}
    targets = pd.DataFrame()
    has_head = model.is_causal and getattr(model.hf_model, "get_output_embeddings",
                                           lambda: None)() is not None
    if has_head and n >= 3:
        ids = acts.token_ids[:, :n].to(model.device)
        with torch.inference_mode():
            logits = model.hf_model(input_ids=ids).logits[0].double().cpu()  # [T, vocab]
        nxt = acts.token_ids[0, 1:n]
        logit = logits[:-1].gather(1, nxt[:, None]).squeeze(1)
        logprob = torch.log_softmax(logits[:-1], -1).gather(1, nxt[:, None]).squeeze(1)
        targets = pd.DataFrame({"model": name, "position": np.arange(n - 1),
                                "logit": logit.numpy(), "logprob": logprob.numpy(),
                                "loss": -logprob.numpy(), "used": np.arange(n - 1) >= 1})
        used = targets[targets["used"]]
        final = steps[-1, 1 : n - 1].numpy()
        row["n_pairs"] = len(used)
        for target in TARGETS:
            row.update(_correlate(final, used[target].to_numpy(),
                                  "" if target == "logit" else f"_{target}"))
        row["mean_loss"] = float(used["loss"].mean())
    return table, targets, row


def pathlength(models: Model | str | Mapping[str, Model | str], text: str | list[int], *,
               sites: str = "hidden", truncate: bool = False) -> PathLengthResult:
    """Per-token path length through the layers for one or several models.

    Args:
        models: a model, or a dict display name -> model (anything :func:`lamina.load` takes).
        text: a string (tokenized by each model's tokenizer) or token ids.
        sites: ``"hidden"`` (Hugging Face hidden states) or ``"resid_post"`` (no final norm).
    """
    if not isinstance(models, Mapping):
        m = load(models)
        models = {m.name: m}
    tables, targets, rows = [], [], []
    for name, spec in models.items():
        t, tg, row = _one(name, load(spec), text, sites, truncate)
        tables.append(t)
        targets.append(tg)
        rows.append(row)
    return PathLengthResult(
        pd.concat(tables, ignore_index=True),
        pd.concat(targets, ignore_index=True),
        summary=pd.DataFrame(rows),
        meta={"models": {k: load(v).describe() for k, v in models.items()}, "sites": sites,
              "text": text if isinstance(text, str) else None, "versions": versions()},
    )
