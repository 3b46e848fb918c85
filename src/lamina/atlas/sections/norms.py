"""Norms per site and layer, with the cosine-vs-Euclidean verdict
(:func:`lamina.analyses.norms`)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from lamina.analyses.layerwise import relative_depth
from lamina.atlas.findings import norms_findings
from lamina.atlas.section import ReportInputs, Section, SectionSpec
from lamina.errors import LaminaError
from lamina.models import Model

#: Site requests measured where the model has them: the residual stream after each block
#: (``hidden.*``) and what attention and the MLP write into it.
SITES = ("hidden.*", "attn_out.*", "mlp_out.*")


def _sites(model: Model) -> list[str]:
    found = []
    for request in SITES:
        try:
            found += [s.name for s in model.resolve_sites(request)]
        except LaminaError:
            continue
    return found


def applies(model: Model, inputs: ReportInputs) -> str | None:
    """Needs canonical sites (a supported architecture)."""
    if not model.sites:
        return ("lamina has no canonical sites for this architecture, so there is nothing "
                "to measure.")
    return None


def _extra(table: pd.DataFrame) -> dict[str, Any]:
    """Headline numbers read off the norms table: the peak and the hidden-state growth."""
    peak = table.loc[table["mean_norm"].idxmax()]
    hidden = table[table["kind"] == "hidden"].sort_values("layer")
    out: dict[str, Any] = {"peak_site": str(peak["site"]), "peak_layer": int(peak["layer"]),
                           "peak_mean_norm": float(peak["mean_norm"])}
    if len(hidden) >= 2:
        out["hidden_first_mean_norm"] = float(hidden["mean_norm"].iloc[0])
        out["hidden_last_mean_norm"] = float(hidden["mean_norm"].iloc[-1])
    return out


def run(model: Model, inputs: ReportInputs) -> Section:
    """Norms of every token (positions ``"all"``) of the report's texts."""
    from lamina.analyses import norms

    result = norms(model, inputs.texts, sites=_sites(model), positions="all", truncate=True)
    table = result.to_frame()
    summary = {k: v for k, v in result.summary.items() if k not in ("conclusion",
                                                                     "conclusion_short")}
    summary.update(_extra(table))
    summary["n_texts"] = len(inputs.texts)
    overlays = {}
    for kind, rows in table.groupby("kind", sort=False):
        frame = pd.DataFrame({"x": relative_depth(rows["layer"].to_numpy(), model.n_layers),
                              "y": rows["mean_norm"].to_numpy()})
        overlays[f"mean norm ({kind})"] = frame
    return Section("norms", SPEC.title, findings=norms_findings(summary), summary=summary,
                   tables={"norms": table}, figures=result.figures(), overlays=overlays)


SPEC = SectionSpec("norms", "Norms per layer: cosine or Euclidean?", applies, run)
