"""The atlas's analysis sections (embeddings, categories, contexts, pathlength, lens,
alignment): each section's numbers are the analysis' own, each finding sentence comes from a
tested pure function, and a section that does not apply says why."""

from __future__ import annotations

import json
import math
import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

import lamina
from conftest import tiny
from lamina.atlas.section import ReportInputs, Section
from lamina.atlas.sections import alignment as al
from lamina.atlas.sections import categories as cat
from lamina.atlas.sections import contexts as ctx
from lamina.atlas.sections import embeddings as emb
from lamina.atlas.sections import lens as ln
from lamina.atlas.sections import pathlength as pl
from lamina.corpus import sample_lines, tinyshakespeare
from lamina.errors import LaminaError
from lamina.results import _jsonable

CORPUS = tinyshakespeare()[:20000]


def inputs(**kw) -> ReportInputs:
    texts = sample_lines(6)
    return ReportInputs(**{"corpus": CORPUS, "texts": texts, "lens_text": texts[0],
                           "quick": True, **kw})


@pytest.fixture(scope="module")
def gpt2():
    """A tiny GPT-2 with random query biases (its initialisation leaves them zero)."""
    model = tiny("gpt2")
    torch.manual_seed(1)
    with torch.no_grad():
        for block in model.hf_model.transformer.h:
            block.attn.c_attn.bias.normal_()
    return model


@pytest.fixture(scope="module")
def bert():
    return tiny("bert")


@pytest.fixture(scope="module")
def char():
    return lamina.load("shakespeare-char")


def check_section(s: Section, key: str) -> None:
    """The shape every section promises: findings, small tables, overlays on 0..1."""
    assert s.key == key and s.skipped is None and s.findings
    json.dumps(_jsonable(s.summary), allow_nan=False)  # what summary.json will hold
    assert all(isinstance(f, str) and f.endswith(".") for f in s.findings)
    for frame in s.tables.values():
        assert isinstance(frame, pd.DataFrame) and len(frame) <= 1000
    for frame in s.overlays.values():
        assert {"x", "y"} <= set(frame.columns)
        assert ((frame["x"] >= 0) & (frame["x"] <= 1)).all()
    plt.close("all")


# -- finding sentences: numbers in, sentence out --------------------------------------------

def test_alignment_sentences():
    assert al.top_head_sentence(10, 7, 0.47, -0.45, 0.92, 144) == (
        "Of 144 heads swept, head 10.7's query bias separates position 0 most: its cosine with "
        "keys at position 0 averages +0.470 against -0.450 at later positions (gap +0.920; "
        "position 0 is more aligned).")
    assert al.runner_up_sentence([0.9, -0.5, 0.1], 0.9) == (
        "The next strongest gap is -0.500; 2 of 3 heads reach at least half of the top head's "
        "|gap|.")
    assert al.runner_up_sentence([0.9], 0.9) == "Only one head has a non-zero query bias."


def test_categories_sentences():
    assert cat.selectivity_sentence(3, 6, 0.1234, 5.67, 0.004975, 200) == (
        "Categories separate most at layer 3 of 6: within-category cosine exceeds "
        "across-category (Δ = 0.123, t = 5.7, permutation p = 0.00498 over 200 relabellings, "
        "significant).")
    assert "does not exceed" in cat.selectivity_sentence(0, 3, -0.01, -0.3, 0.6, 200)
    assert "not significant" in cat.selectivity_sentence(0, 3, -0.01, -0.3, 0.6, 200)
    assert cat.selectivity_sentence(0, 3, 0.0, math.nan, math.nan, 0).startswith(
        "Within- and across-category similarities do not vary")
    assert cat.centred_sentence(2, 0.1, 0.2, 0.55) == (
        "After mean-centring, Δ at layer 2 is 0.200 (raw 0.100); random token pairs average "
        "0.550 there, so raw cosines run high.")
    assert cat.centred_sentence(2, 0.1, 0.2, 0.12).endswith("average 0.120 there.")
    assert cat.centred_sentence(2, 0.1, 0.2, math.nan) == (
        "After mean-centring, Δ at layer 2 is 0.200 (raw 0.100).")


