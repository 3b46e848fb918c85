"""The activation store: equal to in-memory capture, lazy reads, resumable after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import lamina
from conftest import save_model, tiny
from lamina import store as lstore
from lamina.corpus import tinyshakespeare

SITES = ["blocks.*.hook_mlp_out", "hidden.3", "z.1"]


def test_substrings_are_unique_in_first_occurrence_order() -> None:
    text = "abcabcabd"
    sub = lstore.substrings(text, 3)
    assert sub.strings == ["abc", "bca", "cab", "abd"]
    assert sub.offsets.tolist() == [0, 1, 2, 6]
    big = lstore.substrings(tinyshakespeare()[:20000], 10)
    brute = list(dict.fromkeys(tinyshakespeare()[:20000][i : i + 10] for i in range(19991)))
    assert big.strings == brute
    with pytest.raises(lamina.LaminaError, match="n must be"):
        lstore.substrings("abc", 5)


def test_store_equals_in_memory_collect(tmp_path: Path, minilm: lamina.Model) -> None:
    lines = tinyshakespeare().splitlines()[:300]
    lines = [ln for ln in lines if ln.strip()]
    store = lstore.collect(minilm, lines, SITES, tmp_path / "s", shard_rows=64,
                           progress=False)
    acts = minilm.collect(lines, SITES, positions="last")
    assert store.complete and len(store) == len(lines) and store.strings == lines
    assert store.sites == acts.sites and len(store.shards) == -(-len(lines) // 64)
    reopened = lstore.open(tmp_path / "s")
    # shards batch the strings differently from one in-memory call, so padding widths (and
    # float rounding inside attention) differ: equal to float32 precision, not bit for bit
    close = dict(atol=2e-5, rtol=1e-5)
    for site in acts.sites:
        arr = reopened[site]
        whole = arr[:]
        assert arr.shape == tuple(acts[site].shape)
        torch.testing.assert_close(whole, acts[site], **close)
        assert torch.equal(arr[50:130], whole[50:130])  # across a shard boundary
        rows = np.array([5, 200, 3, 64, 63])
        assert torch.equal(arr[rows], whole[rows])
        assert torch.equal(arr[-1], whole[-1])
        mask = np.zeros(len(lines), bool)
        mask[::7] = True
        assert torch.equal(arr[mask], whole[mask])
        assert torch.equal(torch.cat(list(arr.iter_blocks(100))), whole)
    np.testing.assert_array_equal(np.asarray(reopened["hidden.3"]), reopened["hidden.3"][:])


def test_substring_store_keeps_text_and_dtype(tmp_path: Path) -> None:
    model = tiny("gpt2")
    sub = lstore.substrings(tinyshakespeare()[:3000], 8)
    store = lstore.collect(model, sub, "resid_post.*", tmp_path / "sub", dtype="bfloat16",
                           shard_rows=500, progress=False)
    assert store.strings == sub.strings
    assert store["blocks.0.hook_resid_post"][:].dtype == torch.bfloat16
    back = store.substrings()
    assert back.text == sub.text and back.offsets.tolist() == sub.offsets.tolist()
    expected = model.collect(sub.strings[:40], "resid_post.2")["blocks.2.hook_resid_post"]
    torch.testing.assert_close(store["blocks.2.hook_resid_post"][:40].float(), expected,
                               atol=0.02, rtol=0.01)  # bfloat16 storage


def test_killed_collect_resumes_with_every_row_once(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    lines = [ln for ln in tinyshakespeare().splitlines()[:1500] if ln.strip()]
    corpus.write_text("\n".join(lines))
    model_dir = tmp_path / "model"
    m = tiny("gpt2")
    save_model(m, model_dir)
    reference = lstore.collect(str(model_dir), str(corpus), SITES[:2], tmp_path / "ref",
                               shard_rows=50, batch_size=8, progress=False)
    killed = tmp_path / "killed"
    code = ("import lamina.store as s\n"
            f"s.collect({str(model_dir)!r}, {str(corpus)!r}, {SITES[:2]!r}, {str(killed)!r}, "
            "shard_rows=50, batch_size=8, progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 120
    manifest = killed / "manifest.json"
    while time.time() < deadline:
        if manifest.exists() and len(json.loads(manifest.read_text())["shards"]) >= 3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = lstore.open(killed)
    assert 3 <= len(partial.shards) and not partial.complete, "killed too late to test resume"
    resumed = lstore.collect(str(model_dir), str(corpus), SITES[:2], killed, shard_rows=50,
                             batch_size=8, progress=False)
    assert resumed.complete and len(resumed) == len(reference)
    for site in reference.sites:
        assert torch.equal(resumed[site][:], reference[site][:])
    assert not list((killed / "shards").glob("*.tmp"))


def test_store_errors_are_clear(tmp_path: Path, minilm: lamina.Model) -> None:
    lines = ["one line", "another line", "a third"]
    store = lstore.collect(minilm, lines, "hidden.1", tmp_path / "e", shard_rows=2,
                           progress=False)
    with pytest.raises(lamina.LaminaError, match="other settings"):
        lstore.collect(minilm, lines, "hidden.2", tmp_path / "e", progress=False)
    with pytest.raises(lamina.errors.UnknownSiteError, match="hidden.1"):
        store["hidden.2"]
    with pytest.raises(lamina.LaminaError, match="one position"):
        lstore.collect(minilm, lines, "hidden.1", tmp_path / "x", positions="all")
    with pytest.raises(lamina.LaminaError, match="not an activation store"):
        lstore.open(tmp_path)
    with pytest.raises(lamina.LaminaError, match="holds activations of 'minilm'"):
        store.check_model(tiny("gpt2"))
    (tmp_path / "e" / "shards" / "00001.safetensors").write_bytes(b"garbage")
    with pytest.raises(lamina.errors.StoreCorruptError, match=r"shard 1 .*7 bytes where"):
        lstore.open(tmp_path / "e")["hidden.1"][:]
    (tmp_path / "e" / "shards" / "00000.safetensors").unlink()
    with pytest.raises(lamina.errors.StoreCorruptError, match=r"shard 0 .*missing"):
        lstore.open(tmp_path / "e")["hidden.1"][0]


def test_cli_collect_substrings(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lamina.cli import app

    model_dir = tmp_path / "model"
    m = tiny("gpt2")
    save_model(m, model_dir)
    text = tmp_path / "text.txt"
    text.write_text(tinyshakespeare()[:800])
    result = CliRunner().invoke(app, ["collect", "--model", str(model_dir), "--substrings", "6",
                                      "--text-file", str(text), "--site", "mlp_out.1",
                                      "--out", str(tmp_path / "st")])
    assert result.exit_code == 0, result.output
    store = lstore.open(tmp_path / "st")
    assert store.complete and store.strings == lstore.substrings(text.read_text(), 6).strings
    missing = CliRunner().invoke(app, ["collect", "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "--lines" in missing.output


@pytest.mark.parametrize(("values", "dtype", "finite"), [
    ([1.0, -2.0, 3.0], torch.float32, True),
    ([3e38, 3e38, 3e38], torch.float32, True),     # the sum overflows; every value is finite
    ([6e4, 6e4, 6e4], torch.float16, True),
    ([1.0, float("nan"), 3.0], torch.float32, False),
    ([1.0, float("inf"), float("-inf")], torch.float32, False),
    ([1.0, float("nan")], torch.bfloat16, False),
    ([1e300, 1e300], torch.float64, True),
])
def test_block_finiteness_check_matches_numpy(values, dtype, finite) -> None:
    from lamina.store.reader import _all_finite

    block = torch.tensor(values, dtype=dtype).reshape(1, -1)
    assert _all_finite(block) is finite is bool(np.isfinite(block.double().numpy()).all())
