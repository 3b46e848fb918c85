"""One writer per store: ``collect`` holds ``collect.lock`` in the store directory.

The lock file is created atomically (``O_CREAT | O_EXCL``) and holds the owner's pid, host and
start time; it is removed when ``collect`` ends, also on an exception. A lock left by a process
that no longer runs on this host (killed) is taken over, with a note; a lock of a running
process, or of another host (whose processes cannot be seen from here), is refused.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lamina.errors import StoreLockedError

LOCK = "collect.lock"
#: A lock file still empty or unreadable after this many seconds was left by a killed writer.
_UNREADABLE_STALE_S = 30.0

log = logging.getLogger("lamina.store")


def _read(path: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child not yet reaped by its parent is a zombie: it writes nothing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _stale(path: Path, holder: dict[str, Any] | None) -> bool:
    if holder is None:
        try:
            return time.time() - path.stat().st_mtime > _UNREADABLE_STALE_S
        except FileNotFoundError:
            return True
    pid = holder.get("pid")
    return (holder.get("host") == socket.gethostname() and isinstance(pid, int)
            and not _alive(pid))


def _take_over(path: Path, holder: dict[str, Any] | None, token: str) -> None:
    """Remove a stale lock, unless another writer replaced it meanwhile (then put it back)."""
    aside = path.with_name(f"{path.name}.stale-{token}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if _read(aside) != holder:  # raced with another writer: that lock is not stale
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
        aside.unlink()
        return
    aside.unlink()
    who = (f"process {holder.get('pid')} on {holder.get('host')}, started "
           f"{holder.get('started')}" if holder else "an unreadable lock file")
    log.warning("note: took over the lock of %s, which no longer runs: %s", who, path.parent)


def _refuse(path: Path, holder: dict[str, Any] | None) -> StoreLockedError:
    if holder is None:
        who = "another collect (its lock file is being written)"
    else:
        who = (f"another collect (pid {holder.get('pid')} on host {holder.get('host')}, "
               f"started {holder.get('started')})")
    return StoreLockedError(
        f"{path.parent} is being written by {who}: wait for it to finish and run collect "
        f"again to resume, or use another directory. If no such process runs, delete {path}.")


@contextlib.contextmanager
def writer_lock(directory: Path) -> Iterator[None]:
    """Hold the store's writer lock for the duration of the block (see module docstring)."""
    path = directory / LOCK
    token = uuid.uuid4().hex
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "token": token}
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if not _stale(path, holder):
                raise _refuse(path, holder) from None
            _take_over(path, holder, token)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(info, f)
            f.flush()
            os.fsync(f.fileno())
        break
    else:
        raise _refuse(path, _read(path))
    try:
        yield
    finally:
        if (_read(path) or {}).get("token") == token:
            path.unlink(missing_ok=True)
