"""Text inputs: the TinyShakespeare corpus shipped with lamina, and reading text files."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from lamina.errors import LaminaError


def tinyshakespeare() -> str:
    """The TinyShakespeare corpus (1,115,394 characters, public domain)."""
    return resources.files("lamina").joinpath("data/tinyshakespeare.txt").read_text("utf-8")


def sample_lines(n: int = 64, min_chars: int = 40) -> list[str]:
    """The first ``n`` lines of TinyShakespeare with at least ``min_chars`` characters."""
    lines = [ln.strip() for ln in tinyshakespeare().splitlines()]
    return [ln for ln in lines if len(ln) >= min_chars][:n]


def read_text_file(path: str | Path, *, option: str = "path") -> str:
    """The contents of a UTF-8 text file, or a :class:`LaminaError` saying that the file is
    missing, is a directory, or is not UTF-8 (with the byte offset), naming ``option`` (the
    argument or CLI option the path came from)."""
    p = Path(path)
    if not p.exists():
        raise LaminaError(f"No such text file: {p} ({option}).")
    if not p.is_file():
        raise LaminaError(f"{p} is not a file ({option}): give a UTF-8 text file.")
    try:
        return p.read_text("utf-8")
    except UnicodeDecodeError as err:
        raise LaminaError(f"{p} is not UTF-8 text (invalid byte at offset {err.start}) "
                          f"({option}): convert it, e.g. `iconv -f latin1 -t utf-8`.") from None
    except OSError as err:
        raise LaminaError(f"Cannot read {p} ({option}): {err.strerror}.") from None


def text_of(source: str | Path) -> str:
    """The text of ``source``: a file's contents when it is a :class:`~pathlib.Path`, else the
    string itself. (A string is always text, never a path, so ``"king"`` is never read from a
    file that happens to be called ``king``: pass ``Path("king")`` to read one.)"""
    if isinstance(source, Path):
        return read_text_file(source)
    if not isinstance(source, str):
        raise LaminaError(f"Expected a text (str) or a file (pathlib.Path), not "
                          f"{type(source).__name__}.")
    return source


def read_lines(path: str | Path, *, option: str = "path") -> list[str]:
    """Non-empty lines of a UTF-8 text file."""
    lines = [ln.strip() for ln in read_text_file(path, option=option).splitlines()
             if ln.strip()]
    if not lines:
        raise LaminaError(f"{path} has no non-empty lines ({option}).")
    return lines
