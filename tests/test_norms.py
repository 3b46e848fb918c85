"""Norm statistics equal numpy's on the captured vectors; the conclusion follows the numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lamina
from conftest import TEXTS, tiny
from lamina.analyses import norms


@pytest.mark.parametrize("name", ["gpt2", "llama", "minilm"])
def test_norms_match_numpy(name: str, minilm: lamina.Model, tmp_path) -> None:
    model = minilm if name == "minilm" else tiny(name)
    sites = ["hidden.*", "mlp_out.*", "attn_out.0"]
    result = norms(model, TEXTS, sites=sites, positions="all")
    acts = model.collect(TEXTS, sites, positions="all")
    frame = result.to_frame()
    assert list(frame["site"]) == acts.sites
    means: dict[str, list[float]] = {}  # kind of site -> numpy mean norm per layer
    cvs = []
    for row in frame.itertuples():
        vectors = acts[row.site].numpy()[acts.mask.numpy()]
        n = np.linalg.norm(vectors.astype(np.float64), axis=-1)
        assert row.n == len(n) == int(acts.lengths.sum())
        np.testing.assert_allclose(row.mean_norm, n.mean(), rtol=1e-6)
        np.testing.assert_allclose(row.std_norm, n.std(ddof=1), rtol=1e-6)
        np.testing.assert_allclose(row.cv, n.std(ddof=1) / n.mean(), rtol=1e-6)
        kind = "hidden" if row.site.startswith("hidden.") else row.site.split("hook_")[-1]
        means.setdefault(kind, []).append(n.mean())
        cvs.append(n.std(ddof=1) / n.mean())
    # the verdict from the numpy numbers: mean norms of one kind of site vary > 1.2x across
    # layers, or the coefficient of variation within a layer exceeds 0.1
    ratio = max(max(m) / min(m) for m in means.values())
    np.testing.assert_allclose(result.summary["max_layer_ratio"], ratio, rtol=1e-6)
    np.testing.assert_allclose(result.summary["max_cv"], max(cvs), rtol=1e-6)
    assert result.summary["prefer_cosine"] == bool(ratio > 1.2 or max(cvs) > 0.1)
    out = result.save(tmp_path / "norms")
    assert {p.name for p in out.iterdir()} == {"norms.csv", "norms.png", "summary.json"}


def test_norms_last_position_and_layers(minilm: lamina.Model) -> None:
    result = norms(minilm, TEXTS)
    frame = result.to_frame()
    assert list(frame["layer"]) == list(range(7))
    acts = minilm.collect(TEXTS, "hidden.6")
    expected = torch.linalg.norm(acts["hidden.6"].double(), dim=-1)
    np.testing.assert_allclose(frame.iloc[-1]["mean_norm"], float(expected.mean()), rtol=1e-6)
    assert "cosine" in result.summary["conclusion"]
    assert result.meta["model"] == "minilm" and "versions" in result.meta


def test_norms_of_a_store_read_block_by_block(tmp_path) -> None:
    from typer.testing import CliRunner

    from lamina import store as lstore
    from lamina.analyses.norms import norms_of
    from lamina.cli import app

    model = tiny("gpt2")
    strings = [f"{t} {i}" for i in range(40) for t in TEXTS[:3]]
    st = lstore.collect(model, strings, ["resid_post.*", "mlp_out.1"], tmp_path / "st",
                        shard_rows=50, progress=False)
    result = norms_of(st)
    frame = result.to_frame()
    assert list(frame["site"]) == st.sites and result.meta["store"] == str(st.path)
    for row in frame.itertuples():
        n = np.linalg.norm(np.asarray(st[row.site]).astype(np.float64), axis=-1)
        assert row.n == len(strings) == len(n)
        np.testing.assert_allclose([row.mean_norm, row.std_norm, row.max_norm],
                                   [n.mean(), n.std(ddof=1), n.max()], rtol=1e-6)
    out = CliRunner().invoke(app, ["norms", "--store", str(st.path)])
    assert out.exit_code == 0, out.output
    assert "blocks.1.hook_mlp_out" in out.output and "cosine" in out.output


@pytest.mark.parametrize(("growth", "spread", "prefer_cosine"), [
    (1.0, 0.0, False),   # every vector of every layer has norm 3: cosine ranks like distance
    (1.5, 0.0, True),    # norms grow 1.5x per layer
    (1.0, 0.5, True),    # norms spread within a layer
])
def test_norms_verdict_follows_synthetic_norms(growth, spread, prefer_cosine) -> None:
    from lamina.analyses.norms import norms_of

    rng = np.random.default_rng(0)
    n, d = 50, 16
    tensors = {}
    for layer in range(3):
        u = rng.standard_normal((n, d))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        scale = 3.0 * growth**layer * (1 + spread * rng.uniform(-1, 1, (n, 1)))
        tensors[f"hidden.{layer}"] = torch.from_numpy(u * scale).float()
    acts = lamina.Activations(tensors, torch.zeros((n, 1), dtype=torch.long),
                              torch.ones(n, dtype=torch.long), torch.zeros(n, dtype=torch.long),
                              [str(i) for i in range(n)], [["x"]] * n)
    result = norms_of(acts)
    assert result.summary["prefer_cosine"] is prefer_cosine
    if spread == 0:
        np.testing.assert_allclose(result.summary["max_layer_ratio"], growth**2, rtol=1e-5)
    assert ("cosine similarity is the better measure" in result.summary["conclusion"]) \
        is prefer_cosine
