"""The README's comparison finding: the CKA map of ``minilm`` with itself and against
``shakespeare-char`` on the same TinyShakespeare lines, one row per line (the mean over its
tokens: the two tokenizers differ, so token positions cannot be aligned).

    HF_HUB_OFFLINE=1 .venv/bin/python docs/figures/compare_finding.py [--lines 200]

Writes ``docs/figures/compare_minilm_shakespeare.png`` and prints the numbers (JSON) with the
wall time of each comparison.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import lamina  # noqa: E402
from lamina.corpus import sample_lines  # noqa: E402

FIGURE = Path(__file__).resolve().parent / "compare_minilm_shakespeare.png"
MEASURES = ("cka", "cka_debiased")


def panel(ax, matrix, title: str, ylabel: str, xlabel: str):
    """One heat map with its values written in, layers as integers, colours 0..1."""
    m = matrix.to_numpy()
    image = ax.imshow(m, origin="lower", vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for (i, j), v in zip(((i, j) for i in range(m.shape[0]) for j in range(m.shape[1])),
                         m.ravel(), strict=True):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6.5,
                color="white" if v < 0.6 else "black")
    ax.set_yticks(range(m.shape[0]), [s.split(".")[-1] for s in matrix.index])
    ax.set_xticks(range(m.shape[1]), [s.split(".")[-1] for s in matrix.columns])
    ax.set(title=title, ylabel=ylabel, xlabel=xlabel)
    return image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=200)
    args = ap.parse_args()
    texts = sample_lines(args.lines)  # the first lines of >= 40 characters
    minilm, char = lamina.load("minilm", device="cpu"), lamina.load("shakespeare-char",
                                                                     device="cpu")
    results, seconds = {}, {}
    for name, other in (("self", minilm), ("cross", char)):
        start = time.perf_counter()
        results[name] = lamina.compare(minilm, other, texts=texts, rows="pooled",
                                       measures=MEASURES, progress=False)
        seconds[name] = round(time.perf_counter() - start, 2)
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(1, 4, figsize=(17, 4.2), width_ratios=[7, 7, 5, 5])
    image = None
    for ax, (name, measure) in zip(axs, [("self", "cka"), ("self", "cka_debiased"),
                                         ("cross", "cka"), ("cross", "cka_debiased")],
                                   strict=True):
        other = "minilm" if name == "self" else "shakespeare-char"
        image = panel(ax, results[name].matrix(measure), f"minilm vs {other}\n{measure}",
                      "minilm layer (hidden.i)", f"{other} layer (hidden.i)")
    fig.colorbar(image, ax=axs, fraction=0.015, pad=0.01)
    fig.suptitle(f"Layer-to-layer CKA on the same {len(texts)} TinyShakespeare lines, one row "
                 "per line (mean over its tokens)", fontsize=11, y=1.08)
    fig.savefig(FIGURE, dpi=130, bbox_inches="tight")
    numbers = {name: {m: res.matrix(m).round(4).to_dict(orient="split") for m in MEASURES}
               for name, res in results.items()}
    best = {name: res.best_match("cka").round(4).to_dict(orient="records")
            for name, res in results.items()}
    print(json.dumps({"n_texts": len(texts), "seconds": seconds, "figure": str(FIGURE),
                      "matrices": numbers, "best_match_cka": best}, indent=1))


if __name__ == "__main__":
    main()
