"""Writing outputs safely: check that an output path can be written *before* the work, and
write it atomically (a temporary sibling renamed into place at the end), so an interrupted run
never leaves a half-written result that looks complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from lamina.errors import OutputError


def _flag(option: str) -> str:
    return option if option.startswith("-") else f"{option}="


def _writable_parent(path: Path, what: str, option: str) -> None:
    parent = path.parent
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"Cannot write {what} {path}: {parent} is a file, not a directory. "
                          f"Choose another {_flag(option)}.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"Cannot write {what} {path}: {parent} is not writable. "
                          f"Choose another {_flag(option)}.")


def check_output_dir(path: str | Path, *, option: str = "out",
                     marker: str | tuple[str, ...] | None = None) -> Path:
    """Raise :class:`OutputError` unless ``path`` can be created or written as a directory
    (an existing file, or a read-only parent, is refused). Creates nothing.

    Args:
        option: how the caller's interface names this path (``"out"`` for a Python
            argument, ``"--out"`` for a CLI option), used in the message.
        marker: for an output that replaces the directory as a whole (:func:`atomic_dir`):
            the file(s) one of which a previous output holds. A non-empty directory holding
            none of them is refused, so a mistyped path never deletes someone's files.
    """
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise OutputError(f"{p} exists and is a file; the output is a directory. "
                              f"Choose another {_flag(option)}.")
        if not os.access(p, os.W_OK | os.X_OK):
            raise OutputError(f"Output directory {p} is not writable. "
                              f"Choose another {_flag(option)}.")
        markers = (marker,) if isinstance(marker, str) else marker or ()
        if markers and any(p.iterdir()) and not any((p / m).exists() for m in markers):
            raise OutputError(f"{p} is a non-empty directory that holds no previous output "
                              f"({' or '.join(markers)}), and the output replaces it as a "
                              f"whole. Choose a new or empty directory for {_flag(option)}.")
        return p
    _writable_parent(p, "the output directory", option)
    return p


def check_output_file(path: str | Path, *, option: str = "out") -> Path:
    """Raise :class:`OutputError` unless ``path`` can be written as a file (an existing
    directory, or a read-only parent, is refused). Creates nothing."""
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{p} is a directory; the output is a file. "
                          f"Choose another {_flag(option)}.")
    if p.exists() and not os.access(p, os.W_OK):
        raise OutputError(f"Output file {p} is not writable. Choose another {_flag(option)}.")
    _writable_parent(p, "the output file", option)
    return p


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def _absolute(path: str | Path) -> Path:
    """``path`` made absolute without following links (so ``"."`` has a name)."""
    return Path(os.path.abspath(path))


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; when the block ends without an error it
    replaces ``path`` (whose old contents are removed), else it is deleted. A reader sees the
    old directory or the new one, never a half-written one."""
    final = _absolute(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(final)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = _tmp_sibling(final)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``, renamed onto ``path`` when the block ends
    without an error (removed otherwise)."""
    final = _absolute(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(final)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)
