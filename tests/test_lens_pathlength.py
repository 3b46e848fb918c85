"""Logit lens and path length recomputed independently from Hugging Face's own outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import lamina
from conftest import tiny
from lamina.analyses.lens import lens
from lamina.analyses.pathlength import pathlength

TEXT = "the cat sat on the mat and looked at the moon over the garden wall"


def hf_run(model: lamina.Model, text: str):
    ids = torch.tensor([model.to_tokens(text)[0]])
    with torch.no_grad():
        out = model.hf_model(input_ids=ids, output_hidden_states=True)
    return ids[0], out


@pytest.mark.parametrize("name", ["gpt2", "llama", "neox_parallel"])
def test_lens_matches_manual_readout(name: str, tmp_path) -> None:
    model = tiny(name)
    ids, out = hf_run(model, TEXT)
    result = lens(model, TEXT)
    frame = result.to_frame()
    n, n_layers = len(ids), model.n_layers
    assert sorted(frame["layer"].unique()) == list(range(n_layers + 1))
    norm = model.hf_model.get_submodule(f"{model._base_prefix}.{model.architecture.final_norm}")
    head = model.hf_model.get_output_embeddings()
    for layer in range(n_layers + 1):
        if layer == n_layers:  # the last row is the model's own output
            logits = out.logits[0]
        else:
            with torch.no_grad():
                logits = head(norm(out.hidden_states[layer][0]))
        p = torch.softmax(logits.double(), -1).numpy()
        rows = frame[frame["layer"] == layer].sort_values("position")
        np.testing.assert_allclose(rows["top_prob"], p.max(-1), rtol=1e-4)
        for pos in range(n - 1):
            nxt = int(ids[pos + 1])
            row = rows.iloc[pos]
            np.testing.assert_allclose(row["next_token_prob"], p[pos, nxt], rtol=1e-4)
            # rank up to float32 near-ties of a random model's almost uniform distribution
            lo = 1 + int((p[pos] > p[pos, nxt] * (1 + 1e-5)).sum())
            hi = 1 + int((p[pos] > p[pos, nxt] * (1 - 1e-5)).sum())
            assert lo <= row["next_token_rank"] <= hi
            top = model.tokenizer.convert_tokens_to_ids(row["top_token"])
            np.testing.assert_allclose(p[pos, top], p[pos].max(), rtol=1e-4)
        assert rows.iloc[-1]["next_token_rank"] is pd_na()
    out_dir = result.save(tmp_path / "lens")
    assert (out_dir / "lens.png").exists() and (out_dir / "summary.json").exists()


def pd_na():
    import pandas as pd

    return pd.NA


def test_lens_sublayers_and_encoder_error(minilm: lamina.Model) -> None:
    model = tiny("llama")
    frame = lens(model, TEXT, sublayers=True).to_frame()
    assert frame["label"].drop_duplicates().tolist()[:3] == ["embed", "0 attn", "0 mlp"]
    assert frame["layer"].nunique() == 1 + 2 * model.n_layers
    with pytest.raises(lamina.LaminaError, match="final norm"):
        lens(minilm, TEXT)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_pathlength_matches_numpy(name: str) -> None:
    model = tiny(name)
    ids, out = hf_run(model, TEXT)
    result = pathlength({"tiny": model}, TEXT)
    frame = result.to_frame()
    h = np.stack([s[0].double().numpy() for s in out.hidden_states])  # [L+1, T, d]
    steps = np.linalg.norm(np.diff(h, axis=0), axis=-1)  # [L, T]
    cum = np.vstack([np.zeros(h.shape[1]), np.cumsum(steps, axis=0)])
    cos = np.sum(h[1:] * h[:-1], -1) / np.linalg.norm(h[1:], axis=-1) / np.linalg.norm(
        h[:-1], axis=-1)
    wide = frame.pivot(index="layer", columns="position", values="step_norm").to_numpy()
    np.testing.assert_allclose(wide[1:], steps, rtol=1e-6)
    assert np.isnan(wide[0]).all()
    np.testing.assert_allclose(
        frame.pivot(index="layer", columns="position", values="cumulative").to_numpy(), cum,
        rtol=1e-6)
    np.testing.assert_allclose(
        frame.pivot(index="layer", columns="position", values="cos_prev").to_numpy()[1:], cos,
        rtol=1e-6)
    # correlation over positions 1..T-2: skip the first token, and the last has no next token
    logits = out.logits[0].double().numpy()
    nxt = ids[1:].numpy()
    next_logit = logits[np.arange(len(nxt)), nxt][1:]
    final_step = steps[-1, 1:-1]
    row = result.per_model.iloc[0]
    assert row["n_pairs"] == len(ids) - 2
    np.testing.assert_allclose(row["pearson_r"], stats.pearsonr(final_step, next_logit)[0],
                               rtol=1e-6)
    np.testing.assert_allclose(row["spearman_r"], stats.spearmanr(final_step, next_logit)[0],
                               rtol=1e-6)
    assert row["pearson_ci_low"] < row["pearson_r"] < row["pearson_ci_high"]
    logprob = torch.log_softmax(out.logits[0].double(), -1).numpy()[np.arange(len(nxt)), nxt][1:]
    np.testing.assert_allclose(row["pearson_r_loss"], stats.pearsonr(final_step, -logprob)[0],
                               rtol=1e-6)


def test_pathlength_several_models_and_encoder(minilm: lamina.Model, tmp_path) -> None:
    result = pathlength({"gpt2": tiny("gpt2"), "llama": tiny("llama", seed=1)}, TEXT)
    assert list(result.per_model["model"]) == ["gpt2", "llama"]
    assert set(result.to_frame()["model"]) == {"gpt2", "llama"}
    saved = result.save(tmp_path / "pl")
    assert (saved / "pathlength_summary.csv").exists() and (saved / "pathlength.png").exists()
    encoder = pathlength(minilm, TEXT)  # no logits for an encoder: path length only, stated
    assert "pearson_r" not in encoder.per_model or encoder.per_model["pearson_r"].isna().all()
    assert "need a causal LM" in encoder.per_model["correlation_note"].iloc[0]
    assert (result.per_model["correlation_note"] == "").all()
    assert encoder.to_frame()["layer"].max() == 6
    resid = pathlength(tiny("gpt2"), TEXT, sites="resid_post").to_frame()
    assert resid["site"].iloc[-1] == "blocks.2.hook_resid_post"
