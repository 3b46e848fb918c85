"""`lamina.report` (quick, default sections) on tiny GPT-NeoX (parallel attention) and Llama
(grouped-query) models saved to disk: every section is computed or skipped with its reason,
and the norms section holds the numbers of `lamina.analyses.norms` on the same texts."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

import lamina
from conftest import save_model, tiny
from lamina.analyses import norms
from lamina.atlas.registry import SECTION_MODULES

matplotlib.use("Agg")
TEXTS = ["the cat sat on the mat", "hello world, again and again", "a b c d e f g"]
FAMILIES = ("neox_parallel", "llama")
#: Random tiny models have no query bias, so the alignment section cannot apply.
SKIPPED = {"alignment": "no query bias"}


@pytest.fixture(scope="module")
def atlas(tmp_path_factory) -> tuple[lamina.atlas.core.Report, list[str], object]:
    root = tmp_path_factory.mktemp("families")
    dirs = []
    for family in FAMILIES:
        model = tiny(family)
        save_model(model, root / family)
        dirs.append(str(root / family))
    rep = lamina.report(dirs, root / "atlas", texts=TEXTS, quick=True, progress=False)
    return rep, dirs, root / "atlas"


def test_every_section_computed_or_skipped_with_reason(atlas) -> None:
    rep, dirs, out = atlas
    page = (out / "index.html").read_text()
    assert (out / "manifest.json").is_file() and len(rep.sections) == len(FAMILIES)
    for secs in rep.sections.values():
        assert [s.key for s in secs] == SECTION_MODULES
        for s in secs:
            if s.key in SKIPPED:
                assert SKIPPED[s.key] in s.skipped and not s.summary and not s.tables
                assert s.skipped.replace("'", "&#39;") in page or s.skipped in page
            else:
                assert s.skipped is None, (s.key, s.skipped)
                assert s.summary and s.findings, s.key
                assert s.tables or s.key == "modelcard", s.key


def _hidden_norms(path: str) -> dict[str, float]:
    """Mean norm of every token's hidden state per layer, straight from Hugging Face (one
    text at a time: no padding)."""
    model = lamina.load(path)
    per_layer: dict[str, list[np.ndarray]] = {}
    with torch.inference_mode():
        for text in TEXTS:
            ids = torch.tensor(model.to_tokens(text))
            states = model.hf_model(input_ids=ids, output_hidden_states=True).hidden_states
            for i, h in enumerate(states):
                per_layer.setdefault(f"hidden.{i}", []).append(h[0].double().norm(dim=-1).numpy())
    return {k: float(np.concatenate(v).mean()) for k, v in per_layer.items()}


@pytest.mark.parametrize("i", range(len(FAMILIES)))
def test_norms_section_equals_norms_analysis(atlas, i: int) -> None:
    rep, dirs, _ = atlas
    section = next(s for s in list(rep.sections.values())[i] if s.key == "norms")
    direct = norms(dirs[i], TEXTS, sites=("hidden.*", "attn_out.*", "mlp_out.*"),
                   positions="all")
    pd.testing.assert_frame_equal(section.tables["norms"].reset_index(drop=True),
                                  direct.to_frame().reset_index(drop=True))
    for key in ("max_layer_ratio", "max_cv", "prefer_cosine"):
        assert section.summary[key] == direct.summary[key], key
    table = direct.to_frame().set_index("site")
    expected = _hidden_norms(dirs[i])
    assert len(expected) == lamina.load(dirs[i]).n_layers + 1
    for site, mean in expected.items():
        assert table.loc[site, "mean_norm"] == pytest.approx(mean, rel=1e-5), site
