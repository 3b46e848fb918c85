"""Capture benchmark (issue 3): tokens/s and peak memory of ``Model.collect`` against a plain
Hugging Face forward with ``output_hidden_states=True`` and against nnsight, on ``minilm``.

Every method runs the same inputs (``--batches`` batches of ``--batch-size`` TinyShakespeare
sequences of exactly ``--seq`` tokens: [CLS] + text + [SEP]) and keeps six per-block tensors per
token (all positions) or per input (last position):

* ``hf``: ``model(input_ids, attention_mask, output_hidden_states=True)``, keeping
  ``hidden_states[1:]`` of every batch (last position: gathered and copied, batch outputs freed);
* ``lamina``: ``collect(ids, "blocks.*.hook_resid_post", positions=...)``;
* ``nnsight``: ``NNsight(hf_model).trace(...)`` saving ``encoder.layer[i].output`` (last
  position: ``output[:, -1].clone()``).

Each method runs in its own subprocess (so peak RSS is its own), rounds interleave the methods
(so CPU noise from other processes falls on all of them alike), each subprocess warms up on one
batch and then times ``--passes`` full passes. Reported: tokens/s from the median pass, process
CPU time of the median pass, peak RSS during the first timed pass (VmHWM after resetting it
through /proc/self/clear_refs) and that peak minus the RSS once the model and inputs were loaded.

    python benchmarks/capture.py                      # print the table
    python benchmarks/capture.py --write BENCHMARKS.md  # and (re)write its "Capture" section
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SECTION = "## Capture (issue 3)"
SITES = "blocks.*.hook_resid_post"
METHODS = {
    "hf-all": "plain HF forward, `output_hidden_states=True`, keep `hidden_states[1:]`",
    "lamina-all": f'`collect(ids, "{SITES}", positions="all")`',
    "nnsight-all": "`NNsight(hf_model).trace`, save each `encoder.layer[i].output`",
    "hf-last": "plain HF forward, `output_hidden_states=True`, keep last position of each",
    "lamina-last": f'`collect(ids, "{SITES}", positions="last")`',
    "nnsight-last": "`NNsight(hf_model).trace`, save `encoder.layer[i].output[:, -1].clone()`",
}


# -- memory -----------------------------------------------------------------------------------
def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# -- inputs -----------------------------------------------------------------------------------
def make_inputs(n: int, seq: int) -> torch.Tensor:
    """``n`` sequences of exactly ``seq`` minilm tokens of TinyShakespeare: [CLS] text [SEP]."""
    import torch
    import transformers

    import lamina
    from lamina.corpus import tinyshakespeare

    tok = transformers.AutoTokenizer.from_pretrained(str(lamina.BUILTINS["minilm"]()))
    tok.model_max_length = 1 << 30  # the whole text is tokenized, then cut into sequences
    body = seq - 2
    text = tinyshakespeare()
    ids: list[int] = []
    chunk = 200_000
    for start in range(0, len(text), chunk):
        ids += tok(text[start : start + chunk], add_special_tokens=False)["input_ids"]
        if len(ids) >= n * body:
            break
    if len(ids) < n * body:
        raise SystemExit(f"TinyShakespeare has {len(ids)} tokens, fewer than {n * body}.")
    rows = torch.tensor(ids[: n * body]).view(n, body)
    cls = torch.full((n, 1), tok.cls_token_id)
    sep = torch.full((n, 1), tok.sep_token_id)
    return torch.cat([cls, rows, sep], dim=1)


# -- the methods (run in a child process) -----------------------------------------------------
def _batches(ids, batch_size):
    import torch

    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        yield chunk, torch.ones_like(chunk)


def _hf(model, ids, batch_size, last):
    import torch

    kept = []
    with torch.inference_mode():
        for chunk, mask in _batches(ids, batch_size):
            out = model.hf_model(input_ids=chunk, attention_mask=mask, output_hidden_states=True)
            hidden = out.hidden_states[1:]
            if last:
                rows, pick = torch.arange(len(chunk)), mask.sum(1) - 1
                kept.append(torch.stack([h[rows, pick] for h in hidden], dim=1))
            else:
                kept.append(hidden)
            del out, hidden
    return kept


def _lamina(model, ids, batch_size, last):
    return model.collect(
        ids, SITES, positions="last" if last else "all", batch_size=batch_size, progress=False
    )


def _nnsight(traced, n_layers, ids, batch_size, last):
    import torch

    kept = []
    with torch.inference_mode():
        for chunk, mask in _batches(ids, batch_size):
            saved = []
            with traced.trace(chunk, attention_mask=mask):
                for i in range(n_layers):
                    out = traced.encoder.layer[i].output
                    saved.append(out[:, -1].clone().save() if last else out.save())
            kept.append(saved)
    return kept


def child(method: str, ids_path: str, batch_size: int, passes: int, threads: int) -> dict:
    import torch

    import lamina

    if threads:
        torch.set_num_threads(threads)

    model = lamina.load("minilm", device="cpu")
    ids = torch.load(ids_path)
    family, last = method.split("-")
    last = last == "last"
    if family == "hf":
        def run():
            return _hf(model, ids, batch_size, last)
    elif family == "lamina":
        def run():
            return _lamina(model, ids, batch_size, last)
    else:
        import warnings

        import nnsight

        warnings.filterwarnings("ignore", module="nnsight")
        traced = nnsight.NNsight(model.hf_model)

        def run():
            return _nnsight(traced, model.n_layers, ids, batch_size, last)

    gc.collect()
    loaded_kb = _status_kb("VmRSS")
    warm = ids[:batch_size]
    if family == "hf":
        _hf(model, warm, batch_size, last)
    elif family == "lamina":
        _lamina(model, warm, batch_size, last)
    else:
        _nnsight(traced, model.n_layers, warm, batch_size, last)
    gc.collect()
    reset = _reset_peak()
    times, cpu, peak_kb = [], [], None
    for i in range(passes):
        t0, c0 = time.perf_counter(), time.process_time()
        result = run()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        if i == 0 and reset:
            # the first pass only: memory freed by a pass is not always reusable by the next
            # one (allocator fragmentation), which would blur a single call's peak
            peak_kb = _status_kb("VmHWM")
        del result
        gc.collect()
    import resource

    return {
        "method": method,
        "times": times,
        "cpu": cpu,
        "tokens": ids.numel(),
        "loaded_kb": loaded_kb,
        "peak_kb": peak_kb,
        "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "threads": torch.get_num_threads(),
    }


# -- the driver --------------------------------------------------------------------------------
def _nnsight_available() -> str | None:
    try:
        import nnsight  # noqa: F401
    except ImportError as err:
        return f"nnsight is not installed ({err})"
    return None


#: glibc raises its mmap threshold as large blocks are freed, so later tensors land in the heap
#: and freed holes between kept tensors inflate RSS by an amount that varies run to run. A fixed
#: threshold keeps every large tensor in its own mapping: RSS then follows the tensors.
FIXED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def _child_run(method: str, path: str, args: argparse.Namespace, passes: int, env: dict) -> dict:
    cmd = [
        sys.executable, __file__, "--child", method, "--ids", path,
        "--batch-size", str(args.batch_size), "--passes", str(passes),
        "--threads", str(args.threads),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
    if proc.returncode != 0:
        raise SystemExit(f"{method} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_all(args: argparse.Namespace) -> tuple[list[dict], dict]:
    import torch
    import transformers

    n = args.batches * args.batch_size
    ids = make_inputs(n, args.seq)
    methods = [m for m in METHODS if not (m.startswith("nnsight") and _nnsight_available())]
    results: dict[str, list[dict]] = {m: [] for m in methods}
    fixed: dict[str, dict] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ids.pt")
        torch.save(ids, path)
        for r in range(args.rounds):
            order = methods[r % len(methods) :] + methods[: r % len(methods)]
            for method in order:
                res = _child_run(method, path, args, args.passes, {})
                results[method].append(res)
                print(
                    f"round {r + 1} {method:13s} "
                    + " ".join(f"{t:.2f}s" for t in res["times"])
                    + " cpu " + " ".join(f"{t:.2f}s" for t in res["cpu"])
                    + f"  peak {res['peak_kb'] / 1024:.0f} MB  load {os.getloadavg()[0]:.2f}",
                    file=sys.stderr,
                )
        for method in methods:
            fixed[method] = _child_run(method, path, args, 1, FIXED_MALLOC)
            res = fixed[method]
            print(
                f"fixed malloc threshold {method:13s} peak {res['peak_kb'] / 1024:.0f} MB",
                file=sys.stderr,
            )
    rows = []
    for method, runs in results.items():
        times = [t for res in runs for t in res["times"]]
        cpu = [t for res in runs for t in res["cpu"]]
        beyond = [(res["peak_kb"] - res["loaded_kb"]) / 1024 for res in runs]
        rows.append(
            {
                "method": method,
                "tokens_per_s": runs[0]["tokens"] / statistics.median(times),
                "median_s": statistics.median(times),
                "cpu_s": statistics.median(cpu),
                "peak_mb": statistics.median(res["peak_kb"] for res in runs) / 1024,
                "beyond_mb": statistics.median(beyond),
                "beyond_min": min(beyond),
                "beyond_max": max(beyond),
                "beyond_fixed": (fixed[method]["peak_kb"] - fixed[method]["loaded_kb"]) / 1024,
                "threads": runs[0]["threads"],
            }
        )
    by = {r["method"]: r for r in rows}
    for r in rows:
        base = by[f"hf-{r['method'].split('-')[1]}"]
        r["time_vs_hf"] = r["median_s"] / base["median_s"]
        r["cpu_vs_hf"] = r["cpu_s"] / base["cpu_s"]
        r["beyond_vs_hf"] = r["beyond_mb"] / base["beyond_mb"]
        r["fixed_vs_hf"] = r["beyond_fixed"] / base["beyond_fixed"]
    info = {
        "n": n,
        "seq": args.seq,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "passes": args.passes,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "nnsight": _nnsight_version(),
        "machine": f"{os.cpu_count()}-core {platform.machine()} CPU",
        "nnsight_note": _nnsight_available(),
    }
    return rows, info


def _nnsight_version() -> str | None:
    try:
        import importlib.metadata

        return importlib.metadata.version("nnsight")
    except Exception:
        return None


def table(rows: list[dict], info: dict) -> str:
    lines = [
        "| method | what is kept | tokens/s | wall time vs plain HF | CPU time vs plain HF "
        "| peak RSS (MB) | peak beyond model (MB) | beyond model, fixed malloc threshold (MB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {METHODS[r['method']]} | {r['tokens_per_s']:,.0f} "
            f"| {r['time_vs_hf']:.2f}x | {r['cpu_vs_hf']:.2f}x | {r['peak_mb']:,.0f} "
            f"| {r['beyond_mb']:,.0f} ({r['beyond_min']:,.0f}-{r['beyond_max']:,.0f}) "
            f"| {r['beyond_fixed']:,.0f} |"
        )
    return "\n".join(lines)


def verdict(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        if not r["method"].startswith("lamina"):
            continue
        fast = r["cpu_vs_hf"] <= 1.10
        lean = r["fixed_vs_hf"] < 1.0
        out.append(
            f"- `{r['method']}`: CPU time {100 * (r['cpu_vs_hf'] - 1):+.1f}% vs plain HF "
            f"(wall {100 * (r['time_vs_hf'] - 1):+.1f}%): {'meets' if fast else 'misses'} the "
            f"<= +10% goal. Peak memory beyond the model {100 * (r['fixed_vs_hf'] - 1):+.1f}% "
            f"with a fixed malloc threshold ({100 * (r['beyond_vs_hf'] - 1):+.1f}% with the "
            f"default allocator): {'meets' if lean else 'misses'} the lower-than-HF goal."
        )
    return out


def section(rows: list[dict], info: dict, machine: str) -> str:
    lb, la = info["load_before"], info["load_after"]
    nn = (
        f"nnsight {info['nnsight']} runs offline through its generic `NNsight(module)` wrapper. "
        "`LanguageModel(hf_model, tokenizer=...)` does not build on this stack: it infers a "
        "text-generation pipeline for a `BertModel` and transformers 5.23's pipeline raises "
        "`AttributeError: 'TextGenerationPipeline' object has no attribute 'assistant_model'` "
        "(`TransformersModel(hf_model, task=\"feature-extraction\")` works)."
        if not info["nnsight_note"]
        else f"nnsight not measured: {info['nnsight_note']}."
    )
    return "\n".join(
        [
            SECTION,
            "",
            f"`python benchmarks/capture.py` on {machine}; `minilm` (6 layers, d_model 384), "
            f"{info['n']} TinyShakespeare sequences of exactly {info['seq']} tokens in batches of "
            f"{info['batch_size']}, float32, torch threads: {rows[0]['threads']}. Each method in "
            "its own process, warmed up on one batch; tokens/s from the median of "
            f"{info['rounds'] * info['passes']} full passes ({info['rounds']} interleaved rounds "
            f"x {info['passes']}); CPU time is the process's (all threads), less sensitive "
            "than wall time to other processes. Peak RSS: high-water mark during the first timed "
            "pass (one full call), median over rounds; \"beyond model\" subtracts the RSS once "
            "the model and inputs were loaded (range over rounds in brackets). With glibc's "
            "default allocator that figure moves by hundreds of MB from run to run (its mmap "
            "threshold rises as large blocks are freed, so later tensors fragment the heap); the "
            "last column is one more run per method with `MALLOC_MMAP_THRESHOLD_=65536`, where "
            "RSS follows the tensors. Other processes shared the CPU during the run (load "
            f"average {lb[0]:.2f} before, {la[0]:.2f} after).",
            "",
            table(rows, info),
            "",
            "All methods keep six per-block tensors per token (`all`: 6 x "
            f"{info['n']} x {info['seq']} x 384 float32 = "
            f"{6 * info['n'] * info['seq'] * 384 * 4 / 2**20:,.0f} MB) or per input (`last`). "
            "For BERT-style `minilm`, lamina's `hook_resid_post` is the block's residual sum "
            "before its final LayerNorm and HF's hidden states are after it: same size, same "
            "cost to capture.",
            "",
            *verdict(rows),
            "",
            nn,
            "",
        ]
    )


def write_section(path: Path, text: str) -> None:
    """Replace (or append) this benchmark's section, leaving every other section untouched.
    The file is re-read right before writing: other benchmarks write their own sections."""
    old = path.read_text("utf-8") if path.exists() else "# Benchmarks\n"
    lines = old.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.strip() == SECTION), None)
    if start is None:
        new = old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        body = lines[:start] + text.rstrip("\n").splitlines() + [""] + lines[end:]
        new = "\n".join(body).rstrip("\n") + "\n"
    path.write_text(new, "utf-8")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--write", type=Path, help="BENCHMARKS.md to (re)write the section of")
    p.add_argument(
        "--machine",
        default="2-core x86_64 CPU, no GPU, torch 2.13.0+cpu, transformers 5.23",
        help="machine description for the written section",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--ids", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.ids, args.batch_size, args.passes, args.threads)))
        return
    rows, info = run_all(args)
    text = section(rows, info, args.machine)
    print(text)
    if args.write:
        write_section(args.write, text)
        print(f"wrote {SECTION!r} in {args.write}", file=sys.stderr)


if __name__ == "__main__":
    main()
