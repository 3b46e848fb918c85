"""Category selectivity recomputed with numpy/scipy from Hugging Face's own hidden states."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import lamina
from conftest import tiny
from lamina.analyses.categories import BUILTIN_WORDS, categories
from lamina.errors import TokenizationError

WORDS = [("animal", w) for w in ["cat", "dog", "horse", "cow"]] + [
    ("tool", w) for w in ["hammer", "saw", "drill"]] + [("colour", w) for w in ["red", "blue"]]


def _pairs(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = u @ u.T
    i, j = np.triu_indices(len(x), 1)
    same = labels[i] == labels[j]
    return s[i, j][same], s[i, j][~same]


@pytest.mark.parametrize("name", ["minilm", "gpt2", "llama"])
def test_categories_match_scipy(name: str, minilm: lamina.Model) -> None:
    model = minilm if name == "minilm" else tiny(name)
    template = "I saw the {word}"
    result = categories(model, WORDS, template=template, permutations=200, baseline=0)
    frame = result.to_frame()
    labels = np.array([label for label, _ in WORDS])
    texts = [template.format(word=w) for _, w in WORDS]
    enc = model.tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.hf_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                             output_hidden_states=True)
    # every model here uses the BERT tokenizer, which adds [SEP] after the word
    last = enc["attention_mask"].sum(1) - 2
    assert list(frame["layer"]) == list(range(len(out.hidden_states)))
    for layer, hs in enumerate(out.hidden_states):
        x = hs[torch.arange(len(texts)), last].double().numpy()
        within, across = _pairs(x, labels)
        row = frame.iloc[layer]
        np.testing.assert_allclose(row["within_mean"], within.mean(), atol=1e-6)
        np.testing.assert_allclose(row["across_mean"], across.mean(), atol=1e-6)
        np.testing.assert_allclose(row["t"], stats.ttest_ind(within, across).statistic,
                                   rtol=1e-5)
        np.testing.assert_allclose(row["t_welch"], stats.ttest_ind(
            within, across, equal_var=False).statistic, rtol=1e-5)
        pooled = np.sqrt(((len(within) - 1) * within.var(ddof=1) + (len(across) - 1)
                          * across.var(ddof=1)) / (len(within) + len(across) - 2))
        np.testing.assert_allclose(row["cohens_d"], (within.mean() - across.mean()) / pooled,
                                   rtol=1e-5)
        cw, ca = _pairs(x - x.mean(0), labels)
        np.testing.assert_allclose(row["centred_delta"], cw.mean() - ca.mean(), atol=1e-6)
        assert 0 < row["p_permutation"] <= 1
    pairs = result.pairs[result.pairs["layer"] == 1]
    assert len(pairs) == 6 and pairs["count"].sum() == 9 * 8 // 2


def test_builtin_words_permutation_and_outputs(minilm: lamina.Model, tmp_path) -> None:
    result = categories(minilm, permutations=100, baseline=20)
    assert len(result.words) == len(BUILTIN_WORDS) == 34
    frame = result.to_frame()
    assert (frame["delta"] > 0).all() and (frame["p_permutation"] < 0.05).all()
    assert frame["baseline_mean"].notna().all()
    saved = result.save(tmp_path / "cat")
    for name in ["categories.csv", "category_pairs.csv", "categories_laminar.png",
                 "categories_layer.png", "categories_variance.png", "summary.json"]:
        assert (saved / name).exists(), name


def test_multi_token_word_needs_pooling(minilm: lamina.Model) -> None:
    words = [("a", "cat"), ("a", "dog"), ("b", "pineapplesauce"), ("b", "red")]
    with pytest.raises(TokenizationError, match="pooling"):
        categories(minilm, words, permutations=0, baseline=0)
    mean = categories(minilm, words, pooling="mean", permutations=0, baseline=0)
    last = categories(minilm, words, pooling="last", permutations=0, baseline=0)
    assert not np.allclose(mean.to_frame()["within_mean"], last.to_frame()["within_mean"])
    pieces = minilm.tokenizer("pineapplesauce", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        hs = minilm.hf_model(input_ids=torch.tensor([[101, *pieces, 102]]),
                             output_hidden_states=True).hidden_states[3][0]
    expected = hs[1 : 1 + len(pieces)].mean(0)
    torch.testing.assert_close(mean.vectors["hidden.3"][2], expected, atol=1e-5, rtol=1e-5)


def test_word_list_errors(tmp_path) -> None:
    bad = tmp_path / "w.csv"
    bad.write_text("category,term\na,b\n")
    with pytest.raises(lamina.LaminaError, match="label and word"):
        categories(tiny("gpt2"), str(bad))
    good = tmp_path / "g.csv"
    good.write_text("label,word\nx,cat\nx,dog\ny,red\ny,blue\n")
    frame = categories(tiny("gpt2"), str(good), permutations=0, baseline=0).to_frame()
    assert len(frame) == 4
    with pytest.raises(lamina.LaminaError, match="template"):
        categories(tiny("gpt2"), str(good), template="no slot")
