"""Words in context at scale: lamina's ``contexts`` against the notebook's route.

5,000 occurrences of each of 3 words ("the", "and", "i") in TinyShakespeare, 50 tokens of
context, all 7 hidden states of ``minilm``. Each method runs in its own subprocess so its peak
memory (ru_maxrss) is its own:

* ``lamina``: ``lamina.analyses.contexts(...)`` end to end (capture, exact group statistics from
  Gram matrices, streamed per-word-pair histograms).
* ``notebook``: a plain Hugging Face forward with ``output_hidden_states=True`` keeping the last
  position, then per layer the full N x N cosine matrix, an ``np.triu`` category mask, the
  within/across value lists, ``scipy.stats.ttest_ind`` and ``torch.histogram`` per group.

Usage: ``python benchmarks/layerwise.py [--per-word 5000] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

TARGETS = ["the", "and", "i"]
WINDOW = 50


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_lamina(per_word: int) -> dict:
    import lamina
    from lamina.analyses import contexts
    from lamina.corpus import tinyshakespeare

    model = lamina.load("minilm", device="cpu")
    base = _rss_mb()
    t0 = time.perf_counter()
    result = contexts(model, tinyshakespeare(), TARGETS, window=WINDOW, max_per_target=per_word,
                      seed=0, permutations=0, baseline=0, bins=80, batch_size=64)
    total = time.perf_counter() - t0
    return {"method": "lamina contexts", "seconds": total, "peak_mb": _rss_mb(),
            "peak_beyond_model_mb": _rss_mb() - base,
            "n": int(result.summary["n_occurrences"]),
            "delta_layer6": float(result.to_frame()["delta"].iloc[-1])}


def run_notebook(per_word: int) -> dict:
    import numpy as np
    import torch
    from scipy.stats import ttest_ind

    import lamina
    from lamina.analyses.contexts import occurrences
    from lamina.corpus import tinyshakespeare

    model = lamina.load("minilm", device="cpu")
    base = _rss_mb()
    t0 = time.perf_counter()
    ids = np.asarray(model.tokenizer(tinyshakespeare(), add_special_tokens=False,
                                     verbose=False)["input_ids"])
    picks, _ = occurrences(model, ids, TARGETS, WINDOW, per_word, 0)
    batch = torch.tensor(np.stack([ids[p - WINDOW : p + 1] for p in np.concatenate(picks)]))
    labels = np.concatenate([np.full(len(p), i + 1) for i, p in enumerate(picks)])
    hidden = []
    with torch.no_grad():
        for start in range(0, len(batch), 64):
            out = model.hf_model(input_ids=batch[start : start + 64], output_hidden_states=True)
            hidden.append(torch.stack([h[:, -1] for h in out.hidden_states]))
    hidden = torch.cat(hidden, dim=1)  # [layers, N, d]
    t_capture = time.perf_counter() - t0
    # the notebook's category mask: upper triangle, label product codes
    cat_mask = np.triu(np.outer(labels, labels), 1)
    edges = torch.linspace(-1, 1, 81)
    for layer in range(hidden.shape[0]):
        hs = hidden[layer] / torch.linalg.norm(hidden[layer], dim=1, keepdim=True)
        cs = (hs @ hs.T).numpy()
        within = np.concatenate([cs[cat_mask == k * k] for k in (1, 2, 3)])
        across = np.concatenate([cs[cat_mask == k] for k in (2, 3, 6)])
        ttest_ind(within, across)
        for values in (within, across):
            torch.histogram(torch.from_numpy(values), bins=edges)
        delta = float(within.mean() - across.mean())
    total = time.perf_counter() - t0
    return {"method": "notebook route (full matrix per layer)", "seconds": total,
            "capture_seconds": t_capture, "peak_mb": _rss_mb(),
            "peak_beyond_model_mb": _rss_mb() - base, "n": int(len(labels)),
            "delta_layer6": delta}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-word", type=int, default=5000)
    parser.add_argument("--json")
    parser.add_argument("--child", choices=["lamina", "notebook"])
    args = parser.parse_args()
    if args.child:
        fn = run_lamina if args.child == "lamina" else run_notebook
        print(json.dumps(fn(args.per_word)))
        return
    rows = []
    for child in ("lamina", "notebook"):
        out = subprocess.run([sys.executable, __file__, "--child", child, "--per-word",
                              str(args.per_word)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    lam, nb = rows
    print("| method | N | time (s) | peak RSS (MB) | beyond model (MB) | Δ layer 6 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['n']} | {r['seconds']:.1f} | {r['peak_mb']:.0f} | "
              f"{r['peak_beyond_model_mb']:.0f} | {r['delta_layer6']:.5f} |")
    print(f"\nspeed-up {nb['seconds'] / lam['seconds']:.2f}x; stats beyond the forward pass: "
          f"notebook {nb['seconds'] - nb['capture_seconds']:.1f} s; memory ratio "
          f"{nb['peak_beyond_model_mb'] / max(lam['peak_beyond_model_mb'], 1):.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
