"""The head sweep: every head's position-0 separation, equal to a brute-force per-head
computation and to :func:`lamina.analyses.alignment` for the same sequences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny
from lamina.analyses import alignment, head_sweep
from lamina.analyses.head_sweep import random_sequences
from lamina.errors import LaminaError
from lamina.weights import head_weights


@pytest.fixture(scope="module")
def gpt2():
    """A tiny GPT-2 with random query biases (its initialisation leaves them zero)."""
    model = tiny("gpt2")
    torch.manual_seed(1)
    with torch.no_grad():
        for block in model.hf_model.transformer.h:
            block.attn.c_attn.bias.normal_()
            block.ln_1.bias.normal_(std=0.1)
    return model


def test_matches_brute_force_per_head(gpt2):
    res = head_sweep(gpt2, n_sequences=6, seq_len=5, seed=3)
    t = res.to_frame()
    assert len(t) == gpt2.n_layers * gpt2.n_heads
    assert list(t["rank"]) == list(range(1, len(t) + 1))
    assert (np.diff(t["gap"].abs().to_numpy()) <= 0).all()
    special = set(gpt2.tokenizer.all_special_ids)
    pool = torch.tensor([i for i in range(gpt2.vocab_size) if i not in special])
    seqs = pool[torch.randint(len(pool), (6, 5), generator=torch.Generator().manual_seed(3))]
    for row in t.itertuples():
        site = f"blocks.{row.layer}.attn.hook_k"
        keys = gpt2.collect(seqs, site, positions="all")[site][:, :, row.kv_head].double().numpy()
        q = head_weights(gpt2, row.layer).b_Q[row.head].double().numpy()
        cos = keys @ q / np.linalg.norm(keys, axis=-1) / np.linalg.norm(q)  # [n, T]
        assert row.mean_position_0 == pytest.approx(cos[:, 0].mean(), abs=1e-9)
        assert row.mean_later == pytest.approx(cos[:, 1:].mean(), abs=1e-9)
        assert row.gap == pytest.approx(cos[:, 0].mean() - cos[:, 1:].mean(), abs=1e-9)
        assert row.std_later == pytest.approx(cos[:, 1:].std(ddof=1), abs=1e-9)


def test_matches_alignment_for_top_head(gpt2):
    res = head_sweep(gpt2, [(1, 2), (2, 0)], n_sequences=4, seq_len=6, seed=1)
    assert len(res.table) == 2
    for row in res.table.itertuples():
        a = alignment(gpt2, row.layer, row.head, positions=range(6), n_sequences=4, seq_len=6,
                      seed=1)
        s = a.by_position().set_index("position")["mean"]
        assert row.mean_position_0 == pytest.approx(s[0], abs=1e-6)
        assert row.mean_later == pytest.approx(s.loc[1:].mean(), abs=1e-6)


def test_grouped_query_heads_read_their_key_head():
    model = tiny("qwen2")  # 4 query heads share 2 key heads
    torch.manual_seed(2)
    with torch.no_grad():
        for layer in model.hf_model.model.layers:
            layer.self_attn.q_proj.bias.normal_()
    t = head_sweep(model, [(1, 0), (1, 3)], n_sequences=3, seq_len=4).to_frame()
    assert sorted(t["kv_head"]) == [0, 1]
    seqs = random_sequences(model, 3, 4, 0)
    keys = model.collect(seqs, "blocks.1.attn.hook_k", positions="all")["blocks.1.attn.hook_k"]
    for row in t.itertuples():
        k = keys[:, :, row.kv_head].double().numpy()
        q = head_weights(model, 1).b_Q[row.head].double().numpy()
        cos = k @ q / np.linalg.norm(k, axis=-1) / np.linalg.norm(q)
        assert row.gap == pytest.approx(cos[:, 0].mean() - cos[:, 1:].mean(), abs=1e-9)


def test_zero_bias_heads_are_unranked():
    model = tiny("llama")  # no query bias at all
    res = head_sweep(model, n_sequences=2, seq_len=3)
    assert res.summary["top_head"] is None
    assert res.summary["n_zero_query"] == len(res.table)
    assert res.table["rank"].isna().all()


@pytest.mark.parametrize("kwargs", [
    {"heads": [(3, 0)]}, {"heads": [(0, 4)]}, {"heads": []}, {"heads": [(0,)]},
    {"seq_len": 1}, {"n_sequences": 1}, {"query": "token:the"}, {"seq_len": 65},
])
def test_bad_input(gpt2, kwargs):
    with pytest.raises(LaminaError):
        head_sweep(gpt2, **kwargs)


def test_plot(gpt2):
    import matplotlib.pyplot as plt

    fig = head_sweep(gpt2, n_sequences=2, seq_len=3).plot()
    assert fig.axes
    plt.close(fig)
