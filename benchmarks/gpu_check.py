"""GPU check (issue 18, part 4): every CUDA path of lamina against the CPU on the same inputs,
and the first seed study's similarity stage timed on the GPU; one prepared run, under 8
minutes on one H200-class GPU with 16 CPU cores:  python benchmarks/gpu_check.py [--device
cuda] [--quick] [--out DIR]

1. capture: ``lamina.load(name, device=DEV, dtype=float32|bfloat16)`` + ``collect`` of every
   block's resid_post/attn_out/mlp_out at every position of 64 TinyShakespeare lines
   (``minilm``, ``shakespeare-char``) against the CPU float32 model;
2. ``scan`` of MiniLM's 30,522 x 384 input embedding (100-bin histogram, top-10, moments, the
   ~2,000 pairs >= 0.86), float32 and fast mode (dtype="bfloat16"), and ``threshold_sums``;
3. the study: the store of the 858,923 unique 10-character substrings of TinyShakespeare
   (``shakespeare-char``, mlp_out of every block) collected on DEV; the approximation's
   threshold sums (500 tuning prompts x 15 thresholds + 20,000 prompts x 1, 4 blocks) timed
   on DEV, and on the CPU for samples (equal sums, speed ratio); ``approximation()`` on DEV.

``--device cpu`` runs it all on the CPU, the "device" side taking the engine's torch backend
(CUDA's path) against the compiled one. A part that raises is a failed comparison and the run
goes on. Writes ``gpu_check.json`` and ``gpu_check.md`` to ``--out`` (default ``$OUT``, else
the working directory) after each part; exit code 1 if any comparison fails.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpu_measures, next to this script
from gpu_measures import (  # noqa: E402
    LIMITS,
    judge,
    scan_agreement,
    sums_agreement,
    tensor_diff,
    worst,
)

SITES = ["blocks.*.hook_resid_post", "blocks.*.hook_attn_out", "blocks.*.hook_mlp_out"]
FITTED = [0.84, 0.98, 0.92, 0.98]  # the study's thresholds fitted on CPU (BENCHMARKS.md)
CPU_MEAN_WITH_SELF = 0.1640  # approximation() on CPU, the full study (BENCHMARKS.md, issue 8)
#: The comparisons of a run (ids); "study/approximation" only on the full corpus.
EXPECTED = ["capture/minilm/float32", "capture/minilm/bfloat16",
            "capture/shakespeare-char/float32", "capture/shakespeare-char/bfloat16",
            "scan/float32", "scan/fast", "threshold_sums/minilm", "ray/collect", "ray/scan",
            "study/store",
            "study/threshold_sums"]


# --------------------------------------------------------------------------- the run
class Run:
    """Comparisons and timings of one run, printed as they come."""

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)
        self.t0 = time.perf_counter()
        self.checks: list[dict[str, Any]] = []
        self.timings: dict[str, float] = {}
        self.info: dict[str, Any] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def timed(self, name: str, fn: Any) -> Any:
        """``fn()``, its wall time (CUDA synchronised) recorded under ``name``."""
        sync = torch.cuda.synchronize if self.device.type == "cuda" else lambda _: None
        sync(self.device)
        t = time.perf_counter()
        out = fn()
        sync(self.device)
        self.timings[name] = time.perf_counter() - t
        print(f"  [{self.elapsed():6.1f} s] {name}: {self.timings[name]:.2f} s", flush=True)
        return out

    def check(self, cid: str, name: str, kind: str, metrics: dict[str, Any]) -> None:
        failed = judge(metrics, kind)
        self.checks.append({"id": cid, "name": name, "kind": kind, "metrics": metrics,
                            "limits": LIMITS[kind], "failed": failed, "passed": not failed})
        shown = ", ".join(f"{m} {metrics[m]:.3g}" for m, _, _ in LIMITS[kind])
        print(f"  [{self.elapsed():6.1f} s] {'ok  ' if not failed else 'FAIL'} {name}: {shown}"
              + (f"  <- {'; '.join(failed)}" if failed else ""), flush=True)

    def fail(self, cid: str, name: str, why: str) -> None:
        self.checks.append({"id": cid, "name": name, "kind": "error", "metrics": {},
                            "limits": [], "passed": False, "failed": [why]})

    def part(self, name: str, fn: Any, *args: Any) -> None:
        """Run one part; an exception becomes a failed comparison and the run goes on."""
        print(name, flush=True)
        try:
            fn(self, *args)
        except Exception as exc:  # noqa: BLE001 - reported, never swallowed silently
            traceback.print_exc()
            self.fail(f"error/{name}", f"{name} raised", f"{type(exc).__name__}: {exc}")
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def capture_part(run: Run, texts: list[str]) -> None:
    import lamina

    for name in ("minilm", "shakespeare-char"):
        ref = lamina.load(name, device="cpu").collect(texts, SITES, positions="all",
                                                      batch_size=16, progress=False)
        for dtype in ("float32", "bfloat16"):
            model = lamina.load(name, device=run.device, dtype=dtype)
            acts = run.timed(f"capture {name} {dtype} on {run.device.type}", lambda m=model:
                             m.collect(texts, SITES, positions="all", batch_size=16,
                                       progress=False))
            run.check(f"capture/{name}/{dtype}", f"{name} {dtype} vs CPU float32",
                      f"capture_{dtype}", worst({s: tensor_diff(t[ref.mask], acts[s][ref.mask])
                                                 for s, t in ref.tensors.items()}))
            del model, acts


def scan_part(run: Run, quick: bool, fast_budget_s: float = 40.0) -> None:
    import lamina
    from lamina.similarity import scan, threshold_sums
    from lamina.weights import embedding_matrix

    w = embedding_matrix(lamina.load("minilm", device="cpu")).float().contiguous()
    w = w[:4096] if quick else w
    opts, dev_opts = dict(bins=100, topk=10, threshold=0.86), dict(device=run.device,
                                                                    backend="torch")
    for dtype in (None, "bfloat16"):  # warm-up: CUDA kernels, the compiled CPU epilogues
        scan(w[:300], **opts, dtype=dtype, device="cpu")
        scan(w[:300], **opts, dtype=dtype, **dev_opts)
    for mode, dtype in (("float32", None), ("fast", "bfloat16")):
        x = w
        if mode == "fast" and not quick:  # bfloat16 products are slow on some CPUs
            t = time.perf_counter()
            scan(w[:4096], **opts, dtype=dtype, device="cpu")
            n = int(4096 * (fast_budget_s / max(time.perf_counter() - t, 1e-3)) ** 0.5)
            x = w[: max(4096, min(len(w), n // 1024 * 1024))]
        ref = run.timed(f"scan {mode}, {len(x)} rows, on CPU",
                        lambda x=x, d=dtype: scan(x, **opts, dtype=d, device="cpu"))
        dev = run.timed(f"scan {mode}, {len(x)} rows, on {run.device.type}",
                        lambda x=x, d=dtype: scan(x, **opts, dtype=d, **dev_opts))
        run.check(f"scan/{mode}", f"scan {mode}, MiniLM embedding {len(x)} x {x.shape[1]}",
                  f"scan_{mode}", {**scan_agreement(ref, dev), "rows": len(x)})
    weights = np.hstack([np.random.default_rng(0).integers(0, 6, (len(w), 8)),
                         np.ones((len(w), 1))])
    q, thr = w[: 512 if quick else 2048], (0.3, 0.5, 0.7, 0.9)
    ref = run.timed("threshold_sums MiniLM on CPU",
                    lambda: threshold_sums(q, w, weights, thr, device="cpu"))
    dev = run.timed(f"threshold_sums MiniLM on {run.device.type}",
                    lambda: threshold_sums(q, w, weights, thr, **dev_opts))
    run.check("threshold_sums/minilm", f"threshold_sums MiniLM {len(q)} x {len(w)}, "
              "4 thresholds", "sums", sums_agreement(ref, dev))


def ray_part(run: Run, quick: bool) -> None:
    """engine="ray" on this machine's device (GPU actors and tasks when it has CUDA): a store
    collected by one Ray worker vs the local collect on the device, and the Ray scan vs the
    CPU scan of the MiniLM embedding."""
    import ray

    import lamina
    from lamina.corpus import sample_lines
    from lamina.ray_runtime import ensure_ray
    from lamina.similarity import scan
    from lamina.store import collect
    from lamina.weights import embedding_matrix

    gpus = 1 if run.device.type == "cuda" else 0
    run.timed("ray: start-up", lambda: ensure_ray(num_gpus=gpus))  # a runtime of this machine
    tmp = Path(tempfile.mkdtemp(prefix="lamina-gpu-ray-"))
    try:
        texts, sites = sample_lines(256 if quick else 4096), ["blocks.*.hook_resid_post"]
        local = run.timed("ray: local collect on the device", lambda: collect(
            lamina.load("minilm", device=run.device), texts, sites, tmp / "local",
            shard_rows=64 if quick else 1024, progress=False))
        on_ray = run.timed("ray: Ray collect (1 worker)", lambda: collect(
            "minilm", texts, sites, tmp / "ray", shard_rows=64 if quick else 1024,
            progress=False, engine="ray", workers=1, gpus_per_worker=gpus))
        run.check("ray/collect", f"Ray collect ({'GPU' if gpus else 'CPU'} worker) vs local "
                  "collect", "capture_float32", worst({s: tensor_diff(local[s][:], on_ray[s][:])
                                                       for s in local.sites}))
        w = embedding_matrix(lamina.load("minilm", device="cpu")).float().contiguous()
        w = w[:4096] if quick else w
        opts = dict(bins=100, topk=10, threshold=0.86)
        ref = run.timed("ray: scan on CPU (local)", lambda: scan(w, **opts, device="cpu"))
        dev = run.timed("ray: scan on Ray", lambda: scan(w, **opts, engine="ray"))
        run.info["ray_scan_meta"] = {k: v for k, v in dev.meta.items() if k.startswith("ray")}
        run.check("ray/scan", f"Ray scan ({dev.meta.get('ray_device')}) vs CPU scan, "
                  f"{len(w)} rows", "scan_float32", scan_agreement(ref, dev))
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def corpus_text() -> tuple[str, str]:
    """TinyShakespeare from ../shared/data (next to the checkout), else lamina's copy."""
    root = Path(__file__).resolve().parents[1]
    for folder in (root.parent / "shared" / "data", root / "shared" / "data"):
        found = sorted(folder.glob("*[Ss]hakespeare*.txt")) if folder.is_dir() else []
        if found:
            return found[0].read_text("utf-8"), str(found[0])
    from lamina.corpus import tinyshakespeare

    return tinyshakespeare(), "lamina.corpus.tinyshakespeare()"


