"""``collect(..., engine="ray")``: the same store whatever the number of workers, resumable
after a SIGKILL of the driver or of a capture actor, through the loss of a node, quiet, and
with clear errors. One local Ray runtime of 2 CPUs for the module (the two-node test, last,
runs its own simulated cluster)."""

from __future__ import annotations

import builtins
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import torch

import lamina
from badinput import api_fails, cli_fails, cli_process
from lamina import store as lstore
from lamina.errors import LaminaError, StoreError
from ray_collect_helpers import (
    BATCH,
    LINES,
    MODEL,
    ROWS,
    SITES,
    assert_same_store,
    manifest,
    slowed,
)

ray = pytest.importorskip("ray")

N_SHARDS = -(-len(LINES) // ROWS)
WAIT_S = 300  # the bound of every wait for a collection


def _start_local() -> None:
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")


@pytest.fixture(scope="module")
def _ray_once() -> Iterator[None]:
    _start_local()
    yield
    ray.shutdown()


@pytest.fixture
def ray_local(_ray_once: None) -> str:
    """The module's local runtime (2 CPUs); its GCS address, for drivers in subprocesses."""
    _start_local()
    return ray.get_runtime_context().gcs_address


def _collect(out: Path, model: Any = MODEL, **kwargs: Any) -> lstore.Store:
    return lstore.collect(model, LINES, SITES, out, shard_rows=ROWS, batch_size=BATCH,
                          progress=False, **kwargs)


@pytest.fixture(scope="module")
def reference(_ray_once: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted Ray store with 2 workers."""
    _start_local()
    out = tmp_path_factory.mktemp("ray_ref") / "store"
    _collect(out, engine="ray", workers=2)
    return out


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def _wait_committed(out: Path, at_least: int = 1) -> int:
    deadline = time.time() + WAIT_S
    while time.time() < deadline:
        try:
            n = len(manifest(out)["shards"])
        except (OSError, ValueError):
            n = 0
        if n >= at_least:
            return n
        time.sleep(0.02)
    raise AssertionError(f"no shard of {out} committed within {WAIT_S} s")


def test_one_and_two_workers_give_bit_identical_stores(reference: Path,
                                                       tmp_path: Path) -> None:
    one = _collect(tmp_path / "one", engine="ray", workers=1)
    assert_same_store(tmp_path / "one", reference)
    two = lstore.open(reference)
    for s in (one, two):
        report = s.verify()
        assert report["complete"] and report["checksums"] and report["n_committed"] == len(LINES)
    assert [(s["start"], s["stop"]) for s in manifest(reference)["shards"]] == [
        (a, min(a + ROWS, len(LINES))) for a in range(0, len(LINES), ROWS)]
    assert two.strings == LINES
    # the local engine (its own thread count: equal to float32 rounding, not bit for bit)
    local = _collect(tmp_path / "local")
    for site in SITES:
        torch.testing.assert_close(two[site][:], local[site][:], atol=1e-5, rtol=1e-5)
    # independently: Hugging Face's hidden states at each string's last character
    model = lamina.load(MODEL, device="cpu")
    tok, hf = model.tokenizer, model.hf_model
    for i in (0, 19, 20, 137, len(LINES) - 1):
        ids = torch.tensor([tok(LINES[i])["input_ids"]])
        with torch.no_grad():
            hidden = hf(ids, output_hidden_states=True).hidden_states
        torch.testing.assert_close(two["hidden.1"][i], hidden[1][0, -1], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(two["hidden.4"][i], hidden[4][0, -1], atol=1e-4, rtol=1e-4)


def test_driver_sigkill_then_resume_gives_the_uninterrupted_store(
        ray_local: str, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    helper = Path(__file__).with_name("ray_collect_helpers.py")
    proc = subprocess.Popen([sys.executable, str(helper), ray_local, str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_committed(out)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    committed = len(manifest(out)["shards"])
    assert 1 <= committed < N_SHARDS, "killed too late to test resume"
    resumed = _collect(out, engine="ray", workers=2)
    assert resumed.complete and not list((out / "shards").glob("*.tmp"))
    assert not (out / "collect.lock").exists()
    assert_same_store(out, reference)


def _capture_processes() -> list[psutil.Process]:
    """The capture actors' processes of this test's Ray runtime (by their process title)."""
    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    found = []
    for p in psutil.Process(raylet).children(recursive=True):
        try:
            if "LaminaCapture" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            continue
    return found


def test_actor_sigkill_mid_run_finishes_with_the_same_store(
        ray_local: str, reference: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "actor"
    thread, box = _in_thread(lambda: _collect(out, slowed(0.3), engine="ray", workers=2))
    _wait_committed(out)
    victims = _capture_processes()  # this run's two (and any an earlier test left dying)
    assert len(victims) >= 2, "the capture actors' processes were not found"
    for victim in victims:
        victim.send_signal(signal.SIGKILL)
    assert len(manifest(out)["shards"]) < N_SHARDS, "killed too late"
    thread.join(WAIT_S)
    assert not thread.is_alive(), f"the collection did not end within {WAIT_S} s"
    # it finished by itself: a new pipeline for the shards not yet committed
    assert "error" not in box, box.get("error")
    assert any("capture worker was lost" in r.getMessage() for r in caplog.records)
    assert_same_store(out, reference)
    assert lstore.open(out).verify()["complete"]


def test_errors_inside_actors_arrive_as_the_same_lamina_error(
        ray_local: str, tmp_path: Path) -> None:
    import ray_collect_helpers as h

    poisoned = slowed(0.0)
    poisoned.hf_model.transformer.h[0].register_forward_hook(h.Poison())
    with pytest.raises(StoreError) as local:
        _collect(tmp_path / "local", poisoned)
    with pytest.raises(StoreError) as remote:
        _collect(tmp_path / "ray", poisoned, engine="ray", workers=2)
    assert type(remote.value) is type(local.value)
    assert str(remote.value) == str(local.value)
    assert "NaN or infinite values at hidden.1 for rows 0..20" in str(remote.value)
    assert "Traceback" not in str(remote.value)
    assert manifest(tmp_path / "ray")["shards"] == []  # nothing of them was stored


def test_bad_engine_settings_fail_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "never"
    cases: list[tuple[dict[str, Any], tuple[str, ...]]] = [
        (dict(engine="rey"), ("engine", "'local' or 'ray'", "rey")),
        (dict(engine="ray", workers=0), ("workers", ">= 1", "0")),
        (dict(engine="ray", workers=True), ("workers", "integer")),
        (dict(engine="ray", gpus_per_worker=-1), ("gpus_per_worker",)),
        (dict(engine="ray", gpus_per_worker=1.5), ("gpus_per_worker", "whole number")),
        (dict(engine="ray", cpus_per_worker=0), ("cpus_per_worker", ">= 1")),
        (dict(engine="ray", address=""), ("address", "HOST:6379")),
        (dict(workers=2), ("workers goes with engine='ray'",)),
        (dict(address="auto"), ("address goes with engine='ray'",)),
        (dict(gpus_per_worker=1), ("gpus_per_worker goes with engine='ray'",)),
    ]
    for kwargs, needles in cases:
        api_fails(lambda kw=kwargs: _collect(out, **kw), *needles)
        assert not out.exists()
    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(LINES[:5]) + "\n")
    base = ["collect", "--lines", lines, "--out", out, "--model", MODEL]
    for extra, needle in (([ "--workers", "2"], "--workers goes with --ray"),
                          (["--address", "auto"], "--address goes with --ray"),
                          (["--gpus-per-worker", "1"], "--gpus-per-worker goes with --ray"),
                          (["--ray", "--workers", "0"], "--workers must be an integer >= 1"),
                          (["--ray", "--gpus-per-worker", "-1"], "--gpus-per-worker")):
        cli_fails([*base, *extra], needle)
        assert not out.exists()


def test_without_ray_the_error_says_how_to_install_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = builtins.__import__

    def no_ray(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    out = tmp_path / "never"
    api_fails(lambda: _collect(out, engine="ray"), r"engine='ray' needs Ray",
              r"pip install 'lamina\[ray\]'")
    lines = tmp_path / "lines.txt"
    lines.write_text("a\nb\n")
    cli_fails(["collect", "--lines", lines, "--out", out, "--ray"], "--ray needs Ray",
              r"lamina\[ray\]")
    assert not out.exists()


def test_cli_ray_run_prints_only_the_progress_bar(tmp_path: Path) -> None:
    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(LINES[:60]) + "\n")
    out = tmp_path / "cli"
    env = {k: v for k, v in os.environ.items() if k != "LAMINA_RAY_VERBOSE"}
    run = cli_process(["collect", "--ray", "--workers", "2", "--lines", lines, "--out", out,
                       "--model", MODEL, "--site", "hidden.1", "--shard-rows", "20"],
                      env={**env, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": "local"},
                      timeout=WAIT_S)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("Store(") and "complete" in run.stdout
    pieces = [p.strip() for p in run.stderr.replace("\r", "\n").splitlines() if p.strip()]
    assert pieces and all(p.startswith("collect:") for p in pieces), run.stderr
    assert "100%" in pieces[-1] and "60.0/60.0" in pieces[-1]
    store = lstore.open(out)
    assert store.complete and len(store.shards) == 3


def test_two_node_cluster_survives_losing_a_node(reference: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs last: it replaces the module's runtime by a simulated cluster of two nodes."""
    import ray.data
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        worker = cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        cluster.wait_for_nodes()
        out = tmp_path / "cluster"
        # bound Ray Data's wait for a worker that cannot come back (default: 30 minutes)
        monkeypatch.setattr(ray.data.DataContext.get_current(),
                            "execution_no_progress_timeout_s", 60)
        thread, box = _in_thread(lambda: _collect(out, slowed(), engine="ray", workers=2))
        _wait_committed(out)
        cluster.remove_node(worker, allow_graceful=False)
        assert len(manifest(out)["shards"]) < N_SHARDS, "node removed too late"
        thread.join(WAIT_S)
        assert not thread.is_alive(), f"the collection did not end within {WAIT_S} s"
        if "error" in box:
            assert isinstance(box["error"], LaminaError), box["error"]
            _collect(out, engine="ray", workers=1)
        assert_same_store(out, reference)
        assert np.isfinite(lstore.open(out)["hidden.4"][:].numpy()).all()
    finally:
        ray.shutdown()
        cluster.shutdown()