def test_contexts_sentences():
    assert ctx.context_sentence(4, 6, 0.8, 0.5, 0.3, 12.34, math.nan) == (
        "Occurrences of the same word are most alike, relative to other words, at layer 4 of "
        "6: within-word cosine 0.800 against across-word 0.500 (Δ = 0.300, t = 12.3).")
    assert ctx.context_sentence(4, 6, 0.8, 0.5, 0.3, 12.34, 0.004975).endswith(
        "(Δ = 0.300, t = 12.3, permutation p = 0.00498).")
    assert ctx.trend_sentence([0.1, 0.5, 0.3]) == (
        "From the embeddings to the last layer Δ rises from 0.100 to 0.300, peaking at 0.500 in "
        "between.")
    assert ctx.trend_sentence([0.5, 0.1]) == (
        "From the embeddings to the last layer Δ falls from 0.500 to 0.100.")
    assert "falls" in ctx.trend_sentence([0.3, 0.1])
    assert "stays" in ctx.trend_sentence([0.3, 0.3])
    assert ctx.best_row([0, 1, 2], [0.9, 0.2, 0.4]) == 2
    assert ctx.best_row([0, 1], [0.9, math.nan]) == 0


def test_pathlength_sentences():
    assert pl.step_sentence([1, 2, 3], [1.0, 9.0, 2.0]) == (
        "Tokens move furthest into layer 2: a mean step of 9, against a median of 2 over the "
        "3 layers.")
    assert pl.correlation_sentence(0.61, 0.4, 0.75, 0.55, 62) == (
        "The final layer's step length strongly tracks the next-token logit: Pearson r = 0.61 "
        "(95% CI 0.40 to 0.75), Spearman ρ = 0.55, over 62 positions.")
    assert "hardly" in pl.correlation_sentence(0.1, -0.1, 0.3, 0.0, 30)


def test_lens_sentences():
    assert ln.emergence_sentence(["embed", "0 attn", "0 mlp"], [0.0, 0.25, 0.4],
                                 [0.001, 0.05, 0.2]) == (
        "The read-out reaches half of the output's top-1 accuracy (40%) first at '0 attn' "
        "(25%); the mean next-token probability goes from 0.001 at the embeddings to 0.200 at "
        "the output.")
    assert ln.emergence_sentence(["embed", "block 0"], [0.0, 0.0], [0.0, 0.0001]).startswith(
        "The model's own output never ranks the next token first")


def test_embeddings_sentences():
    assert emb.anisotropy_sentence(30522, 465780981, 0.31, 0.1) == (
        "Over all 465,780,981 pairs of the 30,522 token embeddings the mean cosine is 0.310 "
        "(sd 0.100): the embeddings share a common direction.")
    assert "close to isotropic" in emb.anisotropy_sentence(10, 45, 0.01, 0.2)
    assert "lean mildly apart" in emb.anisotropy_sentence(10, 45, -0.1, 0.2)
    assert emb.duplicates_sentence(0, 0, 0.999, 0, 0) == (
        "No two embeddings are near-identical (cosine ≥ 0.999).")
    assert emb.duplicates_sentence(2, 994, 0.999, 994, 3) == (
        "2 group(s) of near-identical embeddings (cosine ≥ 0.999), the largest of 994 tokens; "
        "the 994 unused tokens' pairwise cosines take 3 distinct values.")
    assert emb.agreement_sentence(0.99123, 0.01234, 20000) == (
        "Cosine and correlation agree with r = 0.9912 over 20,000 sampled pairs (mean "
        "|difference| 0.0123).")
    assert emb.agreement_sentence(None, None, 0).startswith("Cosine and correlation cannot")


# -- sections: the analysis' own numbers ------------------------------------------------------

