"""Collection on Ray (``collect(..., engine="ray")``): a Ray Data pipeline over the pending
shards, one stateful capture actor per worker, the commits in this process.

The pipeline is ``ray.data.from_items`` of the shards' row ranges (one block each) ->
``map_batches(LaminaCapture, batch_size=1, compute=ActorPoolStrategy(...))``. Each actor loads
the model once (from its spec on the actor's node, checked against the driver's fingerprint;
or a :class:`~lamina.Model` object through the object store), runs torch with as many threads
as it has CPUs, and captures one whole shard per call with the local writer's own code
(:func:`lamina.store.shard.capture_shard`: same batching, so the same floats), returning the
shard's safetensors bytes. The driver receives the shards in row order (``preserve_order``),
writes and commits them exactly as the local path does, under the writer lock: the store
directory only has to exist where the driver runs.

Failures: an error of the capture itself (NaN rows, a bad site) comes back as data and is
raised here as the same :class:`~lamina.errors.LaminaError`, after the shards before it are
committed, as in the local path. A lost worker (its process killed, its node gone) fails the
pipeline; the driver shuts it down, waits (at most :data:`SETTLE_S`) for its resources to be
free, and starts a new one over the shards not yet committed, sized to the nodes still alive;
it gives up with a clear error after :data:`ATTEMPTS` attempts in a row that commit nothing
(run the same collect again to resume). An actor that dies while it starts (placed on a node
not yet known to be dead) is replaced within the pipeline. A pipeline that makes no progress
for Ray Data's ``execution_no_progress_timeout_s`` (30 minutes unless the user's
``DataContext`` says otherwise) counts as a failed attempt, so no wait is unbounded. Ray's own
actor restarts are off (``max_restarts=0``): a restarted actor whose node is gone could wait
for resources forever, and Ray prints a warning line for restartable actors whose arguments
are in the object store (as Ray Data's are).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lamina.checks import check_int, check_number
from lamina.errors import LaminaError
from lamina.ray_runtime import check_engine, ray_data_silenced, require_ray

if TYPE_CHECKING:
    from lamina.models import Model

#: Pipeline attempts in a row that commit no shard before a Ray collection gives up.
ATTEMPTS = 3
#: Actors in a row that may die while starting before a pipeline fails.
INIT_DEATHS = 8
#: Seconds a new pipeline waits for the last one's workers to free their CPUs and GPUs.
SETTLE_S = 60.0

log = logging.getLogger("lamina.store")

_RAY_ONLY = (("workers", None, "--workers"), ("gpus_per_worker", 0, "--gpus-per-worker"),
             ("cpus_per_worker", 1, "--cpus-per-worker"), ("address", None, "--address"))


@dataclass(frozen=True)
class RayPlan:
    """Validated settings of a Ray collection (see :func:`check_engine_args`)."""

    workers: int | None
    gpus_per_worker: float
    cpus_per_worker: int
    address: str | None

    def capacity(self, ray: Any) -> int:
        """How many workers the cluster's live nodes can hold at once (by their total CPUs
        and GPUs); a clear error when not even one fits."""
        fit = 0
        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            res = node.get("Resources", {})
            n = int(res.get("CPU", 0) // self.cpus_per_worker)
            if self.gpus_per_worker:
                n = min(n, int(res.get("GPU", 0) / self.gpus_per_worker + 1e-9))
            fit += n
        if fit == 0:
            need = f"{self.cpus_per_worker} CPU" + (
                f" and {self.gpus_per_worker:g} GPU" if self.gpus_per_worker else "")
            total = ray.cluster_resources()
            raise LaminaError(
                f"No node of the Ray cluster has {need} for one capture worker (the cluster "
                f"has {total.get('CPU', 0):g} CPUs and {total.get('GPU', 0):g} GPUs): lower "
                "gpus_per_worker or cpus_per_worker, or add nodes.",
                cli=f"No node of the Ray cluster has {need} for one capture worker (the "
                    f"cluster has {total.get('CPU', 0):g} CPUs and {total.get('GPU', 0):g} "
                    "GPUs): lower --gpus-per-worker or --cpus-per-worker, or add nodes.")
        return fit

    def shards(self, spec: Any, model: Model, strings: list[str],
               todo: list[tuple[int, int]], manifest: dict[str, Any],
               batch_size: int) -> Iterator[tuple[int, int, bytes, dict[str, list]]]:
        """Capture the row ranges ``todo`` on Ray; yield ``(start, stop, bytes, shapes)`` in
        row order (see the module docstring for failures)."""
        from lamina.fingerprint import model_fingerprint
        from lamina.ray_runtime import ensure_ray

        if not todo:
            return
        ray = ensure_ray(self.address)
        if isinstance(spec, (str, os.PathLike)):
            source: tuple[str, Any] = ("spec", str(spec))
        else:
            source = ("object", ray.put(model))
        setup = dict(source=source, fingerprint=model_fingerprint(model),
                     cpus=self.cpus_per_worker,
                     device="cuda" if self.gpus_per_worker else "cpu",
                     manifest={k: manifest[k] for k in ("sites", "positions", "dtype",
                                                        "store_id")},
                     batch_size=batch_size)
        remaining, fruitless = list(todo), 0
        with ray_data_silenced():
            while remaining:
                fruitless = yield from self._attempt(ray, setup, strings, remaining, fruitless,
                                                     len(todo))

    def _attempt(self, ray: Any, setup: dict[str, Any], strings: list[str],
                 remaining: list[tuple[int, int]], fruitless: int,
                 n_todo: int) -> Iterator[tuple[int, int, bytes, dict[str, list]]]:
        """One pipeline over ``remaining`` (popped as they are yielded); returns the count of
        attempts in a row that committed nothing, or raises when they reach ATTEMPTS."""
        rows = self._pipeline(ray, setup, strings, remaining).iter_rows()
        lost = False
        try:
            for row in rows:
                if row["error"]:
                    raise _remote_error(row["error"])
                fruitless = 0
                remaining.pop(0)
                yield (int(row["start"]), int(row["stop"]), bytes(row["data"]),
                       json.loads(row["shapes"]))
        except LaminaError:
            raise
        except Exception as exc:
            if not _lost_worker(exc):
                raise
            fruitless += 1
            if fruitless >= ATTEMPTS:
                raise LaminaError(
                    f"The Ray collection lost its workers or stalled {ATTEMPTS} times in "
                    f"a row without committing a shard (last: {_first_line(exc)}); the "
                    f"{n_todo - len(remaining)} shards committed in this run are kept: "
                    "run the same collect again to resume.") from None
            log.warning("note: a Ray capture worker was lost or stalled (%s); restarting "
                        "on the live nodes for the %d shards not yet committed",
                        _first_line(exc), len(remaining))
            lost = True
        finally:
            close = getattr(rows, "close", None)
            if close is not None:  # shuts the pipeline down (its actors end)
                close()
            del rows
        if lost:
            self._settle(ray)
        return fruitless

    def _settle(self, ray: Any) -> None:
        """Wait (at most SETTLE_S) until one worker's CPUs and GPUs are free again: the
        failed pipeline's actors release theirs when the handles to them are collected
        (reference cycles through the error's traceback keep them alive until then)."""
        start = time.monotonic()
        gc.collect()  # the failed pipeline's actors end when the last handle to them does
        while time.monotonic() < start + SETTLE_S:
            free = ray.available_resources()
            if free.get("CPU", 0) >= self.cpus_per_worker and (
                    free.get("GPU", 0) >= self.gpus_per_worker):
                break
            time.sleep(0.5)
        log.debug("resources free again after %.1f s", time.monotonic() - start)

    def _pipeline(self, ray: Any, setup: dict[str, Any], strings: list[str],
                  todo: list[tuple[int, int]]) -> Any:
        cap = self.capacity(ray)
        workers = self.workers or cap
        items = [{"start": a, "stop": b, "strings": json.dumps(strings[a:b])} for a, b in todo]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        pool = ray.data.ActorPoolStrategy(min_size=1, max_size=workers,
                                          initial_size=min(workers, cap),
                                          max_tasks_in_flight_per_actor=1)
        extra: dict[str, Any] = {"num_gpus": self.gpus_per_worker} if self.gpus_per_worker \
            else {}
        args = dict(batch_size=1, batch_format="numpy", compute=pool,
                    fn_constructor_kwargs=setup, num_cpus=self.cpus_per_worker, **extra)
        with warnings.catch_warnings():  # max_restarts has no named parameter (yet)
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                ds = ds.map_batches(LaminaCapture, max_restarts=0, **args)
            except TypeError:  # a Ray without free remote args: its own restarts then
                ds = ds.map_batches(LaminaCapture, **args)
        ds.context.execution_options.preserve_order = True
        # an actor that dies while it starts (its node lost) is replaced, not fatal
        if hasattr(ds.context, "max_consecutive_actor_init_deaths"):
            ds.context.max_consecutive_actor_init_deaths = max(
                ds.context.max_consecutive_actor_init_deaths, INIT_DEATHS)
        return ds


def check_engine_args(engine: Any, workers: Any, gpus_per_worker: Any, cpus_per_worker: Any,
                      address: Any) -> RayPlan | None:
    """Check ``collect``'s engine settings before any work: ``None`` for the local engine, the
    :class:`RayPlan` for Ray (Ray imported, or the error saying how to install it)."""
    check_engine(engine)
    if engine == "local":
        for name, default, option in _RAY_ONLY:
            value = {"workers": workers, "gpus_per_worker": gpus_per_worker,
                     "cpus_per_worker": cpus_per_worker, "address": address}[name]
            if value is not default and value != default:
                raise LaminaError(f"{name} goes with engine='ray': pass engine='ray' or leave "
                                  f"{name} out.",
                                  cli=f"{option} goes with --ray: add --ray or leave {option} "
                                      "out.")
        return None
    if workers is not None:
        check_int(workers, "workers", 1, option="--workers")
    gpus = check_number(gpus_per_worker, "gpus_per_worker", 0, option="--gpus-per-worker")
    if gpus > 1 and gpus != int(gpus):
        raise LaminaError(f"gpus_per_worker above 1 must be a whole number, not {gpus:g}.",
                          cli=f"--gpus-per-worker above 1 must be a whole number, not {gpus:g}.")
    cpus = check_int(cpus_per_worker, "cpus_per_worker", 1, option="--cpus-per-worker")
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise LaminaError(f"address must be a Ray cluster address such as 'HOST:6379' or "
                          f"'auto', not {address!r}.",
                          cli=f"--address must be a Ray cluster address such as HOST:6379 or "
                              f"auto, not {address!r}.")
    require_ray("engine='ray'", "--ray")
    return RayPlan(None if workers is None else int(workers),
                   int(gpus) if gpus == int(gpus) else gpus, cpus, address)


class LaminaCapture:
    """The capture actor of a Ray collection: loads the model once, then turns one shard's
    row range (a batch of one item) into that shard's safetensors bytes."""

    def __init__(self, source: tuple[str, Any], fingerprint: str, cpus: int, device: str,
                 manifest: dict[str, Any], batch_size: int) -> None:
        import torch

        torch.set_num_threads(cpus)
        self.manifest, self.batch_size = manifest, batch_size
        self.model: Any = None
        self.error: bytes = b""
        try:
            self.model = _load(source, fingerprint, device)
        except Exception as exc:  # reported with the first shard, as a LaminaError would be
            self.error = _pack(exc)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from lamina.store.shard import capture_shard

        start, stop = int(batch["start"][0]), int(batch["stop"][0])
        data, shapes, error = b"", {}, self.error
        if not error:
            try:
                data, shapes = capture_shard(self.model, json.loads(str(batch["strings"][0])),
                                             start, stop, self.manifest, self.batch_size)
            except Exception as exc:
                error = _pack(exc)
        return {"start": np.array([start]), "stop": np.array([stop]),
                "data": np.array([data], dtype=object),
                "shapes": np.array([json.dumps(shapes)]),
                "error": np.array([error], dtype=object)}


def _load(source: tuple[str, Any], fingerprint: str, device: str) -> Model:
    """The actor's model: the spec loaded on this node (and checked to be the driver's), or
    the driver's :class:`Model` from the object store."""
    import ray

    from lamina.fingerprint import model_fingerprint
    from lamina.models import load

    kind, value = source
    if kind == "object":
        return load(ray.get(value), device=device)
    model = load(value, device=device)
    if model_fingerprint(model) != fingerprint:
        node = ray.get_runtime_context().get_node_id()
        raise LaminaError(
            f"The model {value!r} as loaded on Ray node {node} differs from the one the driver "
            "loaded (its weights or config): make the same model files available on every "
            "node, or pass the loaded Model object.")
    return model


def _pack(exc: Exception) -> bytes:
    """An exception raised in an actor as JSON: its class, message (and CLI wording) for
    lamina's errors, else its traceback text (no pickle: nothing is unpickled)."""
    if isinstance(exc, LaminaError):
        record = {"module": type(exc).__module__, "type": type(exc).__name__,
                  "message": str(exc), "cli": exc.cli}
    else:
        record = {"type": type(exc).__name__, "message": "".join(
            traceback.format_exception(exc)).rstrip()}
    return json.dumps(record).encode()


def _remote_error(data: Any) -> Exception:
    """The exception :func:`_pack` describes: the same LaminaError class and messages, or a
    RuntimeError naming the worker's exception with its traceback."""
    import importlib

    record = json.loads(bytes(data))
    if "module" in record and record["module"].startswith("lamina."):
        cls = getattr(importlib.import_module(record["module"]), record["type"], None)
        if isinstance(cls, type) and issubclass(cls, LaminaError):
            return cls(record["message"], cli=record["cli"])
    return RuntimeError(f"{record['type']} in a Ray capture worker:\n{record['message']}")


def _lost_worker(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) says a worker, its node or its objects were lost."""
    import ray.exceptions as rex
    from ray.data.exceptions import ExecutionTimeoutError

    lost = (rex.ActorDiedError, rex.ActorUnavailableError, rex.WorkerCrashedError,
            rex.NodeDiedError, rex.ObjectLostError, rex.OwnerDiedError,
            rex.RaySystemError, rex.LocalRayletDiedError, ExecutionTimeoutError)
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, lost):
            return True
        exc = exc.__cause__ or exc.__context__ or getattr(exc, "cause", None)
    return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


__all__ = ["ATTEMPTS", "LaminaCapture", "RayPlan", "check_engine_args"]
