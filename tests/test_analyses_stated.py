"""Behaviours of the analyses that are not errors, each stated in the result (and on the
command line) and checked against an independent computation: an encoder in ``pathlength``,
a text too short for correlations, the key-side fallback of ``alignment``, a text that names a
file in ``contexts``, undefined statistics in ``categories`` and ``embeddings``; and NaN input
to the geometry helpers. (The bad-input tables are in ``test_bad_input_analyses.py``.)"""

from __future__ import annotations

import importlib
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers

import lamina
from badinput import cli_ok
from conftest import bert_tokenizer, save_model, tiny
from lamina.analyses import alignment, categories, contexts, embeddings, pathlength
from lamina.analyses.categories import read_words
from lamina.geometry import cosine, project
from lamina.similarity import UndefinedStatisticWarning


def small_bert() -> lamina.Model:
    """A BERT encoder with a 200-token vocabulary (fast whole-vocabulary sweeps) and non-zero
    biases (so that the default query, the query bias, is not zero)."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=200, num_hidden_layers=2, hidden_size=32,
                                  num_attention_heads=4, intermediate_size=64,
                                  max_position_embeddings=64)
    hf = transformers.BertModel(cfg).eval()
    for name, param in hf.named_parameters():
        if name.endswith("bias"):
            param.data = torch.randn(param.shape) * 0.5
    return lamina.load((hf, bert_tokenizer()))


@pytest.fixture(scope="module")
def models() -> dict[str, lamina.Model]:
    return {"gpt2": tiny("gpt2"), "bert": tiny("bert")}


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("stated")
    out = {}
    for name, model in (("gpt2", tiny("gpt2")), ("bert", tiny("bert")),
                        ("small_bert", small_bert())):
        save_model(model, root / name)
        out[name] = str(root / name)
    (root / "words.csv").write_text("label,word\nx,cat\nx,dog\ny,red\ny,blue\n")
    out["good"] = str(root / "words.csv")
    return out


def test_pathlength_encoder_gives_path_lengths_and_says_why_no_correlation(
        models: dict[str, lamina.Model], paths: dict[str, str]) -> None:
    text = "the cat sat on the mat and looked at the moon"
    result = pathlength({"enc": models["bert"], "dec": models["gpt2"]}, text)
    rows = result.per_model.set_index("model")
    assert re.search(r"need a causal LM.*not one \(bert\)", rows.loc["enc", "correlation_note"])
    assert np.isnan(rows.loc["enc", "pearson_r"])
    assert rows.loc["dec", "correlation_note"] == "" and np.isfinite(rows.loc["dec", "pearson_r"])
    assert result.notes() == [f"enc: {rows.loc['enc', 'correlation_note']}"]
    # the encoder's path lengths are still there, and right
    ids = torch.tensor([models["bert"].to_tokens(text)[0]])
    with torch.no_grad():
        hs = models["bert"].hf_model(input_ids=ids, output_hidden_states=True).hidden_states
    h = np.stack([x[0].double().numpy() for x in hs])
    frame = result.to_frame()
    wide = frame[frame["model"] == "enc"].pivot(index="layer", columns="position",
                                                values="step_norm").to_numpy()
    np.testing.assert_allclose(wide[1:], np.linalg.norm(np.diff(h, axis=0), axis=-1),
                               rtol=1e-5)
    out = cli_ok(["pathlength", "-m", paths["bert"], "--text", text])
    assert re.search(r"note: .*: path lengths only: .*need a causal LM", out)


def test_pathlength_says_when_a_text_is_too_short(models: dict[str, lamina.Model]) -> None:
    summary = pathlength(models["gpt2"], [5, 6]).per_model.iloc[0]
    assert "too short" in summary["correlation_note"] and summary["n_tokens"] == 2
    summary = pathlength(models["gpt2"], [5, 6, 7, 8]).per_model.iloc[0]
    assert summary["n_pairs"] == 2 and np.isnan(summary["pearson_r"])
    assert "2 usable position(s)" in summary["correlation_note"]


def test_pathlength_loads_each_model_once(monkeypatch, paths: dict[str, str]) -> None:
    # the loader the analyses' helper (lamina.analyses.layerwise.load_models) calls
    module = importlib.import_module("lamina.models")  # not the function
    calls: list[Any] = []

    def counting_load(spec: Any, **kwargs: Any) -> lamina.Model:
        calls.append(spec)
        return lamina.load(spec, **kwargs)

    monkeypatch.setattr(module, "load", counting_load)
    result = pathlength({"a": paths["gpt2"], "b": paths["bert"]}, "the cat sat on the mat")
    assert calls == [paths["gpt2"], paths["bert"]]
    assert set(result.meta["models"]) == {"a", "b"}


def test_alignment_records_the_key_side_matrices(paths: dict[str, str]) -> None:
    model = small_bert()  # post-LN: no effective embedding, so W_E alone
    res = alignment(model, 1, 2, query=np.linspace(-1, 1, model.d_head), n_sequences=3,
                    seq_len=4, positions=(0, 3))
    side = res.meta["key_side"]
    assert side["matrices"] == ["W_E"] == list(res.key_side)
    assert side["fallback"].startswith("W_E only: The effective embedding is defined for pre-LN")
    from lamina.weights import head_weights

    hw = head_weights(model, 1)
    keys = model.hf_model.embeddings.word_embeddings.weight.detach().double().numpy() @ \
        hw.W_K[hw.kv_head(2)].double().numpy()
    q = np.linspace(-1, 1, model.d_head).astype(np.float32).astype(np.float64)  # as used
    norms = np.linalg.norm(keys, axis=1)
    zero = norms == 0  # BERT's [PAD] row starts at zero: no cosine, and it is counted
    assert side.get("W_E_zero_rows", 0) == int(zero.sum()) >= 1
    assert np.isnan(res.key_side["W_E"][zero]).all()
    np.testing.assert_allclose(res.key_side["W_E"][~zero],
                               keys[~zero] @ q / norms[~zero] / np.linalg.norm(q), atol=1e-10)
    out = cli_ok(["alignment", "-m", paths["small_bert"], "--layer", "1", "--head", "2",
                  "--n-sequences", "3", "--seq-len", "4"])
    assert "key side: W_E only: The effective embedding is defined for pre-LN" in out
    out = cli_ok(["alignment", "-m", "shakespeare-char", "--layer", "0", "--head", "0",
                  "--n-sequences", "3", "--seq-len", "4"])
    assert "key side: W_E, W_EE, mlp, attn_mlp" in out
    char = alignment("shakespeare-char", 0, 0, n_sequences=3, seq_len=4, positions=(0,))
    assert char.meta["key_side"] == {"matrices": ["W_E", "W_EE", "mlp", "attn_mlp"],
                                     "fallback": None}


def test_contexts_text_is_never_read_as_a_path(monkeypatch, tmp_path,
                                               models: dict[str, lamina.Model]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "king").write_text("nothing to see here")  # a file named like the text
    text = "king lord and king lord and the king met the lord"
    result = contexts(models["gpt2"], "king lord and king lord and the king met the lord",
                      ["king", "lord"], window=1, baseline=0, sites=["hidden.1"])
    counts = result.counts.set_index("word")
    assert counts.loc["king", "occurrences"] == text.split().count("king") == 3
    assert counts.loc["lord", "occurrences"] == 3
    assert result.meta["corpus"] == f"<text of {len(text)} characters>"
    (tmp_path / "corpus.txt").write_text(text)
    from_file = contexts(models["gpt2"], Path("corpus.txt"), ["king", "lord"], window=1,
                         baseline=0, sites=["hidden.1"])
    assert from_file.to_frame().equals(result.to_frame())
    assert from_file.meta["corpus"] == "corpus.txt"


def test_categories_state_undefined_statistics_instead_of_warning(
        models: dict[str, lamina.Model], paths: dict[str, str]) -> None:
    words = [("x", "cat"), ("x", "dog"), ("y", "red"), ("y", "blue"), ("y", "green")]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndefinedStatisticWarning)
        result = categories(models["gpt2"], words, permutations=0, baseline=0,
                            sites=["hidden.1"])
    # category x has one within pair: its row of the pair table has no variance, and it says so
    pairs = result.pairs.set_index(["group_a", "group_b"])
    assert pairs.loc[("x", "x"), "count"] == 1 and np.isnan(pairs.loc[("x", "x"), "var"])
    assert any("single pair" in note for note in result.summary["notes"])
    out = cli_ok(["categories", "-m", paths["gpt2"], "--words", paths["good"],
                  "--permutations", "0", "--site", "hidden.1"])
    assert "note: 2 rows of the table hold a single pair" in out


def test_word_lists_keep_na_like_words_and_strip_spaces(tmp_path) -> None:
    path = tmp_path / "w.csv"
    path.write_text("label,word\nx, NA\nx,null \ny,nan\ny,cat\n")
    frame = read_words(path)
    assert list(frame["word"]) == ["NA", "null", "nan", "cat"]
    assert list(frame["label"]) == ["x", "x", "y", "y"]


def test_embeddings_say_when_agreement_is_undefined(models: dict[str, lamina.Model]) -> None:
    agree = embeddings(models["gpt2"], tokens=[5, 6], bins=4, topk=1, n_scatter=50
                       ).summary["cosine_correlation_agreement"]
    # every sampled pair is (5, 6): one value, so no correlation between cosine and correlation
    assert agree["pearson_r"] is None and "do not vary" in agree["note"]
    W = models["gpt2"].hf_model.transformer.wte.weight.detach().double()
    expected = torch.nn.functional.cosine_similarity(W[5], W[6], dim=0).item()
    assert agree["n_sampled_pairs"] > 0
    model = tiny("gpt2")
    with torch.no_grad():
        model.hf_model.transformer.wte.weight[7] = 0.0
    res = embeddings(model, tokens=[5, 6, 7], bins=4, topk=1, n_scatter=200)
    # the zero row takes part in no pair: the sample holds only the (5, 6) cosine
    np.testing.assert_allclose(res.arrays["scatter_cos"], expected, rtol=1e-12)


def test_geometry_refuses_nan_and_infinity() -> None:
    with pytest.raises(lamina.LaminaError, match="NaN or infinite"):
        cosine(np.array([np.nan, 1.0]), np.ones(2))
    with pytest.raises(lamina.LaminaError, match="NaN or infinite"):
        project(np.ones((2, 3)), np.array([np.inf, 0.0, 1.0]))
    np.testing.assert_allclose(cosine(np.array([3.0, 4.0]), np.array([4.0, 3.0])).item(), 0.96)
