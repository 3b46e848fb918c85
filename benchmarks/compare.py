"""Comparing representations at scale: lamina's streamed linear measures against their floor
and against the N x N route.

1. All site pairs of 7 sites (d=384) vs 5 sites (d=384) on N random float32 rows fed in
   batches of 512: :class:`StreamedMeasures` (update every batch, then ``values()``) against the
   floor, ONE float32 matmul per batch of the concatenated sides
   (``[B, 7*384]^T @ [B, 5*384]``) plus each site's own Gram, nothing else (and the floor of
   two such products, what ``rsa`` needs on top: its sums are over the unit rows). Also: the largest
   relative difference between the float32-product and float64-product results (the float32
   product must keep 1e-6), and peak memory at N/4 and N rows (each in its own subprocess).
2. One site pair at N rows: lamina vs the N x N route for ``cka`` and ``cka_debiased``, (a)
   platonic-rep's code as written (``K = X X^T``, ``hsic_biased = trace(K H L H)``,
   ``hsic_unbiased`` with ``torch.mm(K~, L~)``: N^3 products) and (b) the cheapest N x N form
   (K and L centred by their row/column means, HSIC as an elementwise sum: N^2 d); results
   compared.
3. Mutual kNN (when ``lamina.analyses.compare.knn`` exists): ``knn_measures`` for one site pair
   vs plain ``lamina.similarity.scan(x, topk=10)`` of both sides.

Usage: ``python benchmarks/compare.py [--quick] [--json out.json]``. Full: N = 100,000 (1),
20,000 (2), 100,000 (3); ``--quick``: 10,000, 2,000, 5,000.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import torch

D, SITES_A, SITES_B, BATCH, POOL = 384, 7, 5, 512, 8
MEASURES = ("cka", "cka_debiased", "rsa", "procrustes", "svcca")
SETS = {"all five": MEASURES, "one product (no rsa)": ("cka", "cka_debiased", "procrustes",
                                                        "svcca"), "cka": ("cka",), "rsa": ("rsa",)}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _pool(seed: int = 0) -> list[tuple[dict, dict]]:
    """POOL distinct batches of correlated float32 rows (cycled: generation is not timed)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(64, (SITES_A + SITES_B) * D, generator=g) / 8
    out = []
    for _ in range(POOL):
        z = torch.randn(BATCH, 64, generator=g)
        rows = torch.randn(BATCH, (SITES_A + SITES_B) * D, generator=g) + z @ mix + 0.5
        a = {f"a{i}": rows[:, i * D:(i + 1) * D].contiguous() for i in range(SITES_A)}
        b = {f"b{j}": rows[:, (SITES_A + j) * D:(SITES_A + j + 1) * D].contiguous()
             for j in range(SITES_B)}
        out.append((a, b))
    return out


def _feed(n: int, pool: list[tuple[dict, dict]]):
    for i, start in enumerate(range(0, n, BATCH)):
        a, b = pool[i % len(pool)]
        m = min(BATCH, n - start)
        yield ({k: v[:m] for k, v in a.items()}, {k: v[:m] for k, v in b.items()})


def floor(n: int, pool, products: int = 1) -> float:
    """One float32 ``[B, D_A]^T @ [B, D_B]`` product per batch plus the own Grams (``products``
    = 2: the same again, the floor of two row transforms, e.g. raw rows and unit rows)."""
    accs = [(torch.zeros(SITES_A * D, SITES_B * D),
             [torch.zeros(D, D) for _ in range(SITES_A + SITES_B)]) for _ in range(products)]
    t0 = time.perf_counter()
    for a, b in _feed(n, pool):
        x, y = torch.cat(list(a.values()), 1), torch.cat(list(b.values()), 1)
        for acc_ab, acc_self in accs:
            acc_ab.addmm_(x.T, y)
            for acc, r in zip(acc_self, [*a.values(), *b.values()], strict=True):
                acc.addmm_(r.T, r)
    return time.perf_counter() - t0


def lamina_run(n: int, pool, measures, product=None) -> tuple[float, float, list[dict], int]:
    from lamina.analyses.compare.sums import StreamedMeasures

    sm = StreamedMeasures({f"a{i}": D for i in range(SITES_A)},
                          {f"b{j}": D for j in range(SITES_B)}, measures, product_dtype=product)
    t0 = time.perf_counter()
    for a, b in _feed(n, pool):
        sm.update(a, b)
    t1 = time.perf_counter()
    values = sm.values()
    return time.perf_counter() - t0, time.perf_counter() - t1, values, sm.nbytes()


