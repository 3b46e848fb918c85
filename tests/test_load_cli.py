"""Loading from a local Hugging Face directory, and the command line on it."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import lamina
from conftest import TEXTS, tiny
from lamina.cli import app


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> str:
    model = tiny("gpt2")
    path = tmp_path_factory.mktemp("tiny-gpt2")
    model.hf_model.save_pretrained(path)
    model.tokenizer.save_pretrained(path)
    return str(path)


def test_local_directory_loads_same_model(gpt2_dir: str) -> None:
    original = tiny("gpt2")
    loaded = lamina.load(gpt2_dir)
    assert loaded.family == "gpt2" and loaded.is_causal
    assert (loaded.n_layers, loaded.d_model, loaded.n_heads, loaded.d_head) == (3, 32, 4, 8)
    assert loaded.max_length == 64 and loaded.vocab_size == 30522
    a = original.collect(TEXTS, "hidden.*")
    b = loaded.collect(TEXTS, "hidden.*")
    for site in a:
        torch.testing.assert_close(a[site], b[site])


def test_missing_model_gets_clear_error(tmp_path) -> None:
    with pytest.raises(lamina.LaminaError, match="not a Hugging Face model directory"):
        lamina.load(str(tmp_path))
    with pytest.raises(lamina.LaminaError, match="Built-in models: minilm"):
        lamina.load("no-such-org/no-such-model-xyz")


def test_remote_code_is_off_by_default() -> None:
    import inspect

    assert inspect.signature(lamina.load).parameters["trust_remote_code"].default is False


def test_cli_sites_and_norms(gpt2_dir: str, tmp_path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["sites", "--model", gpt2_dir])
    assert result.exit_code == 0, result.output
    assert "blocks.2.attn.hook_q" in result.output and "ln_final.hook_normalized" in result.output
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS))
    out = tmp_path / "out"
    result = runner.invoke(app, ["norms", "--model", gpt2_dir, "--texts", str(texts),
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_texts"] == len(TEXTS) and "conclusion" in summary["summary"]
    assert "hidden.3" in result.output


def test_cli_reports_bad_input_without_traceback(gpt2_dir: str) -> None:
    result = CliRunner().invoke(app, ["norms", "--model", gpt2_dir, "--site", "resid_pots.1"])
    assert result.exit_code == 2
    assert "Unknown site" in result.output and "Traceback" not in result.output


def test_every_analysis_command_runs_with_model_and_inputs(gpt2_dir: str, tmp_path) -> None:
    from lamina.corpus import tinyshakespeare

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(tinyshakespeare()[:30000])
    runner = CliRunner()
    commands = {
        "categories": ["--permutations", "20"],
        "embeddings": ["--tokens", "re:^[a-c]", "--probe", "cat,dog"],
        "contexts": ["--corpus", str(corpus), "--target", "king", "--target", "lord",
                     "--window", "10", "--max-per-target", "20"],
        "lens": ["--text", "ROMEO: what light"],
        "pathlength": ["--text", "the cat sat on the mat and looked at the moon"],
        "alignment": ["--layer", "1", "--head", "0", "--query", "token:the",
                      "--n-sequences", "20", "--seq-len", "12"],
    }
    for command, args in commands.items():
        out = tmp_path / command
        result = runner.invoke(app, [command, "--model", gpt2_dir, *args, "--out", str(out)])
        assert result.exit_code == 0, (command, result.output)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["versions"]["lamina"] and list(out.glob("*.png")), command
