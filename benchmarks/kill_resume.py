"""Kill/resume trials of ``collect`` (issue 14): SIGKILL at a random moment, resume, and compare
with an uninterrupted store bit for bit.

The model is the built-in ``shakespeare-char``; the corpus ``--rows`` lines of TinyShakespeare;
``--shard-rows`` rows per shard (several shards per store). An uninterrupted collect, run in a
subprocess like every trial, is the reference. Each trial starts ``collect`` in a subprocess
(even trials through the Python API, odd ones through ``lamina collect``) and kills it with
SIGKILL at a moment drawn uniformly from 2-98% of the reference run's timeline (start-up
included, so some kills land before the first shard, some while strings or shards are
written): the moment is mapped onto the trial's own progress (the same number of committed
shards, then the same time past the last commit), so a busy machine does not shift the kills to
the end. It then runs the same command again to completion (taking over the killed writer's
lock), compares every shard's tensors, the shard boundaries and the strings with the
reference, and runs ``Store.verify()``.

    python benchmarks/kill_resume.py                 # 12 trials
    python benchmarks/kill_resume.py --trials 4 --rows 200 --shard-rows 20
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL = "shakespeare-char"
SITES = ["mlp_out.*", "resid_post.2"]


def command(via: str, corpus: Path, out: Path, shard_rows: int, model: str = MODEL,
            sites: list[str] = SITES) -> list[str]:
    """The collect command of one run, through the Python API or the CLI."""
    if via == "api":
        code = ("import lamina.store as s\n"
                f"s.collect({model!r}, {str(corpus)!r}, {sites!r}, {str(out)!r}, "
                f"shard_rows={shard_rows}, batch_size=16, progress=False)\n")
        return [sys.executable, "-c", code]
    site_args = [a for s in sites for a in ("--site", s)]
    return [sys.executable, "-c", "import sys; from lamina.cli import main; sys.exit(main())",
            "collect", "--model", model, "--corpus", str(corpus), *site_args, "--out",
            str(out), "--shard-rows", str(shard_rows), "--batch-size", "16"]


def _shards_committed(out: Path) -> int:
    try:
        return len(json.loads((out / "manifest.json").read_text())["shards"])
    except (OSError, ValueError, KeyError):
        return 0


def run(cmd: list[str]) -> None:
    """Run a command to completion (raising on failure)."""
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[3:] if len(cmd) > 3 else cmd} failed:\n{done.stderr}")


def timeline(cmd: list[str], out: Path) -> list[float]:
    """Run ``cmd`` to completion; the seconds at which each shard was committed, then its
    end."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0, times = time.perf_counter(), []
    while proc.poll() is None:
        times += [time.perf_counter() - t0] * (_shards_committed(out) - len(times))
        time.sleep(0.01)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{proc.stderr.read()}")
    return [*times, time.perf_counter() - t0]


def kill_and_resume(cmd: list[str], out: Path, *, min_shards: int = 0, delay: float = 0.0,
                    timeout: float = 600.0, resume: Callable[[], object] | None = None) -> dict:
    """Start ``cmd``, SIGKILL it ``delay`` seconds after ``min_shards`` shards are committed
    (after its start for 0), run it again to completion (or call ``resume``, the same collect
    in this process); what happened."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.perf_counter()
    reached = t0 if min_shards == 0 else None
    while proc.poll() is None and time.perf_counter() - t0 < timeout:
        now = time.perf_counter()
        if reached is None and _shards_committed(out) >= min_shards:
            reached = now
        if reached is not None and now - reached >= delay:
            break
        time.sleep(0.005)
    finished_first = proc.poll() is not None
    if not finished_first:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = _shards_committed(out)
    resume() if resume is not None else run(cmd)
    return {"killed_at_s": round(time.perf_counter() - t0, 2), "shards_at_kill": at_kill,
            "killed": not finished_first}


def identical(out: Path, reference: Path) -> list[str]:
    """Differences between the store at ``out`` and the reference (empty: bit-identical)."""
    from safetensors.torch import load_file

    from lamina import store as lstore

    a, b = lstore.open(out), lstore.open(reference)
    a.verify()
    problems = []
    if [(s["start"], s["stop"]) for s in a.shards] != [(s["start"], s["stop"]) for s in b.shards]:
        problems.append("shard boundaries differ")
    if a.strings != b.strings or not a.complete:
        problems.append("strings differ or store incomplete")
    for sa, sb in zip(a.shards, b.shards, strict=False):
        ta, tb = (load_file(str(s.path / "shards" / x["file"])) for s, x in ((a, sa), (b, sb)))
        if ta.keys() != tb.keys() or any(not ta[k].equal(tb[k]) for k in ta):
            problems.append(f"shard {sa['file']} differs")
    if list((out / "shards").glob("*.tmp")) or (out / "collect.lock").exists():
        problems.append("temporary files or the lock were left behind")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--shard-rows", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import random

    from lamina.corpus import tinyshakespeare

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = work / "corpus.txt"
        lines = [ln for ln in tinyshakespeare().splitlines() if ln.strip()][: args.rows]
        corpus.write_text("\n".join(lines) + "\n")
        reference = work / "reference"
        times = timeline(command("api", corpus, reference, args.shard_rows), reference)
        print(f"reference: {args.rows} rows, {len(times) - 1} shards, first committed after "
              f"{times[0]:.1f} s, done after {times[-1]:.1f} s", flush=True)
        n_ok = n_killed = 0
        for i in range(args.trials):
            via = "api" if i % 2 == 0 else "cli"
            out = work / f"trial{i}"
            moment = rng.uniform(0.02, 0.98) * times[-1]
            k = sum(t <= moment for t in times[:-1])
            delay = moment - (times[k - 1] if k else 0.0)
            info = kill_and_resume(command(via, corpus, out, args.shard_rows), out,
                                   min_shards=k, delay=delay)
            problems = identical(out, reference)
            n_ok += not problems
            n_killed += info["killed"]
            print(f"trial {i:2d} {via}: kill {delay:5.2f} s after shard {k} "
                  f"({'killed' if info['killed'] else 'had finished'} with "
                  f"{info['shards_at_kill']} shards committed) -> "
                  + ("bit-identical" if not problems else "; ".join(problems)), flush=True)
        print(f"{args.trials} trials, {n_ok} bit-identical ({n_killed} killed mid-run)")
        sys.exit(0 if n_ok == args.trials else 1)


if __name__ == "__main__":
    main()
