"""The Ray runtime as lamina uses it: an optional extra, started only when none is running, and
quiet.

``engine="ray"`` (collection, scans, threshold sums) runs on the Ray runtime of the process: a
user or a test that called ``ray.init(...)`` (or ``ray.init(address="auto")`` on a cluster)
keeps theirs; otherwise lamina starts one with :func:`ensure_ray`, on the local machine or at
``address``. Ray's own logs, its dashboard and Ray Data's progress bars are off unless
``LAMINA_RAY_VERBOSE=1``: the user sees lamina's one progress bar.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from typing import Any

from lamina.errors import LaminaError

#: The engines of collect, scan and threshold_sums.
ENGINES = ("local", "ray")

_INSTALL = "pip install 'lamina[ray]'"


def check_engine(engine: Any, option: str = "engine") -> str:
    """``engine`` if it is "local" or "ray", else a clear error."""
    if engine not in ENGINES:
        raise LaminaError(f"{option} must be 'local' or 'ray', not {engine!r}.")
    return engine


def require_ray(what: str = "engine='ray'", cli: str = "--ray") -> Any:
    """Import Ray (with Ray Data) or say how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - collection runs on Ray Data
    except ImportError:
        raise LaminaError(f"{what} needs Ray, an optional extra: {_INSTALL}.",
                          cli=f"{cli} needs Ray, an optional extra: {_INSTALL}.") from None
    return ray


def verbose() -> bool:
    """Whether Ray may print its own logs and progress bars (``LAMINA_RAY_VERBOSE=1``)."""
    return os.environ.get("LAMINA_RAY_VERBOSE", "") not in ("", "0")


def ensure_ray(address: str | None = None, num_cpus: int | None = None,
               num_gpus: int | None = None) -> Any:
    """The running Ray runtime, or a new one when none is initialised: the cluster at
    ``address`` ("auto": the one ``ray start`` runs on this node; ``RAY_ADDRESS`` when set), else
    a runtime of this machine alone with ``num_cpus``/``num_gpus``. Returns the ``ray`` module.

    lamina never shuts down a runtime it did not start; one it started lives as long as the
    process (the next call reuses it)."""
    ray = require_ray()
    if not ray.is_initialized():
        loud = verbose()
        kwargs: dict[str, Any] = dict(
            include_dashboard=False, log_to_driver=loud,
            logging_level=logging.INFO if loud else logging.ERROR,
            configure_logging=True,
        )
        if address is None and not os.environ.get("RAY_ADDRESS"):
            # a new runtime on this machine, never a stale or other user's cluster that
            # `ray start` left registered in /tmp/ray (join one with address="auto")
            address = "local"
        if address is not None:
            kwargs["address"] = address
        if address == "local":
            kwargs.update({k: v for k, v in (("num_cpus", num_cpus), ("num_gpus", num_gpus))
                           if v is not None})
        # keep CUDA_VISIBLE_DEVICES as Ray will in future versions (and skip its notice)
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore" if not loud else "default")
                ray.init(**kwargs)
        except ConnectionError as exc:
            raise LaminaError(
                f"Could not reach a Ray cluster at {address!r} ({exc}); start one with "
                "`ray start --head` or pass address=None for this machine.",
                cli=f"Could not reach a Ray cluster at {address!r} ({exc}); start one with "
                    "`ray start --head` or leave out --address for this machine.") from None
    quiet_ray_data()
    return ray


def quiet_ray_data() -> None:
    """Ray Data without its progress bars and INFO lines (unless ``LAMINA_RAY_VERBOSE=1``)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    if not verbose():
        ctx.enable_progress_bars = False
        for attr in ("enable_operator_progress_bars", "print_on_execution_start",
                     "enable_progress_bar_name_truncation"):
            if hasattr(ctx, attr):
                setattr(ctx, attr, False)
        for name in ("ray.data", "ray", "ray.data._internal"):
            logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def ray_data_silenced() -> Iterator[None]:
    """Ray Data's loggers off while lamina runs a pipeline whose failures it handles itself
    (a lost worker is logged by Ray Data as an ERROR with its stack trace; lamina notes it and
    starts a new pipeline); on unless ``LAMINA_RAY_VERBOSE=1``."""
    names = ["ray.data", *(name for name in logging.root.manager.loggerDict
                           if name.startswith("ray.data."))]
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    if not verbose():
        for logger in loggers:
            if logger is loggers[0] or logger.level:
                logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
