"""``lamina train`` and ``lamina generate``: the character model's commands, registered on
the same app as :mod:`lamina.cli`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lamina.cli_common import ModelOpt, _friendly, app
from lamina.cli_format import _old, renamed
from lamina.errors import LaminaError


@app.command()
@_friendly
def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output model directory.")],
    text_file: Annotated[Path | None, typer.Option(
        "--text-file", help="Training text (a UTF-8 file, read as a whole).")] = None,
    corpus: Annotated[Path | None, _old("--corpus")] = None,
    preset: Annotated[str, typer.Option(help="seed (the notebook's model), small, tiny.")] = "seed",
    steps: Annotated[int | None, typer.Option(help="Override the preset's steps.")] = None,
    device: Annotated[str | None, typer.Option(help="cuda or cpu (default: auto).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (default 1337).")] = None,
) -> None:
    """Train (or resume) a character-level GPT-2; writes a Hugging Face model directory.

    Ctrl-C (or SIGTERM) saves a checkpoint and stops; the same command resumes."""
    import shlex

    from lamina.corpus import read_text_file
    from lamina.outputs import check_output_dir
    from lamina.train import EXPORT_MARKERS, TrainingInterrupted, train_char_lm

    text_file, option = renamed(text_file, corpus, "--text-file", "--corpus")
    if text_file is None:
        raise LaminaError("Missing option '--text-file' (the training text).")
    check_output_dir(out, option="--out", marker=EXPORT_MARKERS)
    text = read_text_file(text_file, option=option)
    command = shlex.join(["lamina", "train", "--text-file", str(text_file), "--out", str(out),
                          "--preset", preset, *(f"--{k}={v}" for k, v in {
                              "steps": steps, "device": device, "seed": seed}.items()
                              if v is not None)])
    try:
        result = train_char_lm(text, out, preset=preset, steps=steps, device=device, seed=seed,
                               command=command)
    except TrainingInterrupted as stop:
        typer.secho(str(stop), fg="yellow", err=True)
        raise typer.Exit(128 + stop.signum) from None
    typer.echo(f"train loss {result.train_loss:.4f}, validation loss {result.val_loss:.4f}, "
               f"{result.n_params:,} parameters; wrote {result.path}")


@app.command()
@_friendly
def generate(
    model: ModelOpt = "shakespeare-char",
    prompt: Annotated[str, typer.Option(help="Text to continue.")] = "ROMEO:",
    n: Annotated[int, typer.Option("-n", help="Tokens to generate.")] = 500,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    progress: Annotated[bool, typer.Option(help="Progress bar on stderr.")] = True,
) -> None:
    """Sample a continuation of a prompt (seeded, with temperature), reusing the key/value
    cache; the text is printed on stdout."""
    from lamina.sampling import generate as run

    typer.echo(run(model, prompt, n, temperature=temperature, top_k=top_k, seed=seed,
                   progress=progress))
