"""Scale-out benchmark (issue 18): lamina on Ray against the single-process engines at equal
cores, and a cost model of the first seed study's similarity stage on N GPUs.

    python benchmarks/scale_out.py [--quick] [--rounds 2] [--json F] [--md F]
        [--gpu-json gpu_check.json] [--bandwidth 10e9]

On this machine, side by side in one run (Ray started here with ``num_cpus=2``; the local
engines with 2 torch threads; rounds alternate local and Ray):

(a) collection: ``lamina.store.collect(..., engine="ray", workers=2, cpus_per_worker=1)`` vs
    ``collect(...)`` of the first 200,000 unique 10-character substrings of TinyShakespeare
    with ``shakespeare-char`` (mlp_out of its 4 blocks, 10,000 rows a shard); the stores
    must be bit-identical (shard boundaries and every tensor);
(b) scans: ``scan(..., engine="ray")`` vs ``scan(...)`` (100-bin histogram + top-10) of
    MiniLM's 30,522 x 384 input embedding and of the 200,000-row store (last block), and
    ``threshold_sums`` of 2,048 stored rows against the store over the study's 15 thresholds;
    results must be equal. Overhead = Ray / local (acceptance: at most 1.15). Ray's start-up
    is measured apart; "cold" is Ray's first call of a kind (worker processes importing),
    "warm" the best later one;
(c) cost model: per-task overhead (empty task; a task given a band of the real size and
    returning a partial of the real size), object-store put rate, the driver's rate of
    reading and normalising store rows, and the bytes a Ray run moves, combined with a GPU
    throughput (from ``--gpu-json``, the output of benchmarks/gpu_check.py, else a stated
    assumption) into the expected time of the study's similarity stage on N GPUs.

Writes a markdown table (stdout, ``--md``) and JSON (``--json``). ``--quick``: 5,000 strings,
8,192 MiniLM rows (a smoke run).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# the study's similarity stage (BENCHMARKS.md, issue 8): 4 blocks of shakespeare-char
# (d 256), 858,923 stored strings, 65 next characters + a column of ones; 20,000 prompts at
# one threshold, 500 tuning prompts at 15
STUDY = dict(blocks=4, rows=858_923, d=256, m=66, calls=[(20_000, 1), (500, 15)])
GPU_BLOCK = 8192  # rows per block of a CUDA task (the engine's default for 8 GiB)
ASSUMED_GPU_RATE = 2e10  # pair-thresholds/s of one GPU, if no gpu_check JSON is given


def timed(fn: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def compare_rounds(name: str, local: Any, ray_fn: Any, rounds: int, same: Any) -> dict:
    """``rounds`` alternating rounds (local, Ray; then Ray, local; ...). The first Ray call is
    "cold", the others "warm"; ``same(a, b)`` checks the two results are equal."""
    t_local, t_ray, equal = [], [], True
    for r in range(rounds):
        order = [("local", local), ("ray", ray_fn)]
        results = {}
        for kind, fn in order if r % 2 == 0 else order[::-1]:
            results[kind], s = timed(fn)
            (t_local if kind == "local" else t_ray).append(s)
        equal = equal and bool(same(results["local"], results["ray"]))
        print(f"  {name} round {r + 1}: local {t_local[-1]:.2f} s, ray {t_ray[-1]:.2f} s",
              flush=True)
    warm = min(t_ray[1:]) if len(t_ray) > 1 else None
    best_local = min(t_local)
    return {"task": name, "local_s": t_local, "ray_s": t_ray, "ray_cold_s": t_ray[0],
            "ray_warm_s": warm, "equal": equal,
            "overhead_cold": t_ray[0] / best_local,
            "overhead_warm": None if warm is None else warm / best_local,
            "overhead_per_round": [b / a for a, b in zip(t_local, t_ray, strict=True)]}


def same_store(a: Any, b: Any) -> bool:
    """Two stores with the same shard boundaries and bit-identical tensors (the shards' bytes
    differ: each holds its store's id)."""
    bounds = [[(sh["start"], sh["stop"]) for sh in st.shards] for st in (a, b)]
    return bounds[0] == bounds[1] and a.sites == b.sites and all(
        torch.equal(x, y) for site in a.sites
        for x, y in zip(a.iter_blocks(site), b.iter_blocks(site), strict=True))


def same_scan(a: Any, b: Any) -> bool:
    """Identical counts and top-k values; moments to rounding."""
    return (a.count == b.count and np.array_equal(a.counts, b.counts)
            and np.allclose(a.topk_values, b.topk_values, rtol=0, atol=1e-6, equal_nan=True)
            and abs(a.mean - b.mean) <= 1e-9 and abs(a.std - b.std) <= 1e-9)


def collection(args: argparse.Namespace, tmp: Path, strings: list[str]) -> tuple[dict, Any]:
    from lamina.store import collect

    sites = [f"blocks.{b}.hook_mlp_out" for b in range(STUDY["blocks"])]
    runs = iter(range(1000))

    def run(engine: str) -> Any:
        out = tmp / f"store-{engine}-{next(runs)}"
        kw = dict(engine="ray", workers=2, cpus_per_worker=1) if engine == "ray" else {}
        return collect("shakespeare-char", strings, sites, out, shard_rows=args.shard_rows,
                       progress=False, **kw)

    kept: list[Any] = []

    def same(a: Any, b: Any) -> bool:
        ok = same_store(a, b)
        kept.append(a)
        shutil.rmtree(b.path, ignore_errors=True)  # keep one store for the scans
        for old in kept[:-1]:
            shutil.rmtree(old.path, ignore_errors=True)
        return ok

    res = compare_rounds(f"collect {len(strings):,} strings", lambda: run("local"),
                         lambda: run("ray"), args.rounds, same)
    res["rows_per_s_local"] = len(strings) / min(res["local_s"])
    return res, kept[-1]


def scans(args: argparse.Namespace, store: Any) -> tuple[list[dict], dict]:
    import lamina
    from lamina.analyses.approximation import THRESHOLD_GRID
    from lamina.similarity import scan, threshold_sums
    from lamina.weights import embedding_matrix

    w = embedding_matrix(lamina.load("minilm", device="cpu")).float().contiguous()
    w = w[: args.minilm_rows] if args.minilm_rows else w
    scan(w[:300], bins=100, topk=10)  # the compiled epilogue, loaded once in this process
    site = f"blocks.{STUDY['blocks'] - 1}.hook_mlp_out"
    y = store[site]
    out = []
    for name, x in ((f"scan MiniLM {len(w):,} x {w.shape[1]}", w),
                    (f"scan store {len(y):,} x {y.shape[1]}", y)):
        out.append(compare_rounds(name, lambda x=x: scan(x, bins=100, topk=10),
                                  lambda x=x: scan(x, bins=100, topk=10, engine="ray"),
                                  args.rounds, same_scan))
    n_q = min(2048, len(y))
    q = y[np.sort(np.random.default_rng(0).choice(len(y), n_q, replace=False))]
    weights = torch.ones(len(y), STUDY["m"])
    metas: list[dict] = []

    def ray_sums() -> np.ndarray:
        from lamina.similarity import _ray_engine

        got: dict = {}
        original = _ray_engine.sums_tiles

        def spy(*a: Any, **k: Any) -> Any:
            res, meta = original(*a, **k)
            got.update(meta)
            return res, meta

        _ray_engine.sums_tiles = spy  # read the run's meta (tasks, bytes moved)
        try:
            return threshold_sums(q, y, weights, THRESHOLD_GRID, engine="ray")
        finally:
            _ray_engine.sums_tiles = original
            metas.append(got)

    out.append(compare_rounds(
        f"threshold_sums {n_q:,} x {len(y):,}, {len(THRESHOLD_GRID)} thresholds",
        lambda: threshold_sums(q, y, weights, THRESHOLD_GRID), ray_sums, args.rounds,
        lambda a, b: np.array_equal(a, b)))
    return out, {"sums_meta": metas[-1], "sums_shape": [n_q, len(y), len(THRESHOLD_GRID)]}


def constants(store: Any, ray: Any) -> dict[str, float]:
    """Per-task overhead, band and partial transfer costs, put rate, preparation rate."""
    from lamina.similarity._prepare import prepare_inputs
    from lamina.similarity._ray_tiles import plan_tiles

    @ray.remote(num_cpus=1)
    def empty() -> int:
        return 0

    @ray.remote(num_cpus=1)
    def band_task(band: np.ndarray, nbytes: int) -> np.ndarray:
        return np.zeros(nbytes // 8, dtype=np.float64) + float(band[0, 0])

    ray.get([empty.remote() for _ in range(20)])  # worker processes started
    lat = []
    for _ in range(30):
        _, s = timed(lambda: ray.get(empty.remote()))
        lat.append(s)
    _, burst = timed(lambda: ray.get([empty.remote() for _ in range(300)]))
    # the largest band a task of the study gets on 8 GPUs, and the partial it returns
    q, g = STUDY["calls"][0]
    tiles, _, cols = plan_tiles(q, STUDY["rows"], GPU_BLOCK, STUDY["d"], 8, 1 << 40)
    band_rows = max(c1 - c0 for c0, c1 in cols)
    band = np.random.default_rng(0).random((band_rows, STUDY["d"] + STUDY["m"]),
                                           dtype=np.float32)
    part_bytes = max(t.r1 - t.r0 for t in tiles) * g * STUDY["m"] * 8
    puts = [timed(lambda: ray.put(band)) for _ in range(5)]
    ref = puts[-1][0]
    ray.get(band_task.remote(ref, part_bytes))
    rt = [timed(lambda: ray.get(band_task.remote(ref, part_bytes)))[1] for _ in range(5)]
    puts = [s for _, s in puts]
    # the driver's pass over a store site: read, check, normalise (the engine's own code)
    y = store[f"blocks.{STUDY['blocks'] - 1}.hook_mlp_out"]
    prep = len(y) / statistics.median(timed(lambda: prepare_inputs(
        y, None, "cosine", None, None, "cpu", None, False, None, None))[1] for _ in range(3))
    return {"empty_task_latency_s": statistics.median(lat), "empty_task_burst_s": burst / 300,
            "band_bytes": band.nbytes, "partial_bytes": part_bytes,
            "band_task_s": statistics.median(rt), "put_s": statistics.median(puts),
            "put_bytes_per_s": band.nbytes / statistics.median(puts),
            "band_task_extra_s": statistics.median(rt) - statistics.median(lat),
            "prepare_rows_per_s": prep}


def cost_model(c: dict[str, float], gpu_rate: float, bandwidth: float) -> dict[str, Any]:
    """Expected seconds of the study's similarity stage on N GPUs, one per node:
    T(N) = P + K(N) t + (B_put + B_in(N) + B_out(N)) / BW + W / (N R) with the terms below
    (no overlap of transfers and compute: an upper bound)."""
    from lamina.similarity._ray_tiles import plan_tiles

    s = STUDY
    work = s["blocks"] * s["rows"] * sum(q * g for q, g in s["calls"])
    # per call the driver passes over the site twice: a site (880 MB) over half its budget
    # (1 GiB) is not cached, so it is validated in one pass and read again band by band
    passes = 2 * s["blocks"] * len(s["calls"])
    prep = passes * s["rows"] / c["prepare_rows_per_s"]
    put_bytes = s["blocks"] * sum((q + s["rows"]) * s["d"] * 4 + s["rows"] * s["m"] * 4
                                  for q, _ in s["calls"])
    # one node: bands and partials move through shared memory, at the rate of the band task
    local_bw = (c["band_bytes"] + c["partial_bytes"]) / max(c["band_task_extra_s"], 1e-6)
    table = []
    for n in (1, 2, 4, 8, 16):
        k = b_in = b_out = 0
        for q, g in s["calls"]:
            tiles, _, _ = plan_tiles(q, s["rows"], GPU_BLOCK, s["d"], n, 1 << 40)
            k += s["blocks"] * len(tiles)
            b_in += s["blocks"] * sum((t.r1 - t.r0 + t.c1 - t.c0) * s["d"] * 4
                                      + (t.c1 - t.c0) * s["m"] * 4 for t in tiles)
            b_out += s["blocks"] * sum((t.r1 - t.r0) * g * s["m"] * 8 for t in tiles)
        terms = {"prepare_s": prep, "tasks_s": k * c["empty_task_burst_s"],
                 "put_s": put_bytes / c["put_bytes_per_s"],
                 "transfer_s": (b_in + b_out) / (bandwidth if n > 1 else local_bw),
                 "compute_s": work / (n * gpu_rate)}
        table.append({"gpus": n, "tasks": k, "bytes_in": b_in, "bytes_out": b_out, **terms,
                      "total_s": sum(terms.values())})
    formula = (f"T(N) = P + K(N) * t + B_put / r_put + (B_in(N) + B_out(N)) / BW + W / (N * R)"
               f", P = {prep:.1f} s ({passes} passes x {s['rows']:,} "
               f"rows at {c['prepare_rows_per_s']:,.0f} rows/s on the driver), t = "
               f"{c['empty_task_burst_s'] * 1e3:.2f} ms a task, B_put = {put_bytes / 1e9:.2f} GB"
               f" at r_put = {c['put_bytes_per_s'] / 1e9:.2f} GB/s, BW = {bandwidth / 1e9:.0f} "
               f"GB/s between nodes ({local_bw / 1e9:.1f} GB/s within one, measured), W = "
               f"{work:.3g} pair-thresholds, R = {gpu_rate:.3g} pair-thresholds/s per GPU")
    return {"formula": formula, "work": work, "gpu_rate": gpu_rate, "bandwidth": bandwidth,
            "local_bandwidth": local_bw, "table": table,
            "expected_8_gpus_s": next(r["total_s"] for r in table if r["gpus"] == 8)}


def markdown(r: dict) -> str:
    lines = [f"Machine: {r['machine']}; load average {r['load'][0]:.1f} at the start, "
             f"{r['load'][1]:.1f} at the end. Ray start-up (`ray.init(num_cpus=2)`): "
             f"{r['ray_init_s']:.1f} s.", "",
             "| task | local, s (2 threads) | Ray cold, s | Ray warm, s | warm / local | "
             "cold / local | equal |", "|---|---:|---:|---:|---:|---:|---|"]
    for t in r["tasks"]:
        warm = "" if t["ray_warm_s"] is None else f"{t['ray_warm_s']:.2f}"
        ow = "" if t["overhead_warm"] is None else f"**{t['overhead_warm']:.2f}**"
        lines.append(f"| {t['task']} | {min(t['local_s']):.2f} | {t['ray_cold_s']:.2f} | "
                     f"{warm} | {ow} | {t['overhead_cold']:.2f} | {t['equal']} |")
    c = r["constants"]
    lines += ["", f"Per task: empty round trip {c['empty_task_latency_s'] * 1e3:.2f} ms "
              f"(in a burst of 300: {c['empty_task_burst_s'] * 1e3:.2f} ms each); a task "
              f"given a band of {c['band_bytes'] / 2**20:.0f} MiB (in the object store) and "
              "returning "
              f"{c['partial_bytes'] / 2**20:.1f} MiB: {c['band_task_s'] * 1e3:.1f} ms; put "
              f"{c['put_bytes_per_s'] / 1e9:.2f} GB/s; "
              f"reading + normalising store rows {c['prepare_rows_per_s']:,.0f} rows/s.", "",
              f"Cost model ({r['model']['gpu_rate_source']}): {r['model']['formula']}. "
              f"Expected time of the study's similarity stage on 8 GPUs (one per node): "
              f"**{r['model']['expected_8_gpus_s']:.1f} s**.", "",
              "| GPUs | tasks | GB in | GB out | P, s | tasks, s | put, s | transfer, s | "
              "compute, s | total, s |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in r["model"]["table"]:
        lines.append(f"| {row['gpus']} | {row['tasks']} | {row['bytes_in'] / 1e9:.2f} | "
                     f"{row['bytes_out'] / 1e9:.3f} | {row['prepare_s']:.1f} | "
                     f"{row['tasks_s']:.2f} | {row['put_s']:.1f} | {row['transfer_s']:.2f} | "
                     f"{row['compute_s']:.2f} | **{row['total_s']:.1f}** |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smaller run (smoke test)")
    ap.add_argument("--rounds", type=int, help="alternating rounds (default 2, quick 1)")
    ap.add_argument("--strings", type=int, help="strings to collect (default 200,000)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    ap.add_argument("--gpu-json", type=Path, help="gpu_check.json: its measured GPU rate")
    ap.add_argument("--bandwidth", type=float, default=10e9,
                    help="bytes/s between nodes (default 10e9, 100 Gb/s networking)")
    args = ap.parse_args()
    args.rounds = args.rounds or 2
    n = args.strings or (5_000 if args.quick else 200_000)
    args.shard_rows = max(1000, n // 20)
    args.minilm_rows = 8192 if args.quick else None
    torch.set_num_threads(2)

    import ray

    from lamina.corpus import tinyshakespeare
    from lamina.ray_runtime import ensure_ray
    from lamina.store import substrings

    report: dict[str, Any] = {
        "machine": f"{os.cpu_count()}-core {platform.machine()} CPU, "
                   f"{'CUDA' if torch.cuda.is_available() else 'no GPU'}, torch "
                   f"{torch.__version__}", "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "quick": args.quick, "rounds": args.rounds}
    load0 = os.getloadavg()[0]
    strings = substrings(tinyshakespeare(), 10).strings[:n]
    tmp = Path(tempfile.mkdtemp(prefix="lamina-scale-out-"))
    # address="local": a new runtime of 2 CPUs even when `ray start` runs on this machine
    # (ray.init would join that one); as quiet as lamina.ray_runtime.ensure_ray starts it
    _, report["ray_init_s"] = timed(lambda: ray.init(
        address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
        logging_level=logging.ERROR))
    ensure_ray()  # lamina's settings (Ray Data quiet) on the runtime started here
    try:
        coll, store = collection(args, tmp, strings)
        tasks, sums_info = scans(args, store)
        report["tasks"] = [coll, *tasks]
        report["sums_ray_meta"] = sums_info
        report["constants"] = constants(store, ray)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    rate, source = ASSUMED_GPU_RATE, f"assumed GPU rate {ASSUMED_GPU_RATE:.3g}"
    if args.gpu_json:
        st = json.loads(args.gpu_json.read_text())["study"]
        rate = st["pair_thresholds"] / st["device_s"]
        gpu = json.loads(args.gpu_json.read_text())["machine"]["gpu"]
        source = (f"GPU rate measured by gpu_check on {gpu}; there the single-process stage "
                  f"took {st['device_s_full_store']:.1f} s for the full store")
    report["model"] = {**cost_model(report["constants"], rate, args.bandwidth),
                       "gpu_rate_source": source}
    report["load"] = [load0, os.getloadavg()[0]]
    text = markdown(report)
    print("\n" + text)
    if args.md:
        args.md.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
