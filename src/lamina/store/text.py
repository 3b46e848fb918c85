"""The strings a store holds: a list, or every unique substring of a text."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lamina.errors import LaminaError


@dataclass
class Substrings:
    """All unique length-``n`` substrings of ``text`` in order of first occurrence, with the
    offset of that occurrence (so next-token statistics can be computed from the text)."""

    text: str
    n: int
    strings: list[str]
    offsets: np.ndarray  # [n_strings] int64, first occurrence

    def __len__(self) -> int:
        return len(self.strings)


def substrings(text: str, n: int) -> Substrings:
    """All unique substrings of length ``n`` of ``text`` (TinyShakespeare, n=10: 858,923)."""
    if not isinstance(text, str):
        raise LaminaError(f"substrings() takes a text (str), not {type(text).__name__}.")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or n > len(text):
        raise LaminaError(f"n must be between 1 and the text's length ({len(text)}), not {n}.",
                          cli=f"--substrings must be between 1 and the length of --text-file "
                              f"({len(text)}), not {n}.")
    first: dict[str, int] = {}
    for i in range(len(text) - n + 1):
        first.setdefault(text[i : i + n], i)
    return Substrings(text, n, list(first), np.fromiter(first.values(), dtype=np.int64))


def strings_fingerprint(strings: Sequence[str]) -> str:
    """sha256 of the strings (each followed by a NUL byte): the manifest's ``fingerprint``."""
    h = hashlib.sha256()
    for s in strings:
        h.update(s.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()