def study_part(run: Run, args: argparse.Namespace) -> None:
    import lamina
    from lamina import store as lstore
    from lamina.analyses.similar_strings import next_token_counts
    from lamina.similarity import threshold_sums

    approx_mod = importlib.import_module("lamina.analyses.approximation")
    text, where = corpus_text()
    text = text[: args.limit] if args.limit else text
    model = lamina.load("shakespeare-char", device=run.device)
    sites = [f"blocks.{b}.hook_mlp_out" for b in range(model.n_layers)]
    sub = lstore.substrings(text, 10)
    dt, batch = run.device.type, 1024 if run.device.type == "cuda" else 256
    # the capture rate on a sample: a store that would not fit the time budget is cut
    n_probe = min(len(sub), 500 if args.quick else 20_000)
    run.timed("study: capture probe", lambda: model.collect(
        sub.strings[:n_probe], sites, batch_size=batch, progress=False))
    rate = n_probe / run.timings["study: capture probe"]
    if len(sub) / rate * 1.5 > args.collect_budget:
        args.limit = int(len(text) * rate * args.collect_budget / 1.5 / len(sub))
        text = text[: args.limit]
        sub = lstore.substrings(text, 10)
        args.prompts = min(args.prompts, len(sub) - args.tune)  # a very short store
    st = run.info["study"] = {"corpus": where, "chars": len(text), "rows": len(sub),
                              "prompts": args.prompts, "tune": args.tune, "blocks": len(sites),
                              "capture_rows_per_s_device": rate}
    store = run.timed(f"study: collect {len(sub):,} rows on {dt}", lambda: lstore.collect(
        model, sub, sites, args.store, batch_size=batch, progress=False))
    n_cpu = min(len(sub), args.cpu_rows)
    cpu_model = lamina.load("shakespeare-char", device="cpu")
    cpu_acts = run.timed(f"study: capture {n_cpu:,} rows on CPU", lambda: cpu_model.collect(
        sub.strings[:n_cpu], sites, batch_size=256, progress=False))
    st["capture_rows_per_s_cpu"] = n_cpu / run.timings[f"study: capture {n_cpu:,} rows on CPU"]
    run.check("study/store", f"store rows 0..{n_cpu} (collected on {dt}) vs CPU capture",
              "capture_float32", worst({s: tensor_diff(cpu_acts[s], store[s][:n_cpu])
                                        for s in sites}))
    counts = next_token_counts(store.substrings(), model.tokenizer.get_vocab())[: len(store)]
    weights = torch.from_numpy(np.hstack([counts.toarray(), np.ones((len(store), 1))])
                               .astype(np.float32))  # as block_sums passes them, dense once
    pick = np.random.default_rng(1337).choice(len(store), args.prompts + args.tune,
                                              replace=False)
    acts = model.collect([store.strings[i] for i in pick], sites, batch_size=batch,
                         progress=False)
    x, grid = {s: acts[s].float() for s in sites}, approx_mod.THRESHOLD_GRID

    def stage(device: Any, n_eval: int, n_tune: int, backend: str = "auto") -> list:
        out = []
        for s, t in zip(sites, FITTED, strict=True):
            y, tune = store[s].flat(), x[s][args.prompts : args.prompts + n_tune]
            out.append(threshold_sums(x[s][:n_eval], y, weights, [t], device=device,
                                      backend=backend))
            out.append(threshold_sums(tune, y, weights, grid, device=device, backend=backend))
        return out

    name = (f"study: similarity stage ({args.prompts:,} prompts + {args.tune} x {len(grid)} "
            f"thresholds, {len(sites)} blocks) on {dt}")
    dev = run.timed(name, lambda: stage(run.device, args.prompts, args.tune, "torch"))
    # on the CPU: a sample, and a minimal run for the fixed cost of the passes over the store
    k_eval, k_tune = min(args.prompts, args.cpu_prompts), min(args.tune, args.cpu_tune)
    fixed_name = f"study: similarity stage, 1 + 1 x {len(grid)} prompts (fixed cost) on CPU"
    run.timed(fixed_name, lambda: stage("cpu", 1, 1))
    cpu_name = f"study: similarity stage, sample ({k_eval} + {k_tune} x {len(grid)}) on CPU"
    cpu = run.timed(cpu_name, lambda: stage("cpu", k_eval, k_tune))
    dev_sample = [d[:k_eval] if i % 2 == 0 else d[:k_tune] for i, d in enumerate(dev)]
    run.check("study/threshold_sums", f"the study's threshold_sums, sample ({k_eval} + "
              f"{k_tune} prompts)", "sums", sums_agreement(
                  np.concatenate([c.ravel() for c in cpu]),
                  np.concatenate([d.ravel() for d in dev_sample])))
    per_row = len(sites) * len(store)  # pair-thresholds of one prompt per threshold
    work_dev, work_cpu, work_1 = (per_row * (e + t * len(grid)) for e, t in (
        (args.prompts, args.tune), (k_eval, k_tune), (1, 1)))
    t_1, t_cpu = run.timings[fixed_name], run.timings[cpu_name]
    st.update({"pair_thresholds": work_dev, "device_s": run.timings[name],
               "device_s_full_store": run.timings[name] * 858_923 / len(store),
               "cpu_fixed_s": t_1,  # a line through the two CPU runs, by pair-thresholds
               "cpu_s_extrapolated": t_1 + max(t_cpu - t_1, 0) * (work_dev - work_1) / max(
                   work_cpu - work_1, 1)})
    st["speed_ratio_cpu_over_device"] = st["cpu_s_extrapolated"] / st["device_s"]
    if run.elapsed() > args.budget - 60:
        st["approximation"] = "skipped: time budget"
        return
    result = run.timed(f"study: approximation() end to end on {dt}", lambda: approx_mod
                       .approximation(model, store, args.prompts, tune=args.tune,
                                      progress=False))
    s = result.summary
    st["approximation"] = {k: s[k] for k in ("mean_hellinger", "thresholds", "weights")}
    if not args.limit and args.prompts == 20_000 and args.tune == 500:
        run.check("study/approximation", "approximation() mean Hellinger (with self) vs CPU",
                  "approximation", {"mean_diff": abs(s["with_self"]["mean"] -
                                                     CPU_MEAN_WITH_SELF),
                                    "mean": s["with_self"]["mean"]})


