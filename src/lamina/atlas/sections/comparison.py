"""Models compared layer by layer (:func:`lamina.compare`): for each pair of models, the CKA
and debiased CKA of every layer of one with every layer of the other on the report's texts,
topped up with corpus lines to 200 (100 quick): token rows when the two tokenize alike, else
one row per text, the mean over its tokens. The best-matching layers are the findings. A
section across models: it runs once, after the per-model sections, when the atlas has two or
more models."""

from __future__ import annotations

import itertools
from typing import Any

import pandas as pd

from lamina.atlas.section import CrossSectionSpec, ReportInputs, Section
from lamina.models import Model

#: The measures drawn: linear CKA with the biased and the unbiased HSIC.
MEASURES = ("cka", "cka_debiased")
#: Below this many rows the biased CKA runs high, and a finding says so.
FEW_ROWS = 100
#: Texts compared (quick: fewer): the report's texts, topped up with corpus lines.
N_TEXTS, QUICK_TEXTS = 200, 100


def applies(models: dict[str, Model], inputs: ReportInputs) -> str | None:
    """Needs two or more models with canonical sites (``hidden.*``)."""
    usable = [name for name, m in models.items() if m.sites]
    if len(usable) < 2:
        return ("lamina compares models through their canonical sites (hidden.*), and fewer "
                "than two of these models have them.")
    return None


def texts_for(inputs: ReportInputs) -> list[str]:
    """The report's texts, topped up to :data:`N_TEXTS` (:data:`QUICK_TEXTS` quick) with
    further lines of the corpus of at least 40 characters: pooled rows are one per text, and
    CKA over a few dozen rows says little."""
    want = QUICK_TEXTS if inputs.quick else N_TEXTS
    texts = list(dict.fromkeys(inputs.texts))
    if len(texts) < want:
        seen = set(texts)
        more = [ln.strip() for ln in inputs.corpus.splitlines() if len(ln.strip()) >= 40]
        texts += [t for t in dict.fromkeys(more) if t not in seen][: want - len(texts)]
    return texts


def pair_summary(result: Any) -> dict[str, Any]:
    """The headline numbers of one pair's :class:`~lamina.analyses.compare.CompareResult`:
    the rows, the largest CKA and where, and the best match of A's last layer."""
    cka = result.matrix("cka")
    deb = result.matrix("cka_debiased")
    site_a, site_b = cka.stack().idxmax()
    last = result.best_match("cka").iloc[-1]
    last_deb = result.best_match("cka_debiased").iloc[-1]
    return {"rows": result.summary["rows"], "n_rows": int(result.summary["n_rows"]),
            "best_cka": float(cka.loc[site_a, site_b]), "best_cka_site_a": str(site_a),
            "best_cka_site_b": str(site_b), "last_site_a": str(last["site_a"]),
            "last_match_cka": str(last["site_b"]), "last_cka": float(last["value"]),
            "last_match_debiased": str(last_deb["site_b"]),
            "last_cka_debiased": float(last_deb["value"]),
            "mean_cka": float(cka.to_numpy().mean()),
            "mean_cka_debiased": float(deb.to_numpy().mean())}


def comparison_findings(pairs: dict[str, dict[str, Any]]) -> list[str]:
    """One sentence per pair of models (``"A vs B"`` -> :func:`pair_summary`), and a caution
    when a pair has few rows."""
    out = []
    few = []
    for name, s in pairs.items():
        out.append(
            f"{name} on {s['n_rows']:,} rows ({s['rows']}): CKA peaks at {s['best_cka']:.2f} "
            f"between {s['best_cka_site_a']} and {s['best_cka_site_b']}; the last layer, "
            f"{s['last_site_a']}, best matches {s['last_match_cka']} (CKA {s['last_cka']:.2f}; "
            f"debiased: {s['last_match_debiased']}, {s['last_cka_debiased']:.2f}).")
        if s["n_rows"] < FEW_ROWS:
            few.append(name)
    if few:
        out.append(f"With fewer than {FEW_ROWS} rows ({', '.join(few)}) the biased CKA runs "
                   "high even between unrelated representations; read the debiased map.")
    return out


def run(models: dict[str, Model], inputs: ReportInputs) -> Section:
    """CKA and debiased CKA of each pair of models on the report's texts."""
    from lamina.analyses.compare import compare
    from lamina.analyses.compare.inputs import same_tokenization
    from lamina.atlas.save import slug

    usable = {name: m for name, m in models.items() if m.sites}
    texts = texts_for(inputs)
    pairs: dict[str, dict[str, Any]] = {}
    frames, best, figures = [], [], {}
    for j, (a, b) in enumerate(itertools.combinations(usable, 2)):
        ma, mb = usable[a], usable[b]
        rows = "tokens" if same_tokenization(ma, mb, texts, truncate=True) else "pooled"
        result = compare(ma, mb, texts=texts, measures=MEASURES, rows=rows,
                         truncate=True, progress=False)
        name = f"{a} vs {b}"
        pairs[name] = pair_summary(result)
        frames.append(result.to_frame().drop(columns="note").assign(model_a=a, model_b=b))
        for m in MEASURES:
            best.append(result.best_match(m).assign(model_a=a, model_b=b, measure=m))
        figures[f"cka_{j + 1}_{slug(a)}_vs_{slug(b)}"] = result.plot()
    order = ["model_a", "model_b", "measure", "site_a", "layer_a", "site_b", "layer_b", "value"]
    summary = {"n_texts": len(texts), "pairs": pairs}
    return Section(
        "comparison", SPEC.title, findings=comparison_findings(pairs), summary=summary,
        tables={"best_match": pd.concat(best, ignore_index=True)[order],
                "cka": pd.concat(frames, ignore_index=True)[
                    ["model_a", "model_b", "measure", "site_a", "site_b", "value"]]},
        figures=figures)


SPEC = CrossSectionSpec("comparison", "Models compared: CKA layer by layer", applies, run)
