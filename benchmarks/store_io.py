"""What the store's integrity checks cost (issue 14): collect and a full read of every site,
with this checkout's lamina and with another checkout's (``--baseline-src``, e.g. a worktree of
the commit before the checks), side by side, each in its own subprocess, alternating rounds.

    python benchmarks/store_io.py --baseline-src /path/to/old/src [--chars 100000]

Collect: the built-in ``shakespeare-char`` on every unique 10-character substring of the first
``--chars`` characters of TinyShakespeare, ``mlp_out`` of every block (4 x 256 float32 a row).
Now each shard is also hashed (sha256), fsynced, and its header carries the row range. Read:
every block of every site, as ``norms --store`` reads them; now each shard's header is checked
on first read and each block checked for NaN/inf.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
from pathlib import Path
from lamina import store
from lamina.corpus import tinyshakespeare
chars, out = int(sys.argv[1]), Path(sys.argv[2])
sub = store.substrings(tinyshakespeare()[:chars], 10)
t0 = time.perf_counter()
st = store.collect("shakespeare-char", sub, "mlp_out.*", out, shard_rows=8192, progress=False)
t1 = time.perf_counter()
st = store.open(out)
total = 0.0
for site in st.sites:
    for block in st[site].iter_blocks(8192):
        total += float(block[:, 0].sum())
t2 = time.perf_counter()
print(json.dumps({"rows": len(st), "collect_s": t1 - t0, "read_s": t2 - t1,
                  "bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file())}))
"""


def run(src: Path, chars: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix="lamina-store-io-")) / "st"
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1"}
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, str(chars), str(out)], env=env,
                              capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-src", type=Path, required=True,
                        help="the src/ folder of the lamina to compare with")
    parser.add_argument("--chars", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[1] / "src"
    results: dict[str, list[dict]] = {"baseline": [], "this": []}
    for _ in range(args.rounds):
        for name, src in (("baseline", args.baseline_src), ("this", here)):
            results[name].append(run(src, args.chars))
            print(name, results[name][-1], flush=True)
    best = {k: {m: min(r[m] for r in v) for m in ("collect_s", "read_s")}
            for k, v in results.items()}
    rows = results["this"][0]["rows"]
    print(f"\n{rows:,} rows x 4 sites, best of {args.rounds} rounds")
    for m in ("collect_s", "read_s"):
        print(f"{m:>10}: baseline {best['baseline'][m]:.2f} s, with checks {best['this'][m]:.2f}"
              f" s, ratio {best['this'][m] / best['baseline'][m]:.2f}")
    time.sleep(0)


if __name__ == "__main__":
    main()
