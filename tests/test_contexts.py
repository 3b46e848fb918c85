"""Words in context: occurrences, per-layer statistics and streamed histograms against an
explicit numpy/scipy computation over every pair."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

import lamina
from conftest import tiny
from lamina.analyses.contexts import contexts
from lamina.corpus import tinyshakespeare

CORPUS = tinyshakespeare()[:60_000]
TARGETS = ["heart", "lord", "love"]  # each occurs at least six times


@pytest.mark.parametrize("name", ["minilm", "gpt2"])
def test_contexts_match_explicit_pairs(name: str, minilm: lamina.Model, tmp_path) -> None:
    model = minilm if name == "minilm" else tiny(name)
    window = 12
    result = contexts(model, CORPUS, TARGETS, window=window, max_per_target=40, seed=3,
                      bins=40, permutations=50, baseline=20)
    ids = np.array(model.tokenizer(CORPUS, add_special_tokens=False, verbose=False)[
        "input_ids"])
    counts = result.counts.set_index("word")
    rng = np.random.default_rng(3)
    positions, labels = [], []
    for word in TARGETS:
        tid = model.single_token(word)
        where = np.flatnonzero(ids == tid)
        assert counts.loc[word, "occurrences"] == len(where)
        usable = where[where >= window]
        chosen = np.sort(rng.choice(usable, size=min(40, len(usable)), replace=False))
        positions += list(chosen)
        labels += [word] * len(chosen)
    labels = np.array(labels)
    batch = torch.tensor(np.stack([ids[p - window : p + 1] for p in positions]))
    with torch.no_grad():
        hidden = model.hf_model(input_ids=batch, output_hidden_states=True).hidden_states
    frame = result.to_frame()
    iu = np.triu_indices(len(labels), 1)
    same = labels[iu[0]] == labels[iu[1]]
    for layer, hs in enumerate(hidden):
        x = hs[:, -1].double().numpy()
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        values = (u @ u.T)[iu]
        row = frame.iloc[layer]
        np.testing.assert_allclose(row["within_mean"], values[same].mean(), atol=1e-6)
        np.testing.assert_allclose(row["across_mean"], values[~same].mean(), atol=1e-6)
        np.testing.assert_allclose(row["t"], stats.ttest_ind(values[same], values[~same])
                                   .statistic, rtol=1e-4)
        # the streamed histograms hold every pair: within = sum of the diagonal word pairs
        site = row["site"]
        pairs = result.pairs[result.pairs["site"] == site].reset_index(drop=True)
        hist = result.histograms[site]
        assert hist.sum() == len(values)
        within_counts = hist[pairs["within"].to_numpy()].sum(0)
        # identical vectors (layer 0: same token, same position) have cosine 1 up to rounding
        expected, _ = np.histogram(np.clip(values[same], -1, 1), bins=result.edges)
        assert np.abs(within_counts - expected).sum() <= 2  # float32 values on bin edges
    saved = result.save(tmp_path / "ctx")
    assert {p.name for p in saved.iterdir()} >= {"contexts_tornado.png", "context_counts.csv",
                                                  "summary.json"}
    counts = pd.read_csv(saved / "context_counts.csv")
    pd.testing.assert_frame_equal(counts, result.counts.reset_index(drop=True),
                                  check_dtype=False)


def test_missing_target_and_bad_window(minilm: lamina.Model) -> None:
    with pytest.raises(lamina.LaminaError, match="'galaxy'.*never occurs"):
        contexts(minilm, CORPUS, ["lord", "galaxy"], window=5)
    with pytest.raises(lamina.errors.ContextLengthError, match="window"):
        contexts(minilm, CORPUS, ["lord", "love"], window=1000)
    with pytest.raises(lamina.errors.TokenizationError, match="pineapplesauce"):
        contexts(minilm, CORPUS, ["lord", "pineapplesauce"])


def test_sampling_is_reproducible(minilm: lamina.Model) -> None:
    a = contexts(minilm, CORPUS, TARGETS, window=8, max_per_target=10, seed=1, baseline=0)
    b = contexts(minilm, CORPUS, TARGETS, window=8, max_per_target=10, seed=1, baseline=0)
    pd_a, pd_b = a.to_frame(), b.to_frame()
    assert pd_a.equals(pd_b)
    assert list(a.counts["sampled"]) == [min(10, n) for n in a.counts["usable"]]
