"""Similar strings against a brute-force numpy search; next-character counts by hand."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import lamina
from lamina import store as lstore
from lamina.analyses.similar_strings import next_token_counts, similar_strings
from lamina.corpus import tinyshakespeare
from lamina.train import train_char_lm

TEXT = tinyshakespeare()[:4000]


@pytest.fixture(scope="module")
def char_model(tmp_path_factory) -> lamina.Model:
    out = tmp_path_factory.mktemp("char")
    train_char_lm(tinyshakespeare()[:50_000], out, preset="tiny", steps=5, progress=False)
    return lamina.load(str(out))


@pytest.fixture(scope="module")
def sub_store(char_model, tmp_path_factory) -> lstore.Store:
    sub = lstore.substrings(TEXT, 6)
    return lstore.collect(char_model, sub, ["mlp_out.*", "resid_post.1", "blocks.0.attn.hook_z"],
                          tmp_path_factory.mktemp("st") / "s", shard_rows=700, progress=False)


def test_next_token_counts_by_hand(char_model: lamina.Model) -> None:
    sub = lstore.substrings(TEXT, 6)
    counts = next_token_counts(sub, char_model.tokenizer.get_vocab())
    vocab = char_model.tokenizer.get_vocab()
    for row in [0, 5, 100, len(sub) - 1]:
        s = sub.strings[row]
        expected = Counter(TEXT[i + 6] for i in range(len(TEXT) - 6) if TEXT[i : i + 6] == s)
        got = {c: int(counts[row, vocab[c]]) for c in expected}
        assert got == dict(expected) and counts[row].sum() == sum(expected.values())


def test_similar_strings_equal_brute_force(char_model: lamina.Model,
                                           sub_store: lstore.Store) -> None:
    queries = ["ROMEO:", "the ki", "First "]
    site = "blocks.1.hook_mlp_out"
    result = similar_strings(char_model, sub_store, queries, site=site, k=5)
    frame = result.to_frame()
    X = np.asarray(sub_store[site])
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    q = char_model.collect(queries, site)[site].numpy()
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    sims = qn @ Xn.T
    for i, query in enumerate(queries):
        rows = frame[frame["query"] == query]
        expected = np.sort(sims[i])[::-1][:5]
        np.testing.assert_allclose(rows["similarity"], expected, atol=1e-5)
        assert list(rows["string"]) == [sub_store.strings[j] for j in rows["row"]]
        assert all(sims[i, j] >= expected[-1] - 1e-5 for j in rows["row"])
    # a query that is itself a stored string finds itself first
    assert frame[frame["query"] == "First "]["string"].iloc[0] == "First "
    assert frame["next"].str.len().gt(0).all()


def test_per_head_outputs_are_compared_concatenated(char_model: lamina.Model,
                                                    sub_store: lstore.Store) -> None:
    site = "blocks.0.attn.hook_z"  # [rows, heads, d_head]: the study's concatenated heads
    assert sub_store[site].ndim == 3 and sub_store[site].flat().shape == (
        len(sub_store), sub_store[site].shape[1] * sub_store[site].shape[2])
    frame = similar_strings(char_model, sub_store, ["ROMEO:"], site=site, k=4).to_frame()
    X = np.asarray(sub_store[site]).reshape(len(sub_store), -1).astype(np.float64)
    q = char_model.collect(["ROMEO:"], site)[site].numpy().reshape(1, -1).astype(np.float64)
    sims = (q / np.linalg.norm(q)) @ (X / np.linalg.norm(X, axis=1, keepdims=True)).T
    np.testing.assert_allclose(frame["similarity"], np.sort(sims[0])[::-1][:4], atol=1e-5)
    np.testing.assert_array_equal(sub_store[site].flat()[[3, 1]].numpy(), X[[3, 1]])


def test_threshold_and_euclidean(char_model: lamina.Model, sub_store: lstore.Store) -> None:
    site = "blocks.0.hook_mlp_out"
    X = np.asarray(sub_store[site]).astype(np.float64)
    q = char_model.collect(["ROMEO:"], site)[site].numpy().astype(np.float64)[0]
    cos = X @ q / np.linalg.norm(X, axis=1) / np.linalg.norm(q)
    thr = float(np.sort(cos)[-20])
    res = similar_strings(char_model, sub_store, "ROMEO:", site=site, threshold=thr).to_frame()
    found = set(res["row"])  # float32 vs float64: only values within 1e-5 of thr may differ
    assert set(np.flatnonzero(cos >= thr + 1e-5)) <= found <= set(np.flatnonzero(cos >= thr - 1e-5))
    assert len(found) >= 19
    dist = np.linalg.norm(X - q, axis=1)
    euc = similar_strings(char_model, sub_store, "ROMEO:", site=site, k=3,
                          metric="euclidean").to_frame()
    np.testing.assert_allclose(euc["similarity"], np.sort(dist)[:3], rtol=1e-4)


def test_store_of_another_model_is_refused(sub_store: lstore.Store, tmp_path: Path) -> None:
    from conftest import tiny

    with pytest.raises(lamina.LaminaError, match="holds activations of"):
        similar_strings(tiny("gpt2"), sub_store, "x", site="blocks.0.hook_mlp_out")
