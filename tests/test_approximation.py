"""The next-token approximation against a direct numpy computation on a small corpus."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lamina
from lamina import store as lstore
from lamina.analyses.approximation import (
    STUDY_THRESHOLDS,
    STUDY_WEIGHTS,
    approximation,
    hellinger,
    model_distance,
)
from lamina.corpus import tinyshakespeare
from lamina.train import train_char_lm

TEXT = tinyshakespeare()[:3000]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    out = tmp_path_factory.mktemp("char")
    train_char_lm(tinyshakespeare()[:50_000], out, preset="tiny", steps=30, progress=False,
                  n_layer=3)
    model = lamina.load(str(out))
    sub = lstore.substrings(TEXT, 5)
    store = lstore.collect(model, sub, "mlp_out.*", tmp_path_factory.mktemp("s") / "st",
                           shard_rows=800, progress=False)
    return model, store, sub


def test_hellinger_matches_definition() -> None:
    rng = np.random.default_rng(0)
    p, q = rng.dirichlet(np.ones(7), 5), rng.dirichlet(np.ones(7), 5)
    expected = [np.sqrt(sum((np.sqrt(a) - np.sqrt(b)) ** 2 for a, b in zip(pi, qi,
                                                                              strict=True)) / 2)
                for pi, qi in zip(p, q, strict=True)]
    np.testing.assert_allclose(hellinger(p, q), expected, rtol=1e-12)
    assert hellinger(p[0], p[0]) == 0
    assert hellinger(np.array([1.0, 0]), np.array([0, 1.0])) == pytest.approx(1.0)


@pytest.mark.parametrize("mode", ["given", "just_above_zzzzz"])
def test_approximation_equals_direct_numpy(setup, mode) -> None:
    """Against numpy. With thresholds just above the best match of "zzzzz" (a string the text
    does not hold), that prompt has no similar string and counts in ``n_empty``."""
    model, store, sub = setup
    weights = [0.5, 1.0, 2.0]
    prompts = [sub.strings[i] for i in (3, 50, 400, 1200)] + ["zzzzz"]
    thresholds = [0.9, 0.8, 0.85]
    if mode == "just_above_zzzzz":
        z = model.collect(["zzzzz"], "mlp_out.*")
        thresholds = []
        for b in range(3):
            X = np.asarray(store[f"blocks.{b}.hook_mlp_out"]).astype(np.float64)
            q = z[f"blocks.{b}.hook_mlp_out"].numpy().astype(np.float64)[0]
            thresholds.append(float((X @ q / np.linalg.norm(X, axis=1)).max()
                                    / np.linalg.norm(q)) + 1e-4)
    result = approximation(model, store, prompts, thresholds=thresholds, weights=weights)
    vocab = model.tokenizer.get_vocab()
    V = len(vocab)
    # direct: next-character counts by scanning the text, cosines by numpy
    counts = np.zeros((len(sub.strings), V))
    index = {s: i for i, s in enumerate(sub.strings)}
    for i in range(len(TEXT) - 5):
        counts[index[TEXT[i : i + 5]], vocab[TEXT[i + 5]]] += 1
    acts = model.collect(prompts, "mlp_out.*")
    with torch.no_grad():
        logits = model.hf_model(input_ids=torch.tensor([model.to_tokens(p)[0] for p in
                                                        prompts])).logits[:, -1]
    p_model = torch.softmax(logits.double(), -1).numpy()
    frame = result.to_frame()
    for variant in ("with_self", "without_self"):
        total = np.zeros((len(prompts), V))
        for b in range(3):
            X = np.asarray(store[f"blocks.{b}.hook_mlp_out"]).astype(np.float64)
            q = acts[f"blocks.{b}.hook_mlp_out"].numpy().astype(np.float64)
            cos = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (
                X / np.linalg.norm(X, axis=1, keepdims=True)).T
            # no cosine within float32 rounding of a threshold, or the comparison would depend
            # on the kernel's summation order
            assert np.abs(cos - thresholds[b]).min() > 1e-6
            member = cos >= thresholds[b]
            if variant == "without_self":
                for i, prompt in enumerate(prompts):
                    if prompt in index:
                        member[i, index[prompt]] = False
            total += weights[b] * member.astype(float) @ counts
        mass = total.sum(1)
        q_approx = total / np.where(mass > 0, mass, 1)[:, None]
        expected = hellinger(p_model, q_approx)
        expected[mass == 0] = 1.0
        np.testing.assert_allclose(frame[f"hellinger_{variant}"], expected, atol=1e-5)
        # prompts with no similar string at any block: no approximation, distance 1
        assert result.summary[variant]["n_empty"] == int((mass == 0).sum())
        assert mass[-1] == 0 or mode == "given"
    assert frame["hellinger"].equals(frame["hellinger_with_self"])
    assert result.summary["mean_hellinger"] == pytest.approx(frame["hellinger"].mean())


@pytest.fixture(scope="module")
def other_seed(tmp_path_factory):
    out = tmp_path_factory.mktemp("char_seed2")
    train_char_lm(tinyshakespeare()[:50_000], out, preset="tiny", steps=30, progress=False,
                  n_layer=3, seed=7)
    return lamina.load(str(out))


def _last_distribution(model, prompts) -> np.ndarray:
    with torch.no_grad():
        ids = torch.tensor([model.to_tokens(p)[0] for p in prompts])
        return torch.softmax(model.hf_model(input_ids=ids).logits[:, -1].double(), -1).numpy()


def test_fitted_thresholds_and_baseline(setup, other_seed, tmp_path) -> None:
    model, store, sub = setup
    fitted = approximation(model, store, 30, tune=40, exclude_self=True, seed=0,
                           baseline=other_seed)
    assert fitted.summary["fitted"] and len(fitted.summary["thresholds"]) == 3
    assert fitted.summary["n_tune"] == 40 and len(fitted.to_frame()) == 30
    frame = fitted.to_frame()
    assert set(frame["prompt"]) <= set(sub.strings)
    prompts = list(frame["prompt"])
    expected = hellinger(_last_distribution(model, prompts),
                         _last_distribution(other_seed, prompts))
    np.testing.assert_allclose(frame["baseline_hellinger"], expected, atol=1e-6)
    assert fitted.summary["baseline"]["mean"] == pytest.approx(expected.mean(), abs=1e-6)
    assert expected.mean() > 0.01  # another seed really is another model
    saved = fitted.save(tmp_path / "approx")
    assert (saved / "approximation.png").exists()
    same = model_distance(model, model, ["ROMEO", "the k"])
    np.testing.assert_allclose(same, 0, atol=1e-7)
    with pytest.raises(lamina.LaminaError, match="one threshold"):
        approximation(model, store, 3, thresholds=STUDY_THRESHOLDS, weights=STUDY_WEIGHTS)


def test_cli_similar_and_approximate(setup) -> None:
    from typer.testing import CliRunner

    from lamina.cli import app

    model, store, _ = setup
    runner = CliRunner()
    result = runner.invoke(app, ["similar", "--model", model.name, "--store", str(store.path),
                                 "-q", "ROMEO", "-s", "blocks.1.hook_mlp_out", "--k", "3"])
    assert result.exit_code == 0, result.output
    assert result.output.count("blocks.1.hook_mlp_out") == 3
    result = runner.invoke(app, ["approximate", "--model", model.name, "--store",
                                 str(store.path), "--prompts", "10", "--tune", "10"])
    assert result.exit_code == 0, result.output
    assert "without_self: mean" in result.output
    given = runner.invoke(app, ["approximate", "--model", model.name, "--store",
                                str(store.path), "--prompts", "10", "--thresholds",
                                "0.9,0.8,0.85", "--weights", "1,1,2"])
    assert given.exit_code == 0, given.output
    assert "[0.9, 0.8, 0.85], weights [1.0, 1.0, 2.0], fitted: False" in given.output
    study = runner.invoke(app, ["approximate", "--model", model.name, "--store",
                                str(store.path), "--prompts", "10", "--study"])
    assert study.exit_code != 0 and "6-block" in study.output
