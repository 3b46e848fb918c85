"""The first seed study's figures on the built-in character model (README, "The first seed
study at full scale").

    .venv/bin/python docs/study.py [--chars 100000] [--store DIR] [--full-store DIR]

1. A store of the study's five intermediates per block (block input ``resid_pre``, the
   concatenated head outputs ``attn.hook_z``, the attention output ``attn_out``, the
   feed-forward output ``mlp_out`` and the block output ``resid_post``) for every unique
   10-character substring of the first ``--chars`` characters of TinyShakespeare; their norms
   per block -> ``docs/figures/store_norms.png`` and the cosine-vs-Euclidean conclusion.
2. The most similar stored strings of one prompt per block and intermediate ->
   ``docs/figures/similar_strings.md`` (from ``--full-store``, the benchmark's store of all
   858,923 substrings, for ``mlp_out`` when given).
3. The logit lens after attention and after the feed-forward network of every block ->
   ``docs/figures/lens_shakespeare_char.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import lamina  # noqa: E402
from lamina import store as lstore  # noqa: E402
from lamina.analyses import lens, similar_strings  # noqa: E402
from lamina.analyses.norms import norms_of  # noqa: E402
from lamina.corpus import tinyshakespeare  # noqa: E402

FIGURES = Path(__file__).resolve().parent / "figures"
PROMPT = "I pray the"  # 10 characters, like the stored strings
LENS_TEXT = "ROMEO:\nBut, soft! what light"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chars", type=int, default=100_000)
    ap.add_argument("--store", type=Path, default=Path("/tmp/lamina-study/five-sites"))
    ap.add_argument("--full-store", type=Path, help="the benchmark's mlp_out store")
    args = ap.parse_args()
    model = lamina.load("shakespeare-char")
    kinds = ["hook_resid_pre", "attn.hook_z", "hook_attn_out", "hook_mlp_out", "hook_resid_post"]
    sites = [f"blocks.{b}.{k}" for b in range(model.n_layers) for k in kinds]
    sub = lstore.substrings(tinyshakespeare()[: args.chars], 10)
    store = lstore.collect(model, sub, sites, args.store)

    norms = norms_of(store)
    norms.plot().savefig(FIGURES / "store_norms.png", dpi=110)
    print(norms.to_frame()[["site", "mean_norm", "std_norm", "cv"]].round(2).to_string())
    print(norms.summary["conclusion"])

    lines = [f"Prompt {PROMPT!r}: top 3 stored strings per block by cosine at the last "
             f"position (next characters in the corpus after the string, with counts).\n"]
    tables = [(store, sites, f"{len(store):,} substrings of the first {args.chars:,} "
                             "characters")]
    if args.full_store:
        full = lstore.open(args.full_store)
        tables.insert(0, (full, full.sites, f"all {len(full):,} substrings"))
    for st, st_sites, what in tables:
        frame = similar_strings(model, st, PROMPT, site=st_sites, k=3).to_frame()
        lines.append(f"\nStore: {what}.\n\n| site | 1 | 2 | 3 |\n|---|---|---|---|")
        for site, rows in frame.groupby("site", sort=False):
            cells = [f"`{r.string!r}` {r.similarity:.3f} ({r.next})" for r in rows.itertuples()]
            lines.append(f"| {site} | " + " | ".join(c.replace("|", "\\|") for c in cells)
                         + " |")
    (FIGURES / "similar_strings.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    lens(model, LENS_TEXT, sublayers=True).plot().savefig(
        FIGURES / "lens_shakespeare_char.png", dpi=110)


if __name__ == "__main__":
    main()
