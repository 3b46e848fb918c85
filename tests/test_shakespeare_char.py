"""The built-in character model: loads offline, agrees with its model card, and every
layer-wise analysis runs on it (the first seed notebook's model, trained by lamina)."""

from __future__ import annotations

import re
import socket

import numpy as np
import pytest
import torch

import lamina
from lamina.analyses import alignment, categories, contexts, lens, norms, pathlength
from lamina.corpus import tinyshakespeare
from lamina.modelcard import HELDOUT_WINDOWS, heldout_loss

LINE = "ROMEO:\nBut, soft! what light through yonder window breaks?"


@pytest.fixture(scope="module")
def char_model() -> lamina.Model:
    return lamina.load("shakespeare-char", device="cpu")


def test_loads_with_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    model = lamina.load("shakespeare-char")
    assert model.family == "gpt2" and model.vocab_size == 65 and model.is_causal


def test_validation_loss_agrees_with_model_card(char_model: lamina.Model) -> None:
    card = (lamina.BUILTINS["shakespeare-char"]() / "MODEL_CARD.md").read_text()
    row = re.search(rf"first {HELDOUT_WINDOWS} windows[^|]*\| ([0-9.]+) nats", card)
    assert row, "the model card lacks the held-out slice loss"
    loss = heldout_loss(char_model, None, tinyshakespeare(), windows=HELDOUT_WINDOWS)
    assert loss == pytest.approx(float(row.group(1)), abs=2e-4)
    final = re.search(r"\*\*final validation loss\*\*[^|]*\| \*\*([0-9.]+)", card)
    assert final and float(final.group(1)) < 2.0


def test_tokenizer_round_trips_the_corpus(char_model: lamina.Model) -> None:
    text = tinyshakespeare()
    ids = char_model.tokenizer(text)["input_ids"]
    assert len(ids) == len(text) and char_model.tokenizer.decode(ids) == text


def test_layerwise_analyses_run_on_the_char_model(char_model: lamina.Model) -> None:
    pl = pathlength(char_model, LINE)
    row = pl.per_model.iloc[0]
    assert row["n_pairs"] == len(LINE) - 2 and np.isfinite(row["pearson_r"])
    ln = lens(char_model, LINE).to_frame()
    last = ln[ln["layer"] == ln["layer"].max()]
    with torch.no_grad():
        ids = torch.tensor([char_model.to_tokens(LINE)[0]])
        probs = torch.softmax(char_model.hf_model(input_ids=ids).logits[0].double(), -1)
    np.testing.assert_allclose(last["top_prob"], probs.max(-1).values.numpy(), rtol=1e-4)
    nm = norms(char_model, [LINE[:40], "KING HENRY:\nNow, lords"], sites=["resid_post.*",
                                                                             "mlp_out.*"])
    assert len(nm.to_frame()) == 2 * char_model.n_layers
    words = [("royal", w) for w in ["king", "queen", "prince"]] + [
        ("body", w) for w in ["hand", "heart", "eye"]]
    cat = categories(char_model, words, template="the {word}", pooling="last",
                     permutations=50, baseline=0)
    assert len(cat.to_frame()) == char_model.n_layers + 1
    corpus = tinyshakespeare()[:100_000]
    ctx = contexts(char_model, corpus, ["K", "J"], window=40, max_per_target=50, baseline=0)
    assert dict(zip(ctx.counts["word"], ctx.counts["sampled"], strict=True)) == {
        w: corpus[40:].count(w) for w in "KJ"}  # 6 and 10: every usable occurrence
    # hidden.0 is the embedding at the window's last position: the same word is the same vector
    assert ctx.to_frame()["within_mean"].iloc[0] == pytest.approx(1.0, abs=1e-6)
    al = alignment(char_model, 1, 0, n_sequences=100, seq_len=40)
    assert len(al.vocab_cosines) == 65 and list(al.by_position()["position"]) == [0, 9, 19, 39]