def part1(n: int) -> dict:
    pool = _pool()
    lamina_run(BATCH * 2, pool, MEASURES)  # warm-up
    t_floor = min(floor(n, pool) for _ in range(2))
    t_floor2 = min(floor(n, pool, products=2) for _ in range(2))
    rows = []
    for name, measures in SETS.items():  # the faster of two runs, as for the floors
        total, t_values, _, nbytes = min((lamina_run(n, pool, measures) for _ in range(2)),
                                         key=lambda r: r[0])
        rows.append({"measures": name, "seconds": total, "values_seconds": t_values,
                     "ratio_to_floor": total / t_floor,
                     "ratio_to_two_product_floor": total / t_floor2, "sums_mb": nbytes / 2**20})
    n_check = min(n, 20_000)
    from lamina.analyses.compare.sums import MEASURES_LINEAR

    _, _, v32, _ = lamina_run(n_check, pool, MEASURES_LINEAR)
    _, _, v64, _ = lamina_run(n_check, pool, MEASURES_LINEAR, product=torch.float64)
    rel = {}
    for a, b in zip(v32, v64, strict=True):
        r = abs(a["value"] - b["value"]) / max(abs(b["value"]), 1e-12)
        rel[a["measure"]] = max(rel.get(a["measure"], 0.0), r)
    mem = {m: json.loads(subprocess.run(
        [sys.executable, __file__, "--_memory", str(m)], capture_output=True, text=True,
        check=True).stdout) for m in (n // 4, n)}
    return {"n": n, "batch": BATCH, "floor_seconds": t_floor,
            "two_product_floor_seconds": t_floor2, "runs": rows,
            "float32_vs_float64_max_rel": {"n": n_check, **rel}, "memory": mem}


def _status_mb(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _memory(n: int) -> dict:
    """Peak resident memory of one lamina run beyond what was resident before it (the input
    batches, torch, lamina): the peak is reset first (Linux ``clear_refs``)."""
    pool = _pool()
    lamina_run(BATCH, pool, MEASURES)  # allocator and BLAS warm-up
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        base, peak = _status_mb("VmRSS"), "VmHWM"
    except OSError:  # no clear_refs: ru_maxrss, which also holds the start-up peak
        base, peak = _rss_mb(), None
    _, _, _, nbytes = lamina_run(n, pool, MEASURES)
    top = _status_mb(peak) if peak else _rss_mb()
    return {"n": n, "peak_beyond_inputs_mb": top - base, "sums_mb": nbytes / 2**20}


# -- (2) the N x N route, platonic-rep style ------------------------------------------------------
def _hsic_biased(k, l_):  # platonic-rep metrics.py, as written
    h = torch.eye(k.shape[0], dtype=k.dtype) - 1 / k.shape[0]
    return torch.trace(k @ h @ l_ @ h)


def _hsic_unbiased(k, l_):  # platonic-rep metrics.py, as written
    m = k.shape[0]
    kt, lt = k.clone().fill_diagonal_(0), l_.clone().fill_diagonal_(0)
    return ((torch.sum(kt * lt.T)) + (torch.sum(kt) * torch.sum(lt) / ((m - 1) * (m - 2)))
            - (2 * torch.sum(torch.mm(kt, lt)) / (m - 2))) / (m * (m - 3))


def _hsic_unbiased_fast(k, l_):  # the same estimator without the N^3 product
    m = k.shape[0]
    kt, lt = k.clone().fill_diagonal_(0), l_.clone().fill_diagonal_(0)
    return ((kt * lt).sum() + kt.sum() * lt.sum() / ((m - 1) * (m - 2))
            - 2 * (kt.sum(0) @ lt.sum(1)) / (m - 2)) / (m * (m - 3))


def _hsic_centred(k, l_):
    kc = k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()
    return (kc * l_).sum()  # trace(HKH L) = sum(HKH * L)


def nxn(x, y, literal: bool) -> dict[str, float]:
    k, l_ = x @ x.T, y @ y.T
    out = {}
    for name, fn in (("cka", _hsic_biased if literal else _hsic_centred),
                     ("cka_debiased", _hsic_unbiased if literal else _hsic_unbiased_fast)):
        out[name] = float(fn(k, l_) / (torch.sqrt(fn(k, k) * fn(l_, l_)) + 1e-6))
    return out


def literal_at(n: int, n_target: int) -> dict:
    """platonic-rep's code as written at ``n`` rows, and its time extrapolated to ``n_target``
    by its N^3 products (for a target too slow to run here)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, D, generator=g)
    y = torch.tanh(x @ torch.randn(D, D, generator=g) / 20) + 0.3 * torch.randn(n, D, generator=g)
    t0 = time.perf_counter()
    nxn(x, y, True)
    secs = time.perf_counter() - t0
    return {"n": n, "seconds": secs, "extrapolated_n": n_target,
            "extrapolated_seconds": secs * (n_target / n) ** 3}


def part2(n: int, literal_route: bool = True) -> dict:
    from lamina.analyses.compare.sums import StreamedMeasures

    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, D, generator=g)
    y = torch.tanh(x @ torch.randn(D, D, generator=g) / 20) + 0.3 * torch.randn(n, D, generator=g)
    warm = StreamedMeasures({"x": D}, {"y": D}, ["cka", "cka_debiased"])
    warm.update({"x": x[:BATCH]}, {"y": y[:BATCH]})
    warm.values()
    t0 = time.perf_counter()
    sm = StreamedMeasures({"x": D}, {"y": D}, ["cka", "cka_debiased"])
    for i in range(0, n, BATCH):
        sm.update({"x": x[i:i + BATCH]}, {"y": y[i:i + BATCH]})
    ours = {v["measure"]: v["value"] for v in sm.values()}
    t_ours = time.perf_counter() - t0
    out = {"n": n, "lamina_seconds": t_ours, "lamina": ours}
    routes = (("nxn_platonic_rep", True), ("nxn_elementwise", False))
    for route, literal in routes[0 if literal_route else 1:]:
        t0 = time.perf_counter()
        vals = nxn(x, y, literal)
        secs = time.perf_counter() - t0
        out[route] = {"seconds": secs, "ratio": secs / t_ours, "values": vals,
                      "max_abs_diff": max(abs(vals[m] - ours[m]) for m in vals)}
    return out


# -- (3) mutual kNN vs the engine's plain top-k scan ------------------------------------------
def part3(n: int, k: int = 10) -> dict | None:
    try:
        from lamina.analyses.compare.knn import knn_measures
    except ImportError:
        return None
    import lamina.similarity as sim

    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, D, generator=g)
    y = x @ torch.randn(D, D, generator=g) / 20 + torch.randn(n, D, generator=g)
    t0 = time.perf_counter()
    sim.scan(x, topk=k)
    sim.scan(y, topk=k)
    t_scan = time.perf_counter() - t0
    t0 = time.perf_counter()
    vals = knn_measures({"x": x}, {"y": y}, ["mutual_knn"], k)
    t_knn = time.perf_counter() - t0
    return {"n": n, "k": k, "scan_both_sides_seconds": t_scan, "knn_measures_seconds": t_knn,
            "ratio": t_knn / t_scan, "mutual_knn": vals[0]["value"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small N (a smoke run)")
    ap.add_argument("--json", help="write the results to this JSON file")
    ap.add_argument("--no-literal", action="store_true",
                    help="skip platonic-rep's code as written in (2) (N^3: at N=20,000 about "
                         "1.4e14 float32 operations and ~10 GB)")
    ap.add_argument("--literal-at", type=int, default=0,
                    help="also time platonic-rep's code at this N and extrapolate to (2)'s N "
                         "by N^3")
    ap.add_argument("--_memory", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._memory:
        print(json.dumps(_memory(args._memory)))
        return
    n1, n2, n3 = (10_000, 2_000, 5_000) if args.quick else (100_000, 20_000, 100_000)
    res = {"machine": f"{platform.processor() or platform.machine()}, "
                      f"{torch.get_num_threads()} torch threads, torch {torch.__version__}",
           "part1": part1(n1), "part2": part2(n2, not args.no_literal), "part3": part3(n3)}
    if args.literal_at:
        res["part2"]["literal_at"] = lit = literal_at(args.literal_at, n2)
        print(f"(2b) platonic-rep as written at N={lit['n']:,}: {lit['seconds']:.1f} s; "
              f"extrapolated to N={n2:,} by N^3: {lit['extrapolated_seconds']:.0f} s = "
              f"{lit['extrapolated_seconds'] / res['part2']['lamina_seconds']:.0f}x lamina")
    p1 = res["part1"]
    print(f"(1) {SITES_A} x {SITES_B} sites, d={D}, N={p1['n']:,}, batches of {BATCH}; floor "
          f"(one float32 matmul per batch + own Grams): {p1['floor_seconds']:.2f} s; two "
          f"products per batch: {p1['two_product_floor_seconds']:.2f} s")
    print(f"    {'measures':<24}{'seconds':>9}{'values()':>10}{'x floor':>9}{'x floor2':>9}"
          f"{'sums MB':>9}")
    for r in p1["runs"]:
        print(f"    {r['measures']:<24}{r['seconds']:>9.2f}{r['values_seconds']:>10.2f}"
              f"{r['ratio_to_floor']:>9.2f}{r['ratio_to_two_product_floor']:>9.2f}"
              f"{r['sums_mb']:>9.1f}")
    rel = {k: v for k, v in p1["float32_vs_float64_max_rel"].items() if k != "n"}
    print("    float32 vs float64 product, max relative difference: "
          + ", ".join(f"{k} {v:.1e}" for k, v in rel.items()))
    print("    peak memory beyond inputs: " + ", ".join(
        f"N={m['n']:,}: {m['peak_beyond_inputs_mb']:.0f} MB" for m in p1["memory"].values()))
    p2 = res["part2"]
    print(f"(2) one pair, N={p2['n']:,}: lamina {p2['lamina_seconds']:.3f} s")
    for route in ("nxn_platonic_rep", "nxn_elementwise"):
        if route not in p2:
            continue
        r = p2[route]
        print(f"    {route:<18} {r['seconds']:8.2f} s  {r['ratio']:7.1f}x slower, max |diff| "
              f"{r['max_abs_diff']:.1e}")
    p3 = res["part3"]
    if p3:
        print(f"(3) mutual kNN, N={p3['n']:,}, k={p3['k']}: knn_measures "
              f"{p3['knn_measures_seconds']:.2f} s vs scans {p3['scan_both_sides_seconds']:.2f}"
              f" s ({p3['ratio']:.2f}x)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