def report(run: Run) -> str:
    """The comparisons and timings as markdown."""
    m = run.info["machine"]
    lines = [f"Machine: {m['gpu']}, {m['cpu']}, torch {m['torch']} (CUDA {m['cuda']}); "
             f"device {run.device}; total {run.elapsed():.0f} s.", "",
             "| comparison | measures (limits) | pass |", "|---|---|---|"]
    for c in run.checks:
        shown = ", ".join(f"{n} {c['metrics'][n]:.3g} ({op} {b:g})" for n, op, b in c["limits"])
        lines.append(f"| {c['name']} | {shown or '; '.join(c['failed'])} | "
                     f"{'yes' if c['passed'] else '**NO**'} |")
    lines += ["", "| step | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in run.timings.items()]
    st = run.info.get("study", {})
    if "capture_rows_per_s_cpu" in st:
        lines += ["", f"Capture of the store's strings: {st['capture_rows_per_s_device']:,.0f} "
                  f"rows/s on {run.device}, {st['capture_rows_per_s_cpu']:,.0f} on the CPU."]
    if "speed_ratio_cpu_over_device" in st:
        lines += ["", f"Similarity stage: {st['device_s']:.1f} s on {run.device} for "
                  f"{st['rows']:,} stored rows ({st['device_s_full_store']:.1f} s scaled to "
                  f"858,923), against {st['cpu_s_extrapolated']:.0f} s on the CPU "
                  f"(a line through two CPU samples, by pair-thresholds): "
                  f"{st['speed_ratio_cpu_over_device']:.1f}x."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--quick", action="store_true", help="small inputs (a smoke run)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "."))
    ap.add_argument("--budget", type=float, default=420.0,
                    help="seconds; the end-to-end approximation is skipped past it - 60")
    ap.add_argument("--collect-budget", type=float, default=150.0,
                    help="seconds for the store; a slower device gets a shorter corpus")
    args = ap.parse_args(argv)
    q = args.quick
    args.limit, args.cpu_rows = (3000, 300) if q else (None, 5000)
    args.prompts, args.tune = (100, 20) if q else (20_000, 500)
    args.cpu_prompts, args.cpu_tune = (30, 5) if q else (1000, 40)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {args.device}: this machine has no CUDA device (torch "
              f"{torch.__version__}); run with --device cpu to test the script.", file=sys.stderr)
        return 2
    run, dev = Run(args.device), torch.device(args.device)
    run.info["machine"] = {
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "none (CPU run)",
        "cpu": f"{os.cpu_count()}-core {platform.machine()} {platform.processor()}".strip(),
        "device": str(dev), "cuda": torch.version.cuda, "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32)}
    print(json.dumps(run.info["machine"]), flush=True)
    from lamina.corpus import sample_lines

    def save(final: bool = False) -> bool:  # after every part: a run cut short keeps its part
        if final:
            ids = {c["id"] for c in run.checks}
            for cid in [c for c in EXPECTED if c not in ids]:
                run.fail(cid, f"{cid} missing", "not run (see the error above)")
        run.info.update(elapsed_s=run.elapsed(), args={k: str(v) for k, v in vars(args).items()})
        passed = all(c["passed"] for c in run.checks)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.md").write_text(report(run) + "\n")
        (args.out / "gpu_check.json").write_text(json.dumps(
            {**run.info, "passed": passed, "complete": final, "checks": run.checks,
             "timings_s": run.timings}, indent=1, default=float))
        return passed

    tmp = Path(tempfile.mkdtemp(prefix="lamina-gpu-check-"))
    args.store = tmp / "store"
    try:
        for name, fn, arg in (("capture", capture_part, sample_lines(8 if q else 64)),
                              ("scans", scan_part, q), ("ray", ray_part, q),
                              ("study", study_part, args)):
            run.part(name, fn, arg)
            save()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    passed = save(final=True)
    print("\n" + report(run))
    print(f"\n{'PASSED' if passed else 'FAILED'}: {sum(c['passed'] for c in run.checks)} of "
          f"{len(run.checks)} comparisons; wrote {args.out / 'gpu_check.json'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
