"""Checks shared by the bad-input tests: an error is one line, says what was wrong, and is a
``LaminaError`` in Python or exit code 2 on the command line, never a traceback."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from lamina.cli import main
from lamina.errors import LaminaError


def _check_line(text: str, needles: tuple[str, ...]) -> str:
    assert "Traceback" not in text, text
    errors = [ln for ln in text.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, f"expected one 'error: ' line, got:\n{text}"
    line = errors[0]
    for needle in needles:
        assert re.search(needle, line, re.IGNORECASE), f"{needle!r} not in {line!r}"
    return line


def cli_fails(args: list[str], *needles: str) -> str:
    """Run ``lamina ARGS`` in this process; assert exit code 2, exactly one ``error: `` line on
    stderr matching every regex in ``needles`` (case-insensitive), no traceback. Returns it."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main([str(a) for a in args])
    assert code == 2, f"exit code {code}, stdout:\n{out.getvalue()}\nstderr:\n{err.getvalue()}"
    assert "Traceback" not in out.getvalue()
    return _check_line(err.getvalue(), needles)


def cli_ok(args: list[str]) -> str:
    """Run ``lamina ARGS`` in this process; assert exit code 0 and return stdout."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main([str(a) for a in args])
    assert code == 0, f"exit code {code}, stdout:\n{out.getvalue()}\nstderr:\n{err.getvalue()}"
    return out.getvalue()


def cli_process(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    """Run ``lamina ARGS`` as a separate process (text output captured)."""
    return subprocess.run([sys.executable, "-c", "import sys; from lamina.cli import main; "
                           "sys.exit(main())", *map(str, args)],
                          capture_output=True, text=True, **kwargs)


def api_fails(fn: Callable[[], Any], *needles: str,
              exc: type[BaseException] = LaminaError) -> str:
    """Call ``fn()``; assert it raises ``exc`` (default ``LaminaError``) whose message matches
    every regex in ``needles`` (case-insensitive). Returns the message."""
    with pytest.raises(exc) as info:
        fn()
    message = str(info.value)
    for needle in needles:
        assert re.search(needle, message, re.IGNORECASE), f"{needle!r} not in {message!r}"
    return message