def test_alignment_section_is_the_sweep(gpt2):
    from lamina.analyses import alignment, head_sweep

    inp = inputs()
    assert al.applies(gpt2, inp) is None
    s = al.SPEC.run(gpt2, inp)
    check_section(s, "alignment")
    sweep = head_sweep(gpt2, n_sequences=al.N_SEQUENCES[0], seq_len=al.SEQ_LEN, seed=0)
    pd.testing.assert_frame_equal(s.tables["heads"], sweep.to_frame().head(al.TOP_ROWS))
    assert s.summary["top_head"] == sweep.summary["top_head"]
    assert s.summary["top_gap"] == sweep.summary["top_gap"]
    layer, head = s.summary["top_head"]
    assert f"head {layer}.{head}'s" in s.findings[0]
    assert f"{sweep.summary['top_gap']:+.3f}" in s.findings[0]
    top = alignment(gpt2, layer, head, positions=[0, 1, 20, 39], n_sequences=200, seq_len=40)
    assert s.summary["top_head_positions"] == top.by_position().to_dict("records")
    assert f"alignment_{layer}_{head}" in s.figures
    assert s.summary["top_head_positions"][0]["mean"] == pytest.approx(
        sweep.summary["top_mean_position_0"], abs=1e-6)


def test_alignment_applies(gpt2):
    assert "no query bias" in al.applies(tiny("llama"), inputs())
    assert "no query bias" in al.applies(tiny("gpt2"), inputs())  # initialised to zero
    assert "do not exist" in al.applies(gpt2, inputs(heads=[(0, 1), (7, 0)]))
    s = al.SPEC.run(gpt2, inputs(heads=[(0, 1), (2, 3)]))
    assert len(s.tables["heads"]) == 2


def test_categories_section(bert):
    from lamina.analyses import categories

    s = cat.SPEC.run(bert, inputs())
    check_section(s, "categories")
    words, dropped = cat.usable_words(bert, None)
    assert s.summary["n_dropped"] == len(dropped)
    ref = categories(bert, words, permutations=cat.PERMUTATIONS[0], seed=0)
    pd.testing.assert_frame_equal(s.tables["categories"], ref.to_frame())
    best = ref.summary["best_layer_by_t"]
    row = ref.to_frame().set_index("layer").loc[best]
    assert s.summary["best_t"] == row["t"] and s.summary["best_delta"] == row["delta"]
    assert f"t = {row['t']:.1f}" in s.findings[0]
    assert list(s.overlays["Δ within - across (cosine)"]["y"]) == list(ref.to_frame()["delta"])


def test_categories_applies(char, bert):
    assert "single tokens" in cat.applies(char, inputs())
    words = [("a", "galaxy"), ("a", "comet"), ("b", "zzqxjv"), ("b", "sofa")]
    assert "too few" in cat.applies(bert, inputs(words=words))
    with pytest.raises(LaminaError):
        cat.applies(bert, inputs(words=[("a", "x")]))
    frame, dropped = cat.usable_words(bert, {"a": ["galaxy", "comet"], "b": "sofa zzqxjv"})
    assert list(frame["word"]) == ["galaxy", "comet", "sofa"] and dropped == ["zzqxjv"]


class SpaceTokenizer:
    """A GPT-2-like stub: ``" word"`` and ``"word"`` are different tokens; a word outside the
    vocabulary is one token per character."""

    vocab = {" that": 1, "that": 2, " your": 3, " with": 4, "With": 5}

    def __call__(self, text: str, **kw) -> dict:
        ids = []
        for piece in re.findall(r" ?[^\W\d_]+|.", text, re.S):
            ids += [self.vocab[piece]] if piece in self.vocab else [100 + ord(c) for c in piece]
        return {"input_ids": ids}


def test_default_targets_with_leading_space_tokens():
    from types import SimpleNamespace

    model = SimpleNamespace(tokenizer=SpaceTokenizer())
    corpus = "With that, your that with that.\nyour your With x with zebra zebra zebra zebra"
    # "zebra" is the most frequent word but not one token; " your" is one token seen twice;
    # the token "With" occurs once (" With" is no token), so the next word " with" is chosen.
    assert ctx.default_targets(model, corpus, n=3) == [" that", " your", " with"]
    assert ctx.default_targets(model, "With.With", n=3) == ["With"]
    assert ctx.default_targets(model, corpus, n=2, min_letters=5) == []


