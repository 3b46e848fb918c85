"""`lamina.analyses.contextuality`: every statistic equals its all-pairs / per-word-SVD
definition computed in numpy (random data with planted word labels, and real `minilm`
activations run one sentence at a time straight through Hugging Face), the standardised
variants, planted massive activations, the CLI and bad inputs."""

from __future__ import annotations

import importlib
import json
import re

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

import lamina
from badinput import api_fails, cli_fails, cli_ok
from lamina.analyses import contextuality
from lamina.analyses.contextuality import contextuality_from_vectors
from lamina.analyses.contextuality_text import split_sentences
from lamina.atlas.sections.contextuality import contextuality_findings
from lamina.corpus import tinyshakespeare

matplotlib.use("Agg")
WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")


# -- the textbook definitions, all pairs explicit ------------------------------------------------
def _pairs_mean(c: np.ndarray, mask: np.ndarray) -> float:
    mask = mask & ~np.eye(len(c), dtype=bool)
    return float(c[mask].mean())


def brute(x: np.ndarray, words: np.ndarray, sents: np.ndarray, min_occ: int) -> dict:
    """Every statistic from the N x N cosine matrix and a numpy SVD per word."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    c = u @ u.T
    types, counts = np.unique(words, return_counts=True)
    chosen = types[counts >= min_occ]
    same = words[:, None] == words[None, :]
    out = {"self_similarity": np.mean([_pairs_mean(c, same & (words == w)[:, None])
                                       for w in chosen]),
           "anisotropy_baseline": float(c[~same].mean()),
           "mean_cosine": _pairs_mean(c, np.ones_like(same))}
    intra = []
    for s in np.unique(sents):
        xs = x[sents == s]
        if len(xs) >= 2:
            m = xs.mean(0)
            intra.append(np.mean(xs @ m / (np.linalg.norm(xs, axis=1) * np.linalg.norm(m))))
    out["intra_sentence_similarity"] = float(np.mean(intra))
    mev = []
    for w in chosen:
        sv = np.linalg.svd(x[words == w], compute_uv=False)
        mev.append(sv[0] ** 2 / (sv ** 2).sum())
    out["mev"] = float(np.mean(mev))
    sv = np.linalg.svd(x, compute_uv=False)
    out["mev_baseline"] = float(sv[0] ** 2 / (sv ** 2).sum())
    off = ~np.eye(len(x), dtype=bool)
    out["dims"] = np.array([(np.outer(u[:, k], u[:, k])[off]).mean() for k in range(x.shape[1])])
    out["per_word"] = {w: (_pairs_mean(c, same & (words == w)[:, None]), m)
                       for w, m in zip(chosen, mev, strict=True)}
    return out


def standardised(x: np.ndarray) -> np.ndarray:
    sd = x.std(0)
    return np.where(sd > 0, (x - x.mean(0)) / np.where(sd > 0, sd, 1), 0.0)


def assert_matches(row: pd.Series, x: np.ndarray, words: np.ndarray, sents: np.ndarray,
                   min_occ: int, rtol: float, atol: float = 1e-12) -> dict:
    b = brute(x, words, sents, min_occ)
    for key in ("self_similarity", "intra_sentence_similarity", "mev", "anisotropy_baseline",
                "mev_baseline", "mean_cosine"):
        np.testing.assert_allclose(row[key], b[key], rtol=rtol, err_msg=key)
    np.testing.assert_allclose(row["self_similarity_adjusted"],
                               b["self_similarity"] - b["anisotropy_baseline"], rtol=rtol)
    np.testing.assert_allclose(row["mev_adjusted"], b["mev"] - b["mev_baseline"], rtol=rtol)
    z = brute(standardised(x), words, sents, min_occ)
    for key in ("self_similarity", "intra_sentence_similarity", "anisotropy_baseline"):
        np.testing.assert_allclose(row[f"{key}_std"], z[key], rtol=rtol, atol=atol,
                                   err_msg=key + "_std")
    return b


# -- random data with planted words ------------------------------------------------------------
def planted(seed: int = 0, d: int = 8) -> tuple[dict, np.ndarray, np.ndarray]:
    """~400 occurrences of 14 word types (some seen 40+ times: more than d, the d x d Gram
    path; some 5-7 times: the row path; some once or twice), in sentences of 1-9 words, with a
    shared offset (anisotropy), a rogue dimension 3 and a constant dimension 5."""
    rng = np.random.default_rng(seed)
    counts = [60, 45, 41, 30, 12, 7, 6, 5, 5, 3, 2, 2, 1, 1]
    words = np.concatenate([np.full(n, f"w{i}") for i, n in enumerate(counts)])
    rng.shuffle(words)
    centres = {f"w{i}": rng.normal(size=d) for i in range(len(counts))}
    out = {}
    for layer, noise in enumerate((0.2, 1.0, 3.0)):
        x = np.stack([centres[w] for w in words]) + noise * rng.normal(size=(len(words), d))
        x += 2.0
        x[:, 3] += 10.0 * layer
        x[:, 5] = 1.5
        out[f"hidden.{layer}"] = x
    sents = np.repeat(np.arange(200), rng.integers(1, 10, size=200))[: len(words)]
    return out, words, rng.permutation(sents)


@pytest.mark.parametrize("block_rows", [37, 100_000])
def test_every_statistic_equals_all_pairs_on_planted_data(block_rows: int) -> None:
    vectors, words, sents = planted()
    result = contextuality_from_vectors(vectors, words, sents, min_occurrences=5,
                                        block_rows=block_rows)
    table = result.to_frame().set_index("site")
    assert list(table.index) == list(vectors)
    for site, x in vectors.items():
        b = assert_matches(table.loc[site], x, words, sents, 5, rtol=1e-9)
        dims = result.dims[result.dims["site"] == site]
        np.testing.assert_allclose(dims["contribution"], np.sort(b["dims"])[::-1][:len(dims)],
                                   rtol=1e-9, atol=1e-15)
        assert dims["dim"].iloc[0] == int(np.argmax(b["dims"])) == table.loc[site, "top_dim"]
        np.testing.assert_allclose(dims["share"].iloc[0], b["dims"].max() / b["dims"].sum())
        per = result.words[result.words["site"] == site].set_index("word")
        assert sorted(per.index) == sorted(b["per_word"])
        for w, (ss, mev) in b["per_word"].items():
            np.testing.assert_allclose(per.loc[w, ["self_similarity", "mev"]], [ss, mev],
                                       rtol=1e-9)
    # the rogue dimension 3 grows with the layer and takes over the mean cosine
    assert table["top_dim"].iloc[-1] == 3 and table["top_dim_share"].iloc[-1] > 0.8
    assert table.loc["hidden.2", "self_similarity_std"] < table.loc["hidden.2",
                                                                    "self_similarity"]


def test_massive_activations_planted_are_found() -> None:
    rng = np.random.default_rng(1)
    for n_tokens in (501, 500):  # odd and even number of entries
        tokens = rng.normal(size=(n_tokens, 16)).astype(np.float32)
        med = float(np.median(np.abs(tokens).astype(np.float64)))
        planted_at = [(7, 2, 400.0), (123, 2, -350.0), (480, 11, 250.0)]
        for t, k, v in planted_at:
            tokens[t, k] = v * med
        tokens[9, 4] = 60 * med  # large but under 100x the median: not massive
        med = float(np.median(np.abs(tokens).astype(np.float64)))
        vectors, words, sents = planted(2, d=16)
        result = contextuality_from_vectors({"hidden.0": vectors["hidden.0"]}, words, sents,
                                            tokens={"hidden.0": tokens}, block_rows=50)
        row = result.to_frame().iloc[0]
        np.testing.assert_allclose(row["median_abs"], med, rtol=1e-12)
        assert row["n_massive"] == 3
        top = result.massive
        hit = top[top["massive"]]
        assert sorted(zip(hit["position"], hit["dim"], strict=True)) == sorted(
            (t, k) for t, k, _ in planted_at)
        np.testing.assert_allclose(sorted(hit["value"]), sorted(tokens[t, k]
                                                                for t, k, _ in planted_at))
        assert (top["position"].iloc[3], top["dim"].iloc[3]) == (9, 4)
        assert not top["massive"].iloc[3]
        np.testing.assert_allclose(row["max_ratio"], abs(tokens[7, 2]) / med, rtol=1e-6)
        assert len(top) == 20 and (np.diff(top["value"].abs()) <= 0).all()


# -- real minilm activations ---------------------------------------------------------------------
def minilm_reference(model: lamina.Model, sentences: list[str], site_layers: list[int]
                     ) -> tuple[dict, np.ndarray, np.ndarray, dict]:
    """Word vectors straight from Hugging Face, one sentence at a time (no padding): each
    word the mean of the hidden states of the tokens whose offsets overlap it."""
    vectors: dict[int, list] = {k: [] for k in site_layers}
    tokens: dict[int, list] = {k: [] for k in site_layers}
    words, sents = [], []
    for s, text in enumerate(sentences):
        enc = model.tokenizer(text, return_offsets_mapping=True)
        with torch.inference_mode():
            states = model.hf_model(input_ids=torch.tensor([enc["input_ids"]]),
                                    output_hidden_states=True).hidden_states
        for m in WORD.finditer(text):
            idx = [t for t, (a, b) in enumerate(enc["offset_mapping"])
                   if b > a and a < m.end() and b > m.start()]
            for k in site_layers:
                vectors[k].append(states[k][0, idx].double().mean(0).numpy())
            words.append(m.group().lower())
            sents.append(s)
        for k in site_layers:
            tokens[k].append(states[k][0].numpy())
    return ({k: np.stack(v) for k, v in vectors.items()}, np.array(words), np.array(sents),
            {k: np.concatenate(v) for k, v in tokens.items()})


@pytest.mark.parametrize("name,layers", [("minilm", [0, 3, 6]), ("shakespeare-char", [0, 2])])
def test_real_model_equals_all_pairs_from_hugging_face(name: str, layers: list[int],
                                                       minilm: lamina.Model) -> None:
    model = minilm if name == "minilm" else lamina.load(name, device="cpu")
    text = tinyshakespeare()[: 2500 if name == "minilm" else 1500]
    result = contextuality(model, text, [f"hidden.{k}" for k in layers], min_occurrences=3,
                           batch_size=8, progress=False)
    fits = [s for s in split_sentences(text)
            if len(model.tokenizer(s)["input_ids"]) <= (model.max_length or 10**9)]
    assert result.summary["n_sentences"] == len(fits) > 10
    assert result.summary["dropped"]["too_long"] == len(split_sentences(text)) - len(fits)
    x, words, sents, tokens = minilm_reference(model, fits, layers)
    assert result.summary["n_occurrences"] == len(words)
    table = result.to_frame().set_index("layer")
    for k in layers:
        assert_matches(table.loc[k], x[k], words, sents, 3, rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(table.loc[k, "median_abs"],
                                   np.median(np.abs(tokens[k]).astype(np.float64)), rtol=1e-5)
        np.testing.assert_allclose(table.loc[k, "max_abs"], np.abs(tokens[k]).max(), rtol=1e-5)
        big = np.abs(tokens[k]) > 100 * np.median(np.abs(tokens[k]))
        assert table.loc[k, "n_massive"] == big.sum()
    # the strings of the largest entries are the tokens at those places
    top = result.massive.iloc[0]
    ids = model.tokenizer(fits[int(top["sentence"])])["input_ids"]
    assert top["token"] == model.token_strings([ids[int(top["position"])]])[0]
    if name == "minilm":  # the embeddings' occurrences of a word are the most alike
        assert table.loc[0, "self_similarity"] > table.loc[6, "self_similarity"]


def test_sentences_and_words() -> None:
    text = "First Citizen:\nBefore we proceed, hear me. Speak, speak!\n\nAll:\nO'er 'tis done?"
    assert split_sentences(text) == ["First Citizen:\nBefore we proceed, hear me.",
                                     "Speak, speak!", "All:\nO'er 'tis done?"]
    assert WORD.findall("O'er don't 'tis 42 x_y") == ["O'er", "don't", "tis", "x", "y"]


def test_result_saves_and_plots(minilm: lamina.Model, tmp_path) -> None:
    sentences = ["The cat sat on the mat.", "The dog sat on the cat.", "A cat and the dog."]
    result = contextuality(minilm, sentences, ["hidden.0", "hidden.6"], min_occurrences=2,
                           progress=False)
    assert set(result.words["word"]) == {"the", "cat", "sat", "on", "dog"}
    out = result.save(tmp_path / "ctx")
    for name in ("contextuality.csv", "contextuality_words.csv", "contextuality_dims.csv",
                 "contextuality_massive.csv", "contextuality.png", "contextuality_outliers.png"):
        assert (out / name).is_file(), name
    saved = pd.read_csv(out / "contextuality.csv")
    np.testing.assert_allclose(saved["self_similarity"], result.to_frame()["self_similarity"])
    assert json.loads((out / "summary.json").read_text())["summary"]["n_sentences"] == 3
    findings = contextuality_findings(result.summary, result.to_frame())
    assert f"layer {result.summary['most_contextual_layer']}" in findings[0]
    assert "contextuality" in repr(result).lower()


def test_second_pass_without_cache_and_memory_limit(minilm: lamina.Model, monkeypatch) -> None:
    ctx = importlib.import_module("lamina.analyses.contextuality")  # the module, not the function
    sentences = ["The cat sat on the mat.", "The dog sat on the cat.", "A cat and the dog."]
    cached = contextuality(minilm, sentences, "hidden.2", min_occurrences=2, batch_size=1,
                           progress=False).to_frame()
    monkeypatch.setattr(ctx, "CACHE_LIMIT", 0)  # pass 2 runs the model again
    again = contextuality(minilm, sentences, "hidden.2", min_occurrences=2, batch_size=1,
                          progress=False).to_frame()
    pd.testing.assert_frame_equal(cached, again, rtol=1e-9)
    monkeypatch.setattr(ctx, "MEMORY_LIMIT", 1000)
    api_fails(lambda: contextuality(minilm, sentences, "hidden.2", min_occurrences=2),
              "GiB", "max_sentences")


def test_findings_read_the_numbers() -> None:
    table = pd.DataFrame({"layer": [0, 1, 2], "anisotropy_baseline": [0.1, 0.25, 0.4],
                          "top_dim": [7, 3, 3], "top_dim_share": [0.1, 0.6, 0.3],
                          "max_ratio": [20.0, 150.0, 90.0], "n_massive": [0.0, 1.0, 0.0]})
    summary = {"most_contextual_layer": 2, "min_self_similarity_adjusted": 0.2345,
               "n_types_measured": 17}
    found = contextuality_findings(summary, table)
    assert "layer 2" in found[0] and "0.234" in found[0] and "17 word types" in found[0]
    assert "from 0.100 at layer 0 to 0.400 at layer 2" in found[1]
    assert "dimension is 3 at layer 1: 60%" in found[2]
    assert found[3] == ("The largest activation is 150x its layer's median |activation| "
                        "(layer 1); 1 entry there exceeds 100x.")
    table["n_massive"] = [0.0, 12.0, 0.0]
    assert "12 entries there exceed 100x" in contextuality_findings(summary, table)[3]
    table["n_massive"] = np.nan
    assert contextuality_findings(summary, table)[3].endswith("(layer 1).")


def test_max_sentences_samples_reproducibly(minilm: lamina.Model) -> None:
    text = tinyshakespeare()[:4000]
    a = contextuality(minilm, text, "hidden.1", max_sentences=12, min_occurrences=2, seed=3,
                      progress=False)
    b = contextuality(minilm, text, "hidden.1", max_sentences=12, min_occurrences=2, seed=3,
                      progress=False)
    assert a.summary["n_sentences"] == 12
    assert a.summary["dropped"]["sampled_out"] == len(split_sentences(text)) - 12
    pd.testing.assert_frame_equal(a.to_frame(), b.to_frame())


# -- the command line and bad input -------------------------------------------------------------
def test_cli_happy_path(minilm: lamina.Model, tmp_path) -> None:
    lines = tmp_path / "lines.txt"
    lines.write_text("The cat sat on the mat.\nThe dog sat on the cat.\nA cat and the dog.\n")
    out = cli_ok(["contextuality", "--model", "minilm", "--lines", lines, "--site", "hidden.0",
                  "--site", "hidden.6", "--min-occurrences", "2", "--out", tmp_path / "o"])
    assert "3 sentences" in out and "hidden.6" in out
    saved = pd.read_csv(tmp_path / "o" / "contextuality.csv")
    direct = contextuality(minilm, lines.read_text().splitlines(), ["hidden.0", "hidden.6"],
                           min_occurrences=2, progress=False).to_frame()
    np.testing.assert_allclose(saved["self_similarity"], direct["self_similarity"], rtol=1e-6)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(tinyshakespeare()[:1500])
    out = cli_ok(["contextuality", "--text-file", corpus, "--site", "hidden.2",
                  "--max-sentences", "6", "--min-occurrences", "2"])
    assert "6 sentences" in out


def test_cli_bad_input(tmp_path) -> None:
    lines = tmp_path / "lines.txt"
    lines.write_text("The cat sat.\nA dog ran.\n")
    cli_fails(["contextuality"], "exactly one of --corpus")
    cli_fails(["contextuality", "--lines", lines, "--corpus", lines], "not --corpus and --lines")
    cli_fails(["contextuality", "--corpus", tmp_path / "missing.txt"], "no such", "--corpus")
    cli_fails(["contextuality", "--lines", lines, "--min-occurrences", "1"],
              "--min-occurrences must be an integer >= 2")
    cli_fails(["contextuality", "--lines", lines, "--max-sentences", "0"], "--max-sentences")
    cli_fails(["contextuality", "--lines", lines], "no word occurs 5 times", "--max-sentences")
    cli_fails(["contextuality", "--lines", lines, "--site", "hidden.99"], "hidden.99")
    cli_fails(["contextuality", "--lines", lines, "--out", lines], "--out")


def test_api_bad_input(minilm: lamina.Model) -> None:
    vectors, words, sents = planted()
    api_fails(lambda: contextuality(minilm, "the cat. the dog.", "hidden.0",
                                    words=["unicorn"], min_occurrences=2), "'unicorn'", "0 time")
    api_fails(lambda: contextuality(minilm, "... 42 !", "hidden.0"), "no usable sentence")
    api_fails(lambda: contextuality(minilm, [], "hidden.0"), "non-empty")
    api_fails(lambda: contextuality(minilm, "the cat", "hidden.0", words="cat"), "list")
    api_fails(lambda: contextuality_from_vectors({"a": vectors["hidden.0"][:-1]}, words, sents),
              r"\[N, d\]")
    api_fails(lambda: contextuality_from_vectors(vectors, words, sents.astype(float)),
              "integers")
    zero = {"a": np.where(np.arange(len(words))[:, None] == 4, 0.0, vectors["hidden.0"])}
    api_fails(lambda: contextuality_from_vectors(zero, words, sents), "all zeros")
