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

SITES = ["blocks.*.hook_resid_post", "blocks.*.hook_attn_out", "blocks.*.hook_mlp_out"]
FITTED = [0.84, 0.98, 0.92, 0.98]  # the study's thresholds fitted on CPU (BENCHMARKS.md)
CPU_MEAN_WITH_SELF = 0.1640  # approximation() on CPU, the full study (BENCHMARKS.md, issue 8)
# Pass limits (measure, "<=" | ">=", bound). float32 differences come from summation order
# (~1e-6 relative); bfloat16 rounds every product to 8 bits of mantissa (~1% after 6 layers).
LIMITS: dict[str, list[tuple[str, str, float]]] = {
    "capture_float32": [("rel_fro", "<=", 1e-3), ("rel_max", "<=", 1e-2),
                        ("min_row_cos", ">=", 0.9999)],  # room for TF32 attention kernels
    "capture_bfloat16": [("rel_fro", "<=", 0.08), ("rel_max", "<=", 0.3),
                         ("min_row_cos", ">=", 0.98)],
    "scan_float32": [("count_diff", "<=", 0), ("hist_moved", "<=", 1e-4),
                     ("mean_diff", "<=", 1e-5), ("std_diff", "<=", 1e-5),
                     ("extreme_diff", "<=", 1e-5), ("topk_recall", ">=", 0.999),
                     ("topk_value_diff", "<=", 2e-5), ("pairs_changed", "<=", 2e-3),
                     ("pair_value_diff", "<=", 2e-5)],
    "scan_fast": [("count_diff", "<=", 0), ("hist_moved", "<=", 1e-3),
                  ("mean_diff", "<=", 1e-4), ("std_diff", "<=", 1e-4),
                  ("extreme_diff", "<=", 8e-3), ("topk_recall", ">=", 0.995),
                  ("pairs_changed", "<=", 2e-3), ("pair_value_diff", "<=", 2e-5)],
    "sums": [("rel_l1", "<=", 1e-5)],
    "approximation": [("mean_diff", "<=", 3e-3)],
}
#: The comparisons of a run (ids); "study/approximation" only on the full corpus.
EXPECTED = ["capture/minilm/float32", "capture/minilm/bfloat16",
            "capture/shakespeare-char/float32", "capture/shakespeare-char/bfloat16",
            "scan/float32", "scan/fast", "threshold_sums/minilm", "study/store",
            "study/threshold_sums"]


# --------------------------------------------------------------------------- measures
def tensor_diff(ref: torch.Tensor, dev: torch.Tensor) -> dict[str, float]:
    """``dev`` against ``ref`` (same shape, vectors on the last axis): largest absolute
    difference, relative Frobenius norm of the difference, largest difference over the largest
    |ref|, and the smallest cosine of corresponding vectors (those of ref that are not zero)."""
    r, d = ref.double().reshape(-1, ref.shape[-1]), dev.double().reshape(-1, ref.shape[-1])
    err, rn = d - r, r.norm(dim=1)
    keep = rn > 0
    cos = (r[keep] * d[keep]).sum(1) / (rn[keep] * d[keep].norm(dim=1)).clamp_min(1e-300)
    return {"max_abs": float(err.abs().max()),
            "rel_fro": float(err.norm() / r.norm().clamp_min(1e-300)),
            "rel_max": float(err.abs().max() / r.abs().max().clamp_min(1e-300)),
            "min_row_cos": float(cos.min()) if len(cos) else 1.0}


def worst(diffs: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The worst value of each measure of :func:`tensor_diff` over sites, and its site."""
    out: dict[str, Any] = {}
    for site, d in diffs.items():
        for key, v in d.items():
            if key not in out or (v < out[key] if key == "min_row_cos" else v > out[key]):
                out[key], out[f"{key}_site"] = v, site
    return out


def topk_agreement(ref_v: np.ndarray, ref_i: np.ndarray, dev_v: np.ndarray,
                   dev_i: np.ndarray, tol: float = 1e-5) -> dict[str, float]:
    """Top-k lists (rows, k), best first: ``id_overlap`` the mean share of common ids;
    ``topk_recall`` the share of dev's values >= ref's k-th value - tol (a tied neighbour
    counts as found); ``topk_value_diff`` the largest difference of the i-th values. Rows
    without neighbours (NaN in ref) are left out."""
    ok = ~np.isnan(ref_v[:, -1])
    rv, ri, dv, di = ref_v[ok], ref_i[ok], dev_v[ok], dev_i[ok]
    k = rv.shape[1]
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(ri, di, strict=True)])
    recall = (np.nan_to_num(dv, nan=-np.inf) >= rv[:, -1:] - tol).sum(1).clip(max=k) / k
    return {"id_overlap": float(overlap), "topk_recall": float(recall.mean()),
            "topk_value_diff": float(np.abs(dv.astype(np.float64) - rv).max())}


def pair_agreement(ref: tuple[np.ndarray, ...], dev: tuple[np.ndarray, ...]) -> dict[str, float]:
    """Thresholded pairs (i, j, value): ``pairs_changed`` = pairs in only one of the two / all
    pairs (0 when both are empty); ``pair_value_diff`` over the common pairs."""
    a = {(int(i), int(j)): float(v) for i, j, v in zip(*ref, strict=True)}
    b = {(int(i), int(j)): float(v) for i, j, v in zip(*dev, strict=True)}
    common, union = a.keys() & b.keys(), len(a.keys() | b.keys())
    return {"pairs": len(a), "pairs_changed": (union - len(common)) / max(union, 1),
            "pair_value_diff": max((abs(a[p] - b[p]) for p in common), default=0.0)}


def scan_agreement(ref: Any, dev: Any) -> dict[str, float]:
    """Histogram, moments, extremes, top-k and pairs of two ScanResults of the same inputs;
    ``hist_moved`` = pairs in another bin / all pairs."""
    out = {"count_diff": abs(ref.count - dev.count),
           "hist_moved": float(np.abs(ref.counts - dev.counts).sum() / 2 / ref.counts.sum()),
           "mean_diff": abs(ref.mean - dev.mean), "std_diff": abs(ref.std - dev.std),
           "extreme_diff": max(abs(ref.min - dev.min), abs(ref.max - dev.max))}
    out.update(topk_agreement(ref.topk_values, ref.topk_indices, dev.topk_values,
                              dev.topk_indices))
    out.update(pair_agreement((ref.pairs_i, ref.pairs_j, ref.pairs_values),
                              (dev.pairs_i, dev.pairs_j, dev.pairs_values)))
    return out


def sums_agreement(ref: np.ndarray, dev: np.ndarray) -> dict[str, float]:
    """threshold_sums outputs: ``rel_l1`` = sum |dev - ref| / sum |ref| (a pair whose float32
    similarity falls on the other side of a threshold moves its weights), ``max_abs``."""
    err = np.abs(dev - ref)
    return {"rel_l1": float(err.sum() / max(np.abs(ref).sum(), 1e-300)),
            "max_abs": float(err.max()), "total": float(np.abs(ref).sum())}


def judge(metrics: dict[str, float], kind: str) -> list[str]:
    """The limits of ``LIMITS[kind]`` that ``metrics`` break (NaN breaks any); empty: passed."""
    failed = []
    for name, op, bound in LIMITS[kind]:
        v = metrics[name]
        if not (v <= bound if op == "<=" else v >= bound):
            failed.append(f"{name} = {v:.3g} (limit {op} {bound:g})")
    return failed


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
                              ("scans", scan_part, q), ("study", study_part, args)):
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
