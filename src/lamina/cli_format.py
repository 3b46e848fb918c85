"""How the command line prints tables (in full, never pandas' '...' columns; floats to 4
significant digits; short headers that keep the headline numbers within 100 characters) and
how it keeps old option spellings working."""

from __future__ import annotations

from typing import Any

import typer

from lamina.errors import LaminaError

CONTEXT_COLUMNS = {"site": "site", "within_mean": "within", "across_mean": "across",
                   "delta": "delta", "t": "t", "cohens_d": "d", "centred_delta": "centred",
                   "baseline_mean": "baseline"}
CATEGORY_COLUMNS = {**CONTEXT_COLUMNS, "p_permutation": "p_permutation"}
PATHLENGTH_COLUMNS = {"model": "model", "n_pairs": "n", "pearson_r": "pearson_r",
                      "pearson_ci_low": "ci_low", "pearson_ci_high": "ci_high",
                      "pearson_p": "p", "spearman_r": "spearman_r", "spearman_p": "p_s",
                      "pearson_r_logprob": "r_logprob", "mean_loss": "mean_loss"}


def number(value: Any) -> str:
    """A float as the console prints it: 4 significant digits."""
    return f"{value:.4g}"


def clip(text: Any, width: int = 32) -> str:
    """A string cut to ``width`` characters (with an ellipsis) so a table stays narrow."""
    text = str(text)
    return text if len(text) <= width else "…" + text[len(text) - width + 1:]


def print_frame(frame: Any, columns: list[str] | dict[str, str] | None = None,
                width: int = 32) -> None:
    """Print a table in full, never with pandas' '...' columns or rows: those of the chosen
    ``columns`` the frame has (a mapping renames them to short headers), floats to 4
    significant digits, strings clipped to ``width`` characters."""
    from pandas.api.types import is_numeric_dtype

    if columns is not None:
        names = columns if isinstance(columns, dict) else {c: c for c in columns}
        names = {k: v for k, v in names.items() if k in frame.columns}  # those that apply
        frame = frame[list(names)].rename(columns=names)
    frame = frame.copy()
    for col in frame.columns:
        if not is_numeric_dtype(frame[col]):
            frame[col] = frame[col].map(lambda v: clip(v, width))
    typer.echo(frame.to_string(index=False, float_format=number))


def _old(name: str) -> Any:
    """A deprecated spelling of an option, kept hidden so existing scripts keep working."""
    return typer.Option(name, hidden=True, help="Deprecated spelling of another option.")


def renamed(new: Any, old: Any, new_name: str, old_name: str) -> tuple[Any, str]:
    """Merge a deprecated option spelling into its new name: the value given and the name it
    came in by (for messages), printing a one-line note when the old spelling was used."""
    if old is None:
        return new, new_name
    if new is not None:
        raise LaminaError(f"Give {new_name} (or its old spelling {old_name}), not both.")
    typer.secho(f"note: {old_name} is deprecated; use {new_name}.", fg="yellow", err=True)
    return old, old_name
