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


def text_of(source: str | Path) -> str:
    """The text of ``source``: a file's contents when it names an existing file (a ``Path``,
    or a short one-line string), else ``source`` itself."""
    if isinstance(source, Path) or (
        len(source) < 1024 and "\n" not in source and Path(source).is_file()
    ):
        return Path(source).read_text("utf-8")
    return str(source)


def read_lines(path: str | Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file."""
    p = Path(path)
    if not p.is_file():
        raise LaminaError(f"No such text file: {p}.")
    lines = [ln.strip() for ln in p.read_text("utf-8").splitlines() if ln.strip()]
    if not lines:
        raise LaminaError(f"{p} has no non-empty lines.")
    return lines
