"""Training the character model: loss goes down, exports reload identically, a killed run
resumes bit for bit, the tokenizer round-trips and rejects unknown characters."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
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
from badinput import cli_ok
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
    result = runner.invoke(app, ["train", "--text-file", str(corpus), "--out", str(out),
                                 "--preset", "tiny", "--steps", "10"])
    assert result.exit_code == 0, result.output
    assert "lamina train --text-file" in (out / "MODEL_CARD.md").read_text()
    result = runner.invoke(app, ["generate", "--model", str(out), "--prompt", "KING", "-n", "20",
                                 "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("KING") and len(result.stdout.rstrip("\n")) >= 24


def _weights_equal(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_sigterm_saves_a_checkpoint_and_the_same_command_resumes(tmp_path: Path) -> None:
    text_file = tmp_path / "text.txt"
    text_file.write_text(TEXT)
    out = tmp_path / "model"
    args = ["train", "--text-file", text_file, "--out", out, "--preset", "tiny"]
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from lamina.cli import main; sys.exit(main())",
         *map(str, args), "--steps", "1000000"], stderr=subprocess.PIPE, text=True)
    state = out / "checkpoint" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline and not state.exists() and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    step = json.loads(state.read_text())["step"]
    assert f"interrupted at step {step} of 1000000" in stderr, stderr
    assert "run the same command again to resume" in stderr and "Traceback" not in stderr
    # the checkpoint is of the step the signal stopped (not only every checkpoint_every), and
    # nothing that looks like a finished model was written
    assert step >= 1 and sorted(p.name for p in out.iterdir()) == ["checkpoint"]
    total = step + 7
    cli_ok([*args, "--steps", total])
    reference = tmp_path / "reference"
    train_char_lm(TEXT, reference, preset="tiny", steps=total, progress=False)
    _weights_equal(reference, out)
    assert json.loads(state.read_text())["step"] == total
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_failed_export_leaves_the_previous_model_and_its_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lamina.modelcard as modelcard

    out = tmp_path / "model"
    train_char_lm(TEXT, out, preset="tiny", steps=5, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert {"config.json", "model.safetensors", "MODEL_CARD.md"} <= before.keys()

    def broken(*args: object, **kwargs: object) -> float:
        raise OSError("disk full")

    monkeypatch.setattr(modelcard, "heldout_loss", broken)  # half-way through the export
    with pytest.raises(OSError, match="disk full"):
        train_char_lm(TEXT, out, preset="tiny", steps=10, progress=False)
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before  # the 5-step export, untouched
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 10
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    monkeypatch.undo()
    train_char_lm(TEXT, out, preset="tiny", steps=10, progress=False)  # exports the 10 steps
    assert "| steps | 10 " in (out / "MODEL_CARD.md").read_text()
    assert (out / "checkpoint" / "state.json").exists()


def test_model_card_escapes_the_recorded_command(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib
    from markdown_it import MarkdownIt

    def no_backend_switch(*args: object, **kwargs: object) -> None:
        raise AssertionError("a library function switched matplotlib's backend")

    monkeypatch.setattr(matplotlib, "use", no_backend_switch)
    corpus = tmp_path / "c`<img src=x onerror=alert(1)>|x``.txt"
    corpus.write_text(TEXT[:5000])
    out = tmp_path / "model"
    cli_ok(["train", "--text-file", corpus, "--out", out, "--preset", "tiny", "--steps", "2"])
    card = (out / "MODEL_CARD.md").read_text()
    html = MarkdownIt("commonmark").enable("table").render(card)
    # the only image is the loss curve; the corpus name's tag is shown as text
    assert re.findall(r"<img[^>]*>", html) == ['<img src="loss_curve.png" alt="loss curve" />']
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    rows = re.findall(r"<tr>(.*?)</tr>", html, re.S)
    assert len(rows) == 12  # header + 11 rows, each of two cells
    assert all(len(re.findall(r"<t[dh]>", row)) == 2 for row in rows)
    code = re.search(r"<td><code>(lamina train.*?)</code></td>", html, re.S)
    assert code and __import__("html").unescape(code.group(1)) == shlex.join(
        ["lamina", "train", "--text-file", str(corpus), "--out", str(out), "--preset", "tiny",
         "--steps=2"])


def test_training_restores_the_signal_handlers(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    train_char_lm(TEXT, tmp_path / "m", preset="tiny", steps=1, progress=False)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    # a one-step run still leaves a checkpoint to resume from
    assert json.loads((tmp_path / "m" / "checkpoint" / "state.json").read_text())["step"] == 1