def test_contexts_section(gpt2):
    from lamina.analyses import contexts

    targets = ctx.default_targets(gpt2, CORPUS)
    assert len(targets) == ctx.N_TARGETS
    assert all(len(t.strip()) >= ctx.MIN_LETTERS and t.strip().isalpha() for t in targets)
    s = ctx.SPEC.run(gpt2, inputs())
    check_section(s, "contexts")
    assert s.summary["targets"] == targets
    ref = contexts(gpt2, CORPUS, targets, window=ctx.WINDOW[0],
                   max_per_target=ctx.MAX_PER_TARGET[0], permutations=ctx.PERMUTATIONS[0],
                   baseline=50)
    pd.testing.assert_frame_equal(s.tables["contexts"], ref.to_frame())
    frame = ref.to_frame()
    best = frame[frame["layer"] > 0].loc[lambda f: f["delta"].idxmax()]
    assert s.summary["best_delta"] == best["delta"]
    assert f"Δ = {best['delta']:.3f}" in s.findings[0]


def test_contexts_applies(char, gpt2):
    assert "single tokens" in ctx.applies(char, inputs())
    assert "not one token" in ctx.applies(gpt2, inputs(targets=["that", "zzqxjv"]))
    assert "too few occurrences" in ctx.applies(gpt2, inputs(targets=["that", "galaxy"]))
    assert ctx.applies(gpt2, inputs(targets=["that", "with"])) is None
    assert "same token" in ctx.applies(gpt2, inputs(targets=["that", "That"]))  # uncased
    for bad in (["that"], ["that", "that"], "that"):
        with pytest.raises(LaminaError):
            ctx.applies(gpt2, inputs(targets=bad))


@pytest.mark.filterwarnings("ignore:Truncated")
@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_pathlength_section(name, gpt2, bert):
    from lamina.analyses import pathlength

    model = {"gpt2": gpt2, "bert": bert}[name]
    inp = inputs()
    assert pl.applies(model, inp) is None
    s = pl.SPEC.run(model, inp)
    check_section(s, "pathlength")
    ref = pathlength(model, "\n".join(inp.texts), truncate=True)
    layers = pl.per_layer(ref.to_frame())
    pd.testing.assert_frame_equal(s.tables["per_layer"], layers)
    t = ref.to_frame()
    last = t[t["layer"] == t["layer"].max()]
    assert layers["mean_step"].iloc[-1] == pytest.approx(last["step_norm"].mean(), rel=1e-12)
    row = ref.per_model.iloc[0]
    if name == "bert":
        assert "causal" in s.findings[1] and s.summary["pearson_r"] is None
    else:
        assert s.summary["pearson_r"] == row["pearson_r"]
        assert f"r = {row['pearson_r']:.2f}" in s.findings[1]


def test_lens_section(gpt2, bert):
    from lamina.analyses import lens

    inp = inputs()
    assert "not a causal" in ln.applies(bert, inp)
    s = ln.SPEC.run(gpt2, inp)
    check_section(s, "lens")
    ref = lens(gpt2, inp.lens_text, sublayers=True, truncate=True)
    assert s.summary["final_layer_top1_accuracy"] == ref.summary["final_layer_top1_accuracy"]
    assert s.summary["mean_next_token_prob_by_layer"] == pytest.approx(
        ref.summary["mean_next_token_prob_by_layer"], rel=1e-12)
    points = s.tables["per_readout"]
    assert list(points["label"])[:3] == ["embed", "0 attn", "0 mlp"]
    assert list(points["depth"])[:3] == pytest.approx([0, 0.5 / 3, 1 / 3])
    assert points["depth"].iloc[-1] == 1.0


def test_embeddings_section(bert):
    from lamina.analyses import embeddings

    assert emb.applies(bert, inputs()) is None
    s = emb.SPEC.run(bert, inputs())
    check_section(s, "embeddings")
    ref = embeddings(bert, bins=emb.BINS[0], topk=emb.TOPK[0], fast=True)
    for k in ("n_tokens", "n_pairs", "n_unused", "n_duplicate_groups"):
        assert s.summary[k] == ref.summary[k]
    for k in ("mean", "std"):  # threaded float sums: equal up to rounding between two runs
        assert s.summary[k] == pytest.approx(ref.summary[k], rel=1e-9)
    pd.testing.assert_frame_equal(s.tables["histogram"], ref.to_frame())
    top = s.tables["top_pairs"]
    assert len(top) == emb.TOP_ROWS and (np.diff(top["cosine"]) <= 0).all()
    assert top["cosine"].iloc[0] == ref.neighbours["cosine"].max()
    assert f"{ref.summary['mean']:.3f}" in s.findings[0]
