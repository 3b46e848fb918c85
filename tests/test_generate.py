"""``generate`` reuses the key/value cache and gives the tokens of the plain loop that
encodes the text from its start token afresh at every step (the reference below, written
independently): the start moves to the last 3/4 of the window when the text outgrows it."""

from __future__ import annotations

import functools

import pytest
import torch

import lamina
from conftest import tiny
from lamina.sampling import generate


@torch.inference_mode()
def _uncached(model: lamina.Model, prompt: str, n: int, temperature: float, top_k: int | None,
              seed: int) -> str:
    ids = list(model.tokenizer(prompt)["input_ids"])
    window = model.max_length
    start = max(0, len(ids) - window)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        if len(ids) - start > window:
            start = len(ids) - window * 3 // 4
        context = torch.tensor([ids[start:]])
        logits = model.hf_model(input_ids=context, use_cache=False).logits[0, -1].float()
        if temperature == 0:
            ids.append(int(logits.argmax()))
            continue
        logits = (logits - logits.max()) / temperature
        if top_k is not None:
            kth = torch.topk(logits, top_k).values[-1]
            logits[logits < kth] = float("-inf")
        ids.append(int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)))
    return model.decode(ids)


@pytest.fixture(scope="module")
def char_model() -> lamina.Model:
    return lamina.load("shakespeare-char")


@pytest.mark.parametrize(("temperature", "top_k", "seed"), [(1.0, None, 1), (0.8, 5, 7)])
def test_cached_equals_uncached_char_model(char_model, temperature, top_k, seed) -> None:
    got = generate(char_model, "ROMEO:", 40, temperature=temperature, top_k=top_k, seed=seed,
                   progress=False)
    assert got == _uncached(char_model, "ROMEO:", 40, temperature, top_k, seed)
    assert got.startswith("ROMEO:") and len(got) == len("ROMEO:") + 40


def test_beyond_the_window_tiny_gpt2() -> None:
    """64-token context, 80 new tokens: the window slides past the cache."""
    model = tiny("gpt2")
    assert model.max_length == 64
    got = generate(model, "the cat sat on the mat", 80, seed=3, progress=False)
    assert got == _uncached(model, "the cat sat on the mat", 80, 1.0, None, 3)


def test_prompt_longer_than_window_tiny_gpt2() -> None:
    model = tiny("gpt2")
    prompt = " ".join(["word"] * 80)  # more tokens than the 64-token window
    got = generate(model, prompt, 5, temperature=0, progress=False)
    assert got == _uncached(model, prompt, 5, 0.0, None, 0)


def test_cache_is_used_while_the_context_fits(char_model, monkeypatch) -> None:
    """Each step after the first feeds one new token while the text fits the window; past
    the window, 3/4 of it is encoded afresh, then one token per step again."""
    fed: list[int] = []
    forward = char_model.hf_model.forward

    @functools.wraps(forward)
    def spy(*args, **kwargs):
        fed.append(kwargs["input_ids"].shape[1])
        return forward(*args, **kwargs)

    monkeypatch.setattr(char_model.hf_model, "forward", spy)
    window, p = char_model.max_length, len("ROMEO:")
    generate(char_model, "ROMEO:", window - p + 4, seed=1, progress=False)
    assert fed == [p] + [1] * (window - p) + [window * 3 // 4] + [1, 1]


def test_progress_bar_goes_to_stderr(char_model, capsys) -> None:
    generate(char_model, "ROMEO:", 3, seed=1, progress=True)
    assert "generate" in capsys.readouterr().err
    generate(char_model, "ROMEO:", 3, seed=1, progress=False)
    assert capsys.readouterr().err == ""


def test_cli_prints_the_text_and_no_bar_with_no_progress() -> None:
    from typer.testing import CliRunner

    from lamina.cli import app

    args = ["generate", "--model", "shakespeare-char", "--prompt", "ROMEO:", "-n", "20",
            "--seed", "1"]
    quiet = CliRunner().invoke(app, [*args, "--no-progress"])
    assert quiet.exit_code == 0, quiet.output
    expected = generate("shakespeare-char", "ROMEO:", 20, seed=1, progress=False)
    assert quiet.stdout == expected + "\n"
    assert "generate" not in quiet.stderr
