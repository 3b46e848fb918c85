"""Benchmark of the first seed study at full scale (issue 8).

    .venv/bin/python benchmarks/approximation.py [--baseline runs/shakespeare-char-seed2]
        [--prompts 20000] [--limit N] [--store DIR] [--json out.json] [--out DIR]

On the built-in ``shakespeare-char``: all unique 10-character substrings of TinyShakespeare
(858,923) -> ``lamina.store.collect`` of every block's ``mlp_out`` at the last position ->
``lamina.analyses.approximation`` on 20,000 prompts drawn from the stored strings (thresholds
and weights fitted on 500 other prompts) -> Hellinger distances with and without each
prompt's own string; optionally the baseline distance to a model trained with another seed
(its forward pass is counted in "model distributions").

Reports the wall time of each stage and its share, the peak resident memory of the process,
and the ratio of the similarity stage to its matmul floor: bare block-wise ``torch.mm`` of the
same normalised vectors over the same pairs (tuning and evaluation), with the same block size
and the same two single-threaded workers. ``--limit`` takes the first N characters of the corpus
only (a quick check); an existing complete store at ``--store`` is reused unless ``--fresh``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import resource
import shutil
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

import lamina
from lamina import store as lstore
from lamina.corpus import tinyshakespeare

BLOCK = 2048
# the module (lamina.analyses exports a function of the same name)
approx_mod = importlib.import_module("lamina.analyses.approximation")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class Timers:
    """Wall time spent inside chosen functions of the approximation module."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.pairs = 0
        self.products = 0  # thresholds x pairs: the comparisons behind the sums

    def wrap(self, name: str, fn, count=None):
        def inner(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - t0
                if count is not None:
                    count(*args, **kwargs)
        return inner


def matmul_floor(store: lstore.Store, sites: list[str], n_queries: int, workers: int = 2
                 ) -> float:
    """Seconds of bare block-wise products of ``n_queries`` unit vectors against every stored
    row of every site (normalised blocks read from the store, as the engine reads them)."""
    q = torch.nn.functional.normalize(torch.randn(n_queries, store[sites[0]].shape[1]), dim=1)
    n = len(store)
    jobs = [(s, r, c) for s in sites for r in range(0, n_queries, BLOCK)
            for c in range(0, n, BLOCK)]

    def run(part):
        for site, r, c in part:
            y = torch.nn.functional.normalize(store[site][c : c + BLOCK].float(), dim=1)
            torch.mm(q[r : r + BLOCK], y.T)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, [jobs[i::workers] for i in range(workers)]))
    finally:
        torch.set_num_threads(threads)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shakespeare-char")
    ap.add_argument("--baseline", help="a model trained with another seed (lamina train --seed)")
    ap.add_argument("--prompts", type=int, default=20_000)
    ap.add_argument("--tune", type=int, default=500)
    ap.add_argument("--limit", type=int, help="only the first N characters of the corpus")
    ap.add_argument("--store", type=Path, default=Path("/tmp/lamina-bench-approximation/store"))
    ap.add_argument("--fresh", action="store_true", help="delete the store first")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out", type=Path, help="save the result (table, summary, figure) here")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()

    stages: dict[str, float] = {}
    t_all = time.perf_counter()
    model = lamina.load(args.model)
    sites = [f"blocks.{b}.hook_mlp_out" for b in range(model.n_layers)]

    t0 = time.perf_counter()
    text = tinyshakespeare()
    sub = lstore.substrings(text[: args.limit] if args.limit else text, 10)
    stages["substrings"] = time.perf_counter() - t0

    if args.fresh and args.store.exists():
        shutil.rmtree(args.store)
    t0 = time.perf_counter()
    store = lstore.collect(model, sub, sites, args.store, dtype=args.dtype)
    stages["capture + store"] = time.perf_counter() - t0
    print(f"{len(store):,} rows stored in {stages['capture + store']:.0f} s")

    timers = Timers()

    def count(x, store_site, weights, grid, **_):
        timers.pairs += len(x) * len(store_site)
        timers.products += len(x) * len(store_site) * len(np.atleast_1d(grid))

    approx_mod.threshold_sums = timers.wrap("similarity", approx_mod.threshold_sums, count)
    approx_mod.fit = timers.wrap("fit", approx_mod.fit)
    approx_mod.next_token_distribution = timers.wrap(
        "model distributions", approx_mod.next_token_distribution)
    approx_mod.next_token_counts = timers.wrap("next-token counts", approx_mod.next_token_counts)
    t0 = time.perf_counter()
    result = approx_mod.approximation(model, store, args.prompts, tune=args.tune,
                                      baseline=args.baseline)
    t_approx = time.perf_counter() - t0
    stages.update({f"approximation: {k}": v for k, v in timers.seconds.items()})
    stages["approximation: prompts' activations, rest"] = t_approx - sum(timers.seconds.values())
    s = result.summary
    for variant in ("with_self", "without_self", "baseline"):
        if variant in s:
            v = s[variant]
            print(f"{variant:>13}: mean {v['mean']:.4f} (std {v['std']:.4f}), "
                  f"{v['n_below_0.2']}/{s['n_prompts']} below 0.2, {v['n_empty']} empty")
    print(f"thresholds {s['thresholds']}, weights {s['weights']}")
    total = time.perf_counter() - t_all
    peak = peak_rss_gib()
    if args.out:
        result.save(args.out)

    floor = matmul_floor(store, sites, args.prompts + args.tune)
    sim_s = timers.seconds["similarity"]
    report = {
        "machine": f"{platform.machine()} {platform.processor()}, {torch.get_num_threads()} "
                   f"threads, torch {torch.__version__}",
        "rows": len(store), "prompts": args.prompts, "tune": args.tune, "blocks": len(sites),
        "stages_s": stages, "total_s": total,
        "shares": {k: v / total for k, v in stages.items()},
        "peak_rss_gib": peak, "pairs": timers.pairs, "pairs_x_thresholds": timers.products,
        "similarity_s": sim_s, "matmul_floor_s": floor, "similarity_over_floor": sim_s / floor,
        "summary": {k: s[k] for k in ("mean_hellinger", "with_self", "without_self",
                                      "thresholds", "weights", "n_tune", "baseline") if k in s},
    }
    print(json.dumps({k: v for k, v in report.items() if k != "summary"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
