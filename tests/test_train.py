"""Training the character model: loss goes down, exports reload identically, a killed run
resumes bit for bit, the tokenizer round-trips and rejects unknown characters."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import lamina
from lamina.cli import app
from lamina.corpus import tinyshakespeare
from lamina.errors import TokenizationError
from lamina.sampling import generate
from lamina.train import char_tokenizer, split_text, train_char_lm

TEXT = tinyshakespeare()[:60_000]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("char")
    train_char_lm(TEXT, out, preset="tiny", steps=60, progress=False)
    return out


def test_training_lowers_the_loss(trained: Path) -> None:
    import pandas as pd

    log = pd.read_csv(trained / "training_log.csv")
    vocab = len(set(TEXT))
    first_val = log["val_loss"].dropna().iloc[0]
    last_val = log["val_loss"].dropna().iloc[-1]
    assert log["train_loss"].iloc[0] == pytest.approx(math.log(vocab), abs=0.3)
    assert last_val < first_val - 0.3
    card = (trained / "MODEL_CARD.md").read_text()
    assert "parameters" in card and "final validation loss" in card and "loss_curve.png" in card
    assert (trained / "loss_curve.png").exists()


def test_export_reloads_with_identical_logits(trained: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = lamina.load(str(trained))
    hf = AutoModelForCausalLM.from_pretrained(trained).eval()
    tok = AutoTokenizer.from_pretrained(trained)
    ids = tok("ROMEO: what light")["input_ids"]
    assert ids == model.to_tokens("ROMEO: what light")[0]
    with torch.no_grad():
        a = model.hf_model(input_ids=torch.tensor([ids])).logits
        b = hf(input_ids=torch.tensor([ids])).logits
    assert torch.equal(a, b)
    assert model.family == "gpt2" and model.vocab_size == len(set(TEXT))


def test_tokenizer_roundtrips_corpus_and_rejects_unknown() -> None:
    text = tinyshakespeare()
    chars, train, val = split_text(text)
    assert len(chars) == 65 and len(train) + len(val) == len(text)
    assert len(val) == len(text) - int(0.9 * len(text))
    tok = char_tokenizer(chars)
    ids = tok(text[:20000])["input_ids"]
    assert len(ids) == 20000 and tok.decode(ids) == text[:20000]
    assert [tok.convert_ids_to_tokens(i) for i in range(len(chars))] == chars
    with pytest.raises(Exception, match="UNK"):
        tok("café")


def test_lamina_names_unknown_characters(trained: Path) -> None:
    model = lamina.load(str(trained))
    with pytest.raises(TokenizationError, match="é"):
        model.collect(["café"], "hidden.1")


def test_killed_run_resumes_bit_for_bit(tmp_path: Path) -> None:
    reference = tmp_path / "ref"
    train_char_lm(TEXT, reference, preset="tiny", steps=40, progress=False)
    killed = tmp_path / "killed"
    code = (f"from lamina.train import train_char_lm; import time\n"
            f"text = open({str(tmp_path / 'text.txt')!r}).read()\n"
            f"train_char_lm(text, {str(killed)!r}, preset='tiny', steps=100000, "
            f"progress=False)\n")
    (tmp_path / "text.txt").write_text(TEXT)
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 120
    state = killed / "checkpoint" / "state.json"
    while time.time() < deadline and not (state.exists() and '"step": 1' in state.read_text()):
        time.sleep(0.2)  # wait for a checkpoint at step >= 10
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert state.exists(), "the run never wrote a checkpoint"
    # resume the killed run (its checkpoint may be anywhere before 40) up to step 40
    train_char_lm(TEXT, killed, preset="tiny", steps=40, progress=False)
    a = load_file(str(reference / "model.safetensors"))
    b = load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_generate_is_seeded_and_greedy_is_argmax(trained: Path) -> None:
    model = lamina.load(str(trained))
    a = generate(model, "ROMEO:", 40, seed=3)
    assert a == generate(model, "ROMEO:", 40, seed=3) and a.startswith("ROMEO:")
    assert len(a) == len("ROMEO:") + 40
    greedy = generate(model, "ROMEO:", 5, temperature=0)
    ids = model.to_tokens("ROMEO:")[0]
    for _ in range(5):
        with torch.no_grad():
            ids.append(int(model.hf_model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    assert greedy == model.decode(ids)


def test_cli_train_and_generate(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    out = tmp_path / "model"
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--corpus", str(corpus), "--out", str(out),
                                 "--preset", "tiny", "--steps", "10"])
    assert result.exit_code == 0, result.output
    assert "lamina train --corpus" in (out / "MODEL_CARD.md").read_text()
    result = runner.invoke(app, ["generate", "--model", str(out), "--prompt", "KING", "-n", "20",
                                 "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("KING") and len(result.output.rstrip("\n")) >= 24
