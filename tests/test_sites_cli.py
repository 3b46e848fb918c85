"""``lamina sites`` prints each site with its shape for one position, computed from the
model's dims; checked against a real capture of one text."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from conftest import save_model, tiny
from lamina.cli import app
from lamina.sites import site_shape


@pytest.mark.parametrize("family", ["gpt2", "neox_parallel", "llama", "bert"])
def test_site_shape_matches_capture(family: str) -> None:
    model = tiny(family)
    acts = model.collect(["the cat sat"], model.sites, positions="last")
    for name in model.sites:
        assert tuple(acts[name].shape) == (1, *site_shape(name, model.dims)), name


def test_cli_prints_shapes(tmp_path) -> None:
    """A grouped-query Llama (4 query heads, 2 key/value heads of 8) saved to disk."""
    model = tiny("llama")
    save_model(model, tmp_path)
    result = CliRunner().invoke(app, ["sites", "--model", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = dict(line.split(None, 1) for line in result.output.splitlines()[1:])
    assert list(rows) == model.sites
    assert rows["blocks.2.attn.hook_q"] == "[n, 4, 8]"
    assert rows["blocks.2.attn.hook_k"] == rows["blocks.0.attn.hook_v"] == "[n, 2, 8]"
    assert rows["blocks.1.hook_mlp_out"] == rows["hidden.3"] == "[n, 32]"
    acts = model.collect(["hello"], model.sites, positions="last")
    for name, shape in rows.items():
        assert shape == "[n, " + ", ".join(map(str, acts[name].shape[1:])) + "]", name
