"""The Ray runtime helper: lamina starts Ray only when none runs, says how to install it, and
checks the engine name."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lamina.errors import LaminaError
from lamina.ray_runtime import check_engine, ensure_ray, require_ray


def test_engine_names_are_checked():
    assert check_engine("local") == "local" and check_engine("ray") == "ray"
    with pytest.raises(LaminaError, match="engine must be 'local' or 'ray', not 'rey'"):
        check_engine("rey")


def test_missing_ray_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(LaminaError, match=r"pip install 'lamina\[ray\]'") as err:
        require_ray()
    assert err.value.cli_message.startswith("--ray needs Ray")


def test_import_lamina_does_not_import_ray():
    code = ("import sys, lamina, lamina.store, lamina.similarity, lamina.cli; "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_ensure_ray_keeps_a_runtime_the_user_started():
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    ray.init(address="local", num_cpus=1, include_dashboard=False, namespace="users-own")
    try:
        job = ray.get_runtime_context().get_job_id()
        assert ensure_ray(num_cpus=2) is ray  # no second init: same job, same namespace
        assert ray.get_runtime_context().get_job_id() == job
        assert ray.get_runtime_context().namespace == "users-own"
        assert ray.cluster_resources()["CPU"] == 1
    finally:
        ray.shutdown()


def test_ensure_ray_starts_a_quiet_local_runtime():
    code = ("from lamina.ray_runtime import ensure_ray\n"
            "ray = ensure_ray(num_cpus=1)\n"
            "print(int(ray.cluster_resources()['CPU']))\n"
            "ray.shutdown()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**__import__("os").environ, "LAMINA_RAY_VERBOSE": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"
    assert out.stderr.strip() == "", out.stderr
