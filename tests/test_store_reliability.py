"""The store under concurrency, model changes, interruption and bad input (issue 14, items 1,
2, 4, 6, 7): a second writer and another model are refused, incomplete stores are analysed only
when asked, killed collects resume bit-identical, bad input is one clear error."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import lamina
from badinput import api_fails, cli_fails, cli_ok
from conftest import tiny
from lamina import store as lstore
from lamina.analyses.norms import norms_of
from lamina.corpus import tinyshakespeare
from lamina.errors import IncompleteStoreError, StoreError, StoreLockedError
from lamina.fingerprint import model_fingerprint
from store_cases import (  # noqa: F401
    LINES,
    SITES,
    cut,
    fixture_copy,
    fixture_healthy,
    fixture_model_dir,
    manifest,
    write_lines,
)


# -- item 1: one writer ---------------------------------------------------------------------
def _held_collect(model_dir: Path, corpus: list[str], out: Path, shard_rows: int,
                  hold: Path) -> list[str]:
    """A collect in a subprocess whose model waits while the file ``hold`` exists."""
    code = ("import os, time, lamina.models as m\n"
            "orig = m.Model.collect\n"
            "def held(self, *a, **k):\n"
            f"    while os.path.exists({str(hold)!r}):\n        time.sleep(0.02)\n"
            "    return orig(self, *a, **k)\n"
            "m.Model.collect = held\n"
            "import lamina.store as s\n"
            f"s.collect({str(model_dir)!r}, {corpus!r}, {SITES!r}, {str(out)!r}, "
            f"shard_rows={shard_rows}, batch_size=8, progress=False)\n")
    return [sys.executable, "-c", code]


def test_second_writer_is_refused_while_the_first_runs(model_dir: Path, healthy: Path,
                                                       tmp_path: Path) -> None:
    out, hold = tmp_path / "s", tmp_path / "hold"
    hold.touch()  # the first collect waits inside its model until the second was tried
    first = subprocess.Popen(_held_collect(model_dir, LINES, out, 8, hold),
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "collect.lock").exists() and time.time() < deadline:
        assert first.poll() is None, first.stderr.read()
        time.sleep(0.02)
    holder = json.loads((out / "collect.lock").read_text())
    assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
    # the case: another shard_rows, through the API and through the CLI
    api_fails(lambda: lstore.collect(str(model_dir), LINES, SITES, out, shard_rows=48,
                                     progress=False),
              "being written by another collect", f"pid {first.pid}", exc=StoreLockedError)
    corpus = write_lines(tmp_path, LINES, "corpus.txt")
    cli_fails(["collect", "--model", model_dir, "--lines", corpus, "--site", SITES[0],
               "--site", SITES[1], "--out", out], f"pid {first.pid}")
    assert first.poll() is None and manifest(out)["shards"] == []  # still held
    hold.unlink()
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert not (out / "collect.lock").exists()
    done, reference = lstore.open(out), lstore.open(healthy)
    done.verify()
    assert done.complete and done.strings == reference.strings
    for site in SITES:  # same model, other shard boundaries: float32-close, not bit-equal
        torch.testing.assert_close(done[site][:], reference[site][:], atol=2e-5, rtol=1e-5)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("holder,taken_over", [
    ({"pid": "dead", "host": "here"}, True),
    ({"pid": "self", "host": "here"}, False),
    ({"pid": "self", "host": "other"}, False),
    (None, True),  # an unreadable lock file, old
], ids=["dead process", "live process", "other host", "unreadable"])
def test_stale_lock_is_taken_over_live_one_refused(model_dir: Path, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture,
                                                   holder: dict | None, taken_over: bool
                                                   ) -> None:
    out = tmp_path / "s"
    out.mkdir()
    lock = out / "collect.lock"
    if holder is None:
        lock.write_text("")
        os.utime(lock, (time.time() - 3600, time.time() - 3600))
    else:
        pid = _dead_pid() if holder["pid"] == "dead" else os.getpid()
        host = socket.gethostname() if holder["host"] == "here" else "elsewhere.example"
        lock.write_text(json.dumps({"pid": pid, "host": host, "started": "then"}))
    run = lambda: lstore.collect(str(model_dir), LINES[:8], SITES, out,  # noqa: E731
                                 shard_rows=4, progress=False)
    if taken_over:
        with caplog.at_level("WARNING", logger="lamina.store"):
            assert run().complete
        assert "took over the lock" in caplog.text and not lock.exists()
    else:
        host = "elsewhere.example" if holder["host"] == "other" else socket.gethostname()
        api_fails(run, f"pid {os.getpid()} on host {host}", "delete .*collect.lock",
                  exc=StoreLockedError)
        assert lock.exists() and not (out / "manifest.json").exists()


def test_lock_is_released_when_collect_fails(model_dir: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "s"

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(lstore.writer, "_fill", boom)
    with pytest.raises(RuntimeError):
        lstore.collect(str(model_dir), LINES[:8], SITES, out, shard_rows=4, progress=False)
    assert not (out / "collect.lock").exists()


# -- item 2: the model's identity ---------------------------------------------------------
def test_resume_accepts_same_model_under_another_spelling(copy: Path, model_dir: Path,
                                                          healthy: Path) -> None:
    reference = lstore.open(healthy)
    for keep, spelling in ((1, str(model_dir) + "/"), (2, os.path.relpath(model_dir))):
        cut(copy, keep)
        done = lstore.collect(spelling, LINES, SITES, copy, batch_size=8, progress=False)
        assert done.complete and done.manifest["model"] == str(model_dir)  # first spelling
        for site in SITES:
            assert torch.equal(done[site][:], reference[site][:])
    shakespeare = lamina.BUILTINS["shakespeare-char"]()
    a = model_fingerprint(lamina.load("shakespeare-char", device="cpu"))
    assert a == model_fingerprint(lamina.load(str(shakespeare) + "/", device="cpu"))


def test_resume_refuses_a_retrained_model(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    for seed, keep in ((0, None), (1, 1)):  # retrain (another seed) into the same directory
        m = tiny("gpt2", seed=seed)
        m.hf_model.save_pretrained(model_dir)
        m.tokenizer.save_pretrained(model_dir)
        if keep is None:
            lstore.collect(str(model_dir), LINES[:16], SITES, tmp_path / "s", shard_rows=4,
                           progress=False)
            cut(tmp_path / "s", 1)
    api_fails(lambda: lstore.collect(str(model_dir), LINES[:16], SITES, tmp_path / "s",
                                     progress=False),
              "another model", "weights or config differ", "out\\b", exc=StoreError)
    cli_fails(["collect", "--model", model_dir, "--lines", write_lines(tmp_path, LINES[:16]),
               "--site", SITES[0], "--site", SITES[1], "--out", tmp_path / "s"],
              "another model", "--out")
    with pytest.raises(StoreError, match="holds activations of"):
        lstore.open(tmp_path / "s").check_model(lamina.load(str(model_dir), device="cpu"))


def test_fingerprint_follows_weights_and_config() -> None:
    m = tiny("gpt2")
    a = model_fingerprint(m)
    assert a.startswith("sha256:") and len(a) == 7 + 64 and model_fingerprint(m) == a
    assert model_fingerprint(tiny("gpt2")) == a  # the same weights built again
    with torch.no_grad():
        m.hf_model.transformer.h[1].mlp.c_fc.bias[3] += 1e-6  # in place: the cache notices
    assert model_fingerprint(m) != a
    b = tiny("gpt2")
    b.hf_model.config.layer_norm_epsilon = 1e-3
    assert model_fingerprint(b) != a
    start = time.perf_counter()
    model_fingerprint(lamina.load("shakespeare-char", device="cpu"))  # 13 MB
    assert time.perf_counter() - start < 5


def test_format_1_store_still_reads(copy: Path, model_dir: Path) -> None:
    m = manifest(copy)
    expected = {site: lstore.open(copy)[site][:] for site in SITES}
    for key in ("store_id", "model_fingerprint", "shard_rows"):
        del m[key]
    for s in m["shards"]:
        del s["bytes"], s["sha256"]
        f = copy / "shards" / s["file"]
        save_file(load_file(str(f)), str(f))  # format 1 shards had no metadata
    m["format"] = "lamina.store/1"
    (copy / "manifest.json").write_text(json.dumps(m))
    old = lstore.open(copy)
    assert old.verify()["checksums"] is False and old.strings == LINES
    for site in SITES:
        assert torch.equal(old[site][:], expected[site])
    old.check_model(lamina.load(str(model_dir), device="cpu"))  # by name
    cut(copy, 2)
    api_fails(lambda: lstore.collect(str(model_dir), LINES, SITES, copy, progress=False),
              "older lamina", "cannot be resumed", exc=StoreError)


# -- item 4: incomplete stores --------------------------------------------------------------
def test_incomplete_store_is_refused_unless_partial(copy: Path) -> None:
    cut(copy, 1)
    api_fails(lambda: norms_of(lstore.open(copy)), "stopped at 16 of 64 rows",
              "allow_partial=True", exc=IncompleteStoreError)
    cli_fails(["norms", "--store", copy], "stopped at 16 of 64 rows", "--partial")
    result = norms_of(lstore.open(copy), allow_partial=True)
    assert result.summary["partial"] is True and result.meta["n_committed"] == 16
    assert result.meta["n_rows"] == 64 and set(result.table["n"]) == {16}
    rows = load_file(str(copy / "shards" / "00000.safetensors"))["hidden.1"].double().numpy()
    norms = np.linalg.norm(rows, axis=1)
    got = result.table.set_index("site").loc["hidden.1"]
    np.testing.assert_allclose([got["mean_norm"], got["max_norm"]], [norms.mean(), norms.max()],
                               rtol=1e-12)
    assert "partial store: 16 of 64 rows" in cli_ok(["norms", "--store", copy, "--partial"])


def test_store_with_no_shards_is_a_clear_error(copy: Path) -> None:
    cut(copy, 0)
    store = lstore.open(copy)
    assert len(store) == 0 and store.strings == []
    for call in (lambda: norms_of(store), lambda: norms_of(store, allow_partial=True),
                 lambda: store["hidden.1"]):
        api_fails(call, "holds no rows yet", exc=IncompleteStoreError)
    cli_fails(["norms", "--store", copy, "--partial"], "holds no rows yet")
    assert "incomplete: 0 of 64" in cli_ok(["verify", copy])


def test_similar_strings_on_a_partial_store(copy: Path, model_dir: Path) -> None:
    from lamina.analyses import similar_strings

    cut(copy, 2)
    model = lamina.load(str(model_dir), device="cpu")
    api_fails(lambda: similar_strings(model, lstore.open(copy), "ROMEO:", site="hidden.1"),
              "stopped at 32 of 64", exc=IncompleteStoreError)
    cli_fails(["similar", "--store", copy, "--model", model_dir, "-q", "ROMEO:", "-s",
               "hidden.1"], "stopped at 32 of 64", "--partial")
    result = similar_strings(model, lstore.open(copy), "ROMEO:", site="hidden.1", k=32,
                             allow_partial=True)
    frame = result.to_frame()
    assert result.meta["partial"] is True and len(frame) == 32 and frame["row"].max() < 32
    assert "partial store: 32 of 64" in cli_ok(["similar", "--store", copy, "--model", model_dir,
                                               "-q", "ROMEO:", "-s", "hidden.1", "--partial"])


# -- item 6: bad input to collect -----------------------------------------------------------
def _latin1(tmp_path: Path) -> Path:
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 au lait\nna\xefve\n".encode("latin-1"))
    return path


def test_collect_bad_input_api(tmp_path: Path, model_dir: Path) -> None:
    m = str(model_dir)
    cases = [
        (lambda: lstore.collect(m, None, SITES, tmp_path / "a"), "corpus must be", "NoneType"),
        (lambda: lstore.collect(m, _latin1(tmp_path), SITES, tmp_path / "a"), "not UTF-8",
         "offset 3", "corpus"),
        (lambda: lstore.collect(m, [], SITES, tmp_path / "a"), "empty"),
        (lambda: lstore.collect(m, ["a", 3], SITES, tmp_path / "a"), "Row 1", "3"),
        (lambda: lstore.collect(m, ["a", ""], SITES, tmp_path / "a"), "Row 1", "non-empty"),
        (lambda: lstore.collect(m, ["a"], SITES, tmp_path / "a", dtype="int8"), "float32",
         "int8"),
        (lambda: lstore.collect(m, ["a"], SITES, tmp_path / "a", dtype="foo"), "foo"),
        (lambda: lstore.collect(m, ["a"], SITES, tmp_path / "a", positions=1.5), "1.5",
         "positions"),
        (lambda: lstore.collect(m, ["a"], SITES, tmp_path / "a", shard_rows=0), "shard_rows"),
        (lambda: lstore.collect(m, ["a"], SITES, tmp_path / "a", batch_size=-1),
         "batch_size"),
        (lambda: lstore.collect(m, ["a"], SITES, _latin1(tmp_path)), "is a file", "out="),
        (lambda: lstore.substrings("abc", 0), "n must be"),
    ]
    for fn, *needles in cases:
        api_fails(fn, *needles)
    assert not (tmp_path / "a").exists()


def test_collect_bad_input_cli(tmp_path: Path, model_dir: Path) -> None:
    good = write_lines(tmp_path, LINES[:4])
    base = ["collect", "--model", "no/such-model-anywhere", "--site", "hidden.1"]
    out = ["--out", tmp_path / "o"]
    cases = [
        ([*base, "--lines", _latin1(tmp_path), *out], "not UTF-8", "--lines"),
        ([*base, "--substrings", "3", "--text-file", _latin1(tmp_path), *out], "not UTF-8",
         "--text-file"),
        ([*base, "--lines", good, "--out", good], "is a file", "--out"),
        ([*base, "--lines", good, "--dtype", "int8", *out], "--dtype", "int8"),
        ([*base, "--lines", good, "--positions", "1.5", *out], "--positions", "1.5"),
        ([*base, "--lines", good, "--positions", "all", *out], "one position"),
        ([*base, "--lines", good, "--shard-rows", "0", *out], "--shard-rows"),
        ([*base, "--substrings", "0", "--text-file", good, *out], "--substrings"),
        ([*base, "--substrings", "3", *out], "--text-file"),
        ([*base, *out], "--lines"),
        (["verify", good], "not an activation store"),
    ]
    for args, *needles in cases:  # all before the (unloadable) model is touched
        cli_fails(args, *needles)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only directories")
def test_collect_into_read_only_directory(tmp_path: Path, model_dir: Path) -> None:
    tmp_path.chmod(0o500)
    try:
        cli_fails(["collect", "--lines", write_lines(tmp_path.parent, ["a"]), "--out",
                   tmp_path / "o"], "not writable", "--out")
    finally:
        tmp_path.chmod(0o700)


# -- item 7: kill and resume through the CLI (the API is in test_store.py) ------------------
def test_cli_collect_killed_and_resumed_is_bit_identical(tmp_path: Path,
                                                         model_dir: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "kill_resume", Path(__file__).parents[1] / "benchmarks" / "kill_resume.py")
    kr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kr)
    lines = [ln for ln in tinyshakespeare().splitlines() if ln.strip()][:600]
    corpus = write_lines(tmp_path, lines)
    lstore.collect(str(model_dir), str(corpus), SITES, tmp_path / "ref", shard_rows=50,
                   batch_size=16, progress=False)
    cmd = kr.command("cli", corpus, tmp_path / "k", 50, str(model_dir), SITES)
    info = kr.kill_and_resume(cmd, tmp_path / "k", min_shards=3,
                              resume=lambda: cli_ok(cmd[3:]))  # the same command, in-process
    assert info["killed"] and 3 <= info["shards_at_kill"] < 12, info
    assert len(lstore.open(tmp_path / "k").shards) == 12
    assert kr.identical(tmp_path / "k", tmp_path / "ref") == []


def test_approximation_on_a_partial_store(tmp_path: Path) -> None:
    from lamina.analyses.approximation import approximation

    model = lamina.load("shakespeare-char", device="cpu")
    sub = lstore.substrings(tinyshakespeare()[:700], 6)
    lstore.collect(model, sub, "mlp_out.*", tmp_path / "s", shard_rows=200, progress=False)
    cut(tmp_path / "s", 2)
    store = lstore.open(tmp_path / "s")
    thresholds = [0.9, 0.85, 0.8, 0.8]  # shakespeare-char has 4 blocks
    args = dict(thresholds=thresholds, weights=[1.0] * 4, progress=False)
    api_fails(lambda: approximation(model, store, 8, **args), "stopped at 400 of",
              "allow_partial=True", exc=IncompleteStoreError)
    cli_fails(["approximate", "--store", tmp_path / "s", "--prompts", "8", "--thresholds",
               "0.9,0.85,0.8,0.8", "--weights", "1,1,1,1"],
              "stopped at 400 of", "--partial")
    result = approximation(model, store, 8, allow_partial=True, **args)
    assert result.summary["partial"] is True and result.meta["n_committed"] == 400
    assert set(result.table["prompt"]) <= set(sub.strings[:400])
    # block 0's matches, by brute force over the 400 committed rows only (self excluded)
    site, t = "blocks.0.hook_mlp_out", thresholds[0]
    x = model.collect(list(result.table["prompt"]), site)[site].double().numpy()
    y = np.asarray(store[site]).astype(np.float64)
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (
        y / np.linalg.norm(y, axis=1, keepdims=True)).T
    own = cos[np.arange(len(cos)), [sub.strings.index(p) for p in result.table["prompt"]]]

    def matches(t: float) -> np.ndarray:
        return (cos >= t).sum(1) - (own >= t)

    got = result.table["matches_block_0"].to_numpy()  # float32 cosines: 1e-5 of slack
    assert (matches(t + 1e-5) <= got).all() and (got <= matches(t - 1e-5)).all()
    assert got.sum() > 0 and (got < 399).all()
