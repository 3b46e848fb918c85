"""benchmarks/gpu_check.py: its measures against hand computations, its pass/fail logic, and a
whole ``--device cpu --quick`` run in a subprocess (every comparison present and passed)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def gm():
    spec = importlib.util.spec_from_file_location("gpu_measures", SCRIPT.parent / "gpu_measures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tensor_diff_by_hand(gc):
    ref = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    dev = torch.tensor([[3.0, 4.5], [0.0, 0.1], [1.0, 0.0]])
    d = gc.tensor_diff(ref, dev)
    assert d["max_abs"] == pytest.approx(0.5)
    # |err| = sqrt(0.5^2 + 0.1^2), |ref| = sqrt(25 + 1)
    assert d["rel_fro"] == pytest.approx(math.sqrt(0.26) / math.sqrt(26))
    assert d["rel_max"] == pytest.approx(0.5 / 4)
    # the zero row of ref is left out; the worst row is [3, 4] vs [3, 4.5]
    assert d["min_row_cos"] == pytest.approx((9 + 18) / (5 * math.hypot(3, 4.5)))
    worst = gc.worst({"a": d, "b": gc.tensor_diff(ref, ref)})
    assert worst["rel_fro"] == d["rel_fro"] and worst["rel_fro_site"] == "a"
    assert worst["min_row_cos"] == d["min_row_cos"] and worst["min_row_cos_site"] == "a"


def test_topk_pairs_sums_by_hand(gc, gm):
    nan = np.nan
    ref_v = np.array([[0.9, 0.8], [0.7, 0.6], [nan, nan]], dtype=np.float32)
    ref_i = np.array([[1, 2], [0, 2], [-1, -1]])
    # row 0: the 2nd neighbour is another row with the same value (a tie); row 1: one missed
    dev_v = np.array([[0.9, 0.8], [0.7, 0.5], [nan, nan]], dtype=np.float32)
    dev_i = np.array([[1, 3], [0, 3], [-1, -1]])
    t = gm.topk_agreement(ref_v, ref_i, dev_v, dev_i)
    assert t["id_overlap"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert t["topk_recall"] == pytest.approx((2 / 2 + 1 / 2) / 2)
    assert t["topk_value_diff"] == pytest.approx(0.1, abs=1e-6)

    a = (np.array([0, 0, 1]), np.array([1, 2, 2]), np.array([0.99, 0.97, 0.96]))
    b = (np.array([0, 1, 3]), np.array([1, 2, 4]), np.array([0.98, 0.96, 0.95]))
    p = gm.pair_agreement(a, b)
    assert p["pairs"] == 3 and p["pairs_changed"] == pytest.approx(2 / 4)
    assert p["pair_value_diff"] == pytest.approx(0.01)
    assert gm.pair_agreement((np.array([]),) * 3, (np.array([]),) * 3)["pairs_changed"] == 0

    ref = np.array([[[10.0, 1.0]], [[0.0, 2.0]]])
    s = gc.sums_agreement(ref, ref + np.array([[[1.0, 0.0]], [[0.0, -1.0]]]))
    assert s["rel_l1"] == pytest.approx(2 / 13) and s["max_abs"] == 1.0


def test_scan_agreement_and_judge(gc):
    def result(counts, mean, top):
        return SimpleNamespace(
            count=int(sum(counts)), counts=np.array(counts), mean=mean, std=0.5, min=-0.5,
            max=0.9, topk_values=np.array([[top]], dtype=np.float32),
            topk_indices=np.array([[1]]), pairs_i=np.array([0]), pairs_j=np.array([1]),
            pairs_values=np.array([0.96]))

    ref, dev = result([6, 4], 0.1, 0.9), result([5, 5], 0.1 + 2e-6, 0.9)
    m = gc.scan_agreement(ref, dev)
    assert m["count_diff"] == 0 and m["hist_moved"] == pytest.approx(1 / 10)
    assert m["mean_diff"] == pytest.approx(2e-6) and m["pairs_changed"] == 0
    failed = gc.judge(m, "scan_float32")
    assert len(failed) == 1 and failed[0].startswith("hist_moved")
    assert gc.judge({**m, "hist_moved": 0.0}, "scan_float32") == []
    assert gc.judge({**m, "hist_moved": float("nan")}, "scan_float32")  # NaN never passes
    assert gc.judge({"rel_l1": 0.0}, "sums") == []


def test_no_cuda_is_a_clear_exit(gc, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert gc.main(["--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_quick_cpu_run(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("OUT", None)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads((tmp_path / "gpu_check.json").read_text())
    spec = importlib.util.spec_from_file_location("gpu_check_expected", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    checks = {c["id"]: c for c in out["checks"]}
    assert sorted(checks) == sorted(mod.EXPECTED)  # every comparison present, no error entry
    assert out["passed"] and all(c["passed"] and not c["failed"] for c in checks.values())
    for c in checks.values():  # every limit of its kind was measured
        assert {m for m, _, _ in mod.LIMITS[c["kind"]]} <= set(c["metrics"])
    # float32 on the same CPU is the same computation; bfloat16 really differs, within limits
    assert checks["capture/minilm/float32"]["metrics"]["rel_fro"] < 1e-6
    for name in ("minilm", "shakespeare-char"):
        bf16 = checks[f"capture/{name}/bfloat16"]["metrics"]
        assert 1e-4 < bf16["rel_fro"] < 0.08 and bf16["min_row_cos"] > 0.98
    # the scans compared the torch backend (CUDA's path) with the compiled one: same counts
    assert checks["scan/float32"]["metrics"]["count_diff"] == 0
    assert checks["scan/float32"]["metrics"]["rows"] == 4096
    assert checks["scan/float32"]["metrics"]["pairs"] > 100  # near-duplicate tokens
    from lamina.corpus import tinyshakespeare
    from lamina.store import substrings

    study = out["study"]
    assert study["rows"] == len(substrings(tinyshakespeare()[:3000], 10))
    assert study["pair_thresholds"] == 4 * study["rows"] * (100 + 20 * 15)
    assert "mean_hellinger" in study["approximation"]
    assert any(k.startswith("study: similarity stage (") for k in out["timings_s"])
    md = (tmp_path / "gpu_check.md").read_text()
    assert md.count("| yes |") == len(mod.EXPECTED) and "**NO**" not in md
