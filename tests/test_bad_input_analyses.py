"""Bad input to the analyses (lens, pathlength, contexts, categories, embeddings, alignment),
as two tables: each case is one clear line with exit code 2 on the command line (in the words
of its options) and a ``LaminaError`` in Python (in the words of its arguments), raised before
the computation. The behaviours that are not errors are in ``test_analyses_stated.py``."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lamina
from badinput import api_fails, cli_fails
from conftest import save_model, tiny
from lamina.analyses import alignment, categories, contexts, embeddings, lens, pathlength
from lamina.corpus import tinyshakespeare

CORPUS = tinyshakespeare()[:20_000]  # "lord" and "love" occur; "galaxy" does not
SMALL = "the king and the lord. " * 5 + "the queen."  # "queen" occurs once
LONG = "word " * 200  # 202 tokens with [CLS] and [SEP]; the tiny models' context is 64
CSV = {
    "one": "label,word\nx,cat\ny,dog\ny,red\n",
    "empty": "label,word\nx,cat\nx,\ny,red\ny,blue\n",
    "nolabel": "label,word\n,cat\nx,dog\ny,red\ny,blue\n",
    "col": "label,term\nx,cat\nx,dog\ny,red\n",
    "dup": "label,word\nx,cat\nx,cat\ny,red\ny,blue\n",
    "header": "label,word\n",
    "onecat": "label,word\nx,cat\nx,dog\nx,red\n",
    "multi": "label,word\nx,cat\nx,pineapplesauce\ny,red\ny,blue\n",
    "good": "label,word\nx,cat\nx,dog\ny,red\ny,blue\n",
}


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad-analyses")
    out = {}
    for name, model in (("gpt2", tiny("gpt2")), ("bert", tiny("bert"))):
        save_model(model, root / name)
        out[name] = str(root / name)
    for name, text in {"corpus": CORPUS, "small": SMALL, **CSV}.items():
        (root / f"{name}.txt").write_text(text, encoding="utf-8")
        out[name] = str(root / f"{name}.txt")
    (root / "latin.txt").write_bytes("label,word\nx,caf\u00e9\nx,dog\ny,red\n".encode("latin-1"))
    out["latin"] = str(root / "latin.txt")
    return out


@pytest.fixture(scope="module")
def models() -> dict[str, lamina.Model]:
    return {"gpt2": tiny("gpt2"), "bert": tiny("bert")}


def _ctx(*extra: str, corpus: str = "{corpus}") -> list[str]:
    return ["contexts", "-m", "{gpt2}", "--text-file", corpus, "--max-per-target", "5", *extra]


def _cat(*extra: str) -> list[str]:
    return ["categories", "-m", "{gpt2}", "--permutations", "5", *extra]


def _emb(*extra: str) -> list[str]:
    return ["embeddings", "-m", "{gpt2}", *extra]


def _align(*extra: str) -> list[str]:
    return ["alignment", "-m", "{gpt2}", "--n-sequences", "4", "--seq-len", "4", *extra]


KT = ["--target", "lord", "--target", "love"]
CLI_CASES: list[tuple[str, list[str], list[str]]] = [
    # contexts (item 9: a duplicate target and a bad window name the actual problem)
    ("ctx-duplicate-target", _ctx("--target", "king", "--target", "king"),
     [r"--target 'king' is given twice"]),
    ("ctx-same-token", _ctx("--target", "love", "--target", "LOVE"),
     [r"'LOVE' and 'love' are the same token"]),
    ("ctx-window-negative", _ctx(*KT, "--window", "-5"),
     [r"--window must be an integer >= 1, not -5"]),
    ("ctx-window-zero", _ctx(*KT, "--window", "0"), [r"--window must be an integer >= 1, not 0"]),
    ("ctx-window-over-context", _ctx(*KT, "--window", "100"),
     [r"--window 100 .*context of 64", r"smaller --window"]),
    ("ctx-max-per-target-zero", _ctx(*KT, "--max-per-target", "0"),
     [r"--max-per-target must be an integer >= 2, not 0"]),
    ("ctx-permutations-negative", _ctx(*KT, "--permutations", "-1"),
     [r"--permutations must be an integer >= 0, not -1"]),
    ("ctx-target-never-occurs", _ctx("--target", "love", "--target", "galaxy"),
     [r"'galaxy' .*never occurs", r"--window"]),
    ("ctx-target-once", _ctx("--target", "king", "--target", "queen", "--window", "2",
                             corpus="{small}"), [r"'queen' .*occurs 1 time", r"--text-file"]),
    ("ctx-one-target", _ctx("--target", "king"), [r"at least two target words \(--target"]),
    ("ctx-multi-token-target", _ctx("--target", "king", "--target", "pineapplesauce"),
     [r"--target word 'pineapplesauce' is 4 tokens"]),
    ("ctx-corpus-not-utf8", _ctx(*KT, corpus="{latin}"), [r"not UTF-8", r"--text-file"]),
    # categories (item 11: the word list is checked before the computation)
    ("cat-one-word-category", _cat("--words", "{one}"), [r"category 'x' has one word \('cat'\)"]),
    ("cat-empty-word", _cat("--words", "{empty}"), [r"line 3 of .*empty\.txt has an empty word"]),
    ("cat-empty-label", _cat("--words", "{nolabel}"), [r"line 2 of .* has an empty label"]),
    ("cat-missing-column", _cat("--words", "{col}"), [r"columns label and word", r"'term'"]),
    ("cat-duplicate-word", _cat("--words", "{dup}"), [r"'cat' appears more than once",
                                                       r"line 2 .*line 3"]),
    ("cat-not-utf8", _cat("--words", "{latin}"), [r"not UTF-8", r"--words"]),
    ("cat-no-words", _cat("--words", "{header}"), [r"has no words"]),
    ("cat-one-category", _cat("--words", "{onecat}"), [r"one category \('x'\)"]),
    ("cat-permutations-negative", _cat("--permutations", "-1"),
     [r"--permutations must be an integer >= 0, not -1"]),
    ("cat-template-without-word", _cat("--template", "no slot"),
     [r"--template must contain '\{word\}'"]),
    ("cat-pooling-unknown", _cat("--pooling", "max"), [r"--pooling must be last or mean"]),
    ("cat-multi-token-word", _cat("--words", "{multi}"), [r"'pineapplesauce' is 4 tokens",
                                                           r"--pooling last"]),
    # embeddings
    ("emb-invalid-regex", _emb("--tokens", "re:["), [r"--tokens 're:\[' is not a valid regular"]),
    ("emb-regex-matches-nothing", _emb("--tokens", "re:^qqqzzz$"),
     [r"--tokens 're:\^qqqzzz\$' selects 0 token", r"regular expression"]),
    ("emb-id-out-of-range", _emb("--tokens", "1,2,99999"), [r"\[0, 30522\)", r"99999"]),
    ("emb-repeated-id", _emb("--tokens", "1,2,2"), [r"repeat \(\[2\]\)"]),
    ("emb-bins-zero", _emb("--bins", "0"), [r"--bins must be an integer >= 1, not 0"]),
    ("emb-topk-zero", _emb("--topk", "0"), [r"--topk must be an integer >= 1, not 0"]),
    ("emb-topk-negative", _emb("--topk", "-3"), [r"--topk must be an integer >= 1, not -3"]),
    ("emb-which-unknown", _emb("--which", "foo"), [r"--which must be input or output"]),
    ("emb-which-output-tied", _emb("--which", "output"), [r"ties", r"--which input"]),
    ("emb-threshold-nan", _emb("--duplicate-threshold", "nan"),
     [r"--duplicate-threshold must be a finite number in \(0, 1\], not nan"]),
    ("emb-threshold-above-one", _emb("--duplicate-threshold", "2"),
     [r"--duplicate-threshold must be a finite number in \(0, 1\]"]),
    ("emb-threshold-zero", _emb("--duplicate-threshold", "0"), [r"--duplicate-threshold"]),
    ("emb-probe-one-word", _emb("--probe", "cat"), [r"--probe takes two different words"]),
    ("emb-probe-same-word", _emb("--probe", "cat,cat"), [r"--probe takes two different words"]),
    ("emb-probe-unknown-word", _emb("--probe", "cat,qqqzzzxx"),
     [r"--probe word 'qqqzzzxx' is \d+ tokens"]),
    # alignment
    ("align-layer-out-of-range", _align("--layer", "9", "--head", "0"),
     [r"--layer must be in \[0, 3\), not 9"]),
    ("align-layer-negative", _align("--layer", "-1", "--head", "0"),
     [r"--layer must be an integer >= 0, not -1"]),
    ("align-head-out-of-range", _align("--layer", "0", "--head", "9"),
     [r"--head must be in \[0, 4\), not 9"]),
    ("align-query-multi-token", _align("--layer", "0", "--head", "0", "--query",
                                       "token:pineapplesauce"),
     [r"--query token:<word> word 'pineapplesauce' is 4 tokens"]),
    ("align-query-unknown", _align("--layer", "0", "--head", "0", "--query", "foo"),
     [r"Unknown --query 'foo'"]),
    ("align-query-zero-bias", _align("--layer", "0", "--head", "0"),  # biases start at zero
     [r"is zero", r"--query token:the"]),
    ("align-seq-len-zero", ["alignment", "-m", "{gpt2}", "--layer", "0", "--head", "0",
                            "--seq-len", "0"], [r"--seq-len must be an integer >= 1, not 0"]),
    ("align-seq-len-over-context", ["alignment", "-m", "{gpt2}", "--layer", "0", "--head", "0",
                                    "--seq-len", "1000"],
     [r"--seq-len 1000 exceeds the model's context of 64"]),
    ("align-position-past-seq-len", _align("--layer", "0", "--head", "0", "--position", "4"),
     [r"--position must lie in \[0, --seq-len 4\)"]),
    ("align-n-sequences-zero", _align("--layer", "0", "--head", "0", "--n-sequences", "0"),
     [r"--n-sequences must be an integer >= 2, not 0"]),
    ("align-n-sequences-one", _align("--layer", "0", "--head", "0", "--n-sequences", "1"),
     [r"--n-sequences must be an integer >= 2, not 1"]),
    # lens and pathlength
    ("lens-empty-text", ["lens", "-m", "{gpt2}", "--text", ""], [r"text is empty", r"--text"]),
    ("lens-blank-text", ["lens", "-m", "{gpt2}", "--text", "  \n "], [r"text is empty"]),
    ("lens-text-over-context", ["lens", "-m", "{gpt2}", "--text", LONG],
     [r"202 tokens, longer than the model's context of 64", r"--truncate"]),
    ("lens-encoder", ["lens", "-m", "{bert}", "--text", "the cat sat"],
     [r"no final norm", r"causal LM"]),
    ("pathlength-empty-text", ["pathlength", "-m", "{gpt2}", "--text", ""], [r"text is empty"]),
    ("pathlength-text-over-context", ["pathlength", "-m", "{gpt2}", "--text", LONG],
     [r"202 tokens", r"--truncate"]),
    ("pathlength-unknown-sites", ["pathlength", "-m", "{gpt2}", "--text", "a b c", "--sites",
                                  "foo"], [r"--sites must be hidden or resid_post"]),
]


@pytest.fixture
def no_work(monkeypatch) -> None:
    """Make the computations fail loudly: each bad input must be refused before them."""

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("the computation started before the bad input was refused")

    monkeypatch.setattr(lamina.Model, "collect", refuse)
    monkeypatch.setattr(importlib.import_module("lamina.analyses.embeddings"), "scan", refuse)


@pytest.mark.parametrize("args, needles", [c[1:] for c in CLI_CASES],
                         ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(args: list[str], needles: list[str], paths: dict[str, str],
                       no_work: None) -> None:
    line = cli_fails([a.format(**paths) if "{" in a else a for a in args], *needles)
    # the command line speaks of its options, never of Python arguments (`window=`, `=True`)
    assert not re.search(r"\b[a-z_]+=", line), line


def _words(*pairs: str) -> list[tuple[str, str]]:
    return [tuple(p.split(":")) for p in pairs]  # type: ignore[misc]


API_CASES: list[tuple[str, Any, list[str]]] = [
    # contexts
    ("ctx-duplicate-target", lambda m, p: contexts(m["gpt2"], CORPUS, ["king", "king"]),
     [r"target 'king' is given twice"]),
    ("ctx-same-token", lambda m, p: contexts(m["gpt2"], CORPUS, ["king", "KING"]),
     [r"same token"]),
    ("ctx-window-negative", lambda m, p: contexts(m["gpt2"], CORPUS, ["lord", "love"], window=-5),
     [r"window must be an integer >= 1, not -5"]),
    ("ctx-window-zero", lambda m, p: contexts(m["gpt2"], CORPUS, ["lord", "love"], window=0),
     [r"window must be an integer >= 1, not 0"]),
    ("ctx-window-float", lambda m, p: contexts(m["gpt2"], CORPUS, ["lord", "love"], window=2.5),
     [r"window must be an int"]),
    ("ctx-max-per-target-zero", lambda m, p: contexts(m["gpt2"], CORPUS, ["lord", "love"],
                                                      max_per_target=0),
     [r"max_per_target must be an integer >= 2"]),
    ("ctx-max-per-target-one", lambda m, p: contexts(m["gpt2"], CORPUS, ["lord", "love"],
                                                     max_per_target=1),
     [r"within-word pair"]),
    ("ctx-permutations-negative", lambda m, p: contexts(m["gpt2"], CORPUS, ["lord", "love"],
                                                        permutations=-1),
     [r"permutations must be an integer >= 0"]),
    ("ctx-baseline-one", lambda m, p: contexts(m["gpt2"], CORPUS, ["lord", "love"], baseline=1),
     [r"baseline must be 0"]),
    ("ctx-target-never-occurs", lambda m, p: contexts(m["gpt2"], CORPUS, ["love", "galaxy"]),
     [r"'galaxy' .*never occurs", r"smaller window"]),
    ("ctx-target-once", lambda m, p: contexts(m["gpt2"], SMALL, ["king", "queen"], window=2),
     [r"'queen' .*occurs 1 time"]),
    ("ctx-window-over-context", lambda m, p: contexts(m["gpt2"], CORPUS, ["lord", "love"],
                                                      window=100), [r"context of 64"]),
    ("ctx-targets-a-string", lambda m, p: contexts(m["gpt2"], CORPUS, "king"),
     [r"at least two target words \(a list\)"]),
    ("ctx-corpus-file-missing", lambda m, p: contexts(m["gpt2"], Path("/nonexistent/c.txt"),
                                                      ["lord", "love"]), [r"No such text file"]),
    ("ctx-corpus-not-utf8", lambda m, p: contexts(m["gpt2"], Path(p["latin"]), ["lord", "love"]),
     [r"not UTF-8"]),
    # categories: rejected before the model runs
    ("cat-one-word-category", lambda m, p: categories(m["gpt2"], _words("x:cat", "y:dog",
                                                                        "y:red")),
     [r"category 'x' has one word"]),
    ("cat-empty-word", lambda m, p: categories(m["gpt2"], _words("x:cat", "x:", "y:red",
                                                                 "y:blue")),
     [r"pair 1 has an empty word"]),
    ("cat-none-word", lambda m, p: categories(m["gpt2"], [("x", "cat"), ("x", None),
                                                          ("y", "red"), ("y", "blue")]),
     [r"pair 1 has an empty word"]),
    ("cat-missing-column", lambda m, p: categories(m["gpt2"], p["col"]),
     [r"columns label and word"]),
    ("cat-duplicate-word", lambda m, p: categories(m["gpt2"], _words("x:cat", "x:dog", "y:cat",
                                                                     "y:red")),
     [r"'cat' appears more than once \(pair 0, pair 2\)"]),
    ("cat-not-utf8", lambda m, p: categories(m["gpt2"], p["latin"]), [r"not UTF-8"]),
    ("cat-not-pairs", lambda m, p: categories(m["gpt2"], [1, 2, 3]),
     [r"words must be \(label, word\) pairs"]),
    ("cat-permutations-negative", lambda m, p: categories(m["gpt2"], permutations=-1),
     [r"permutations must be an integer >= 0, not -1"]),
    ("cat-baseline-two", lambda m, p: categories(m["gpt2"], baseline=2),
     [r"baseline must be 0"]),
    ("cat-template-without-word", lambda m, p: categories(m["gpt2"], template="no slot"),
     [r"template must contain '\{word\}'"]),
    ("cat-pooling-unknown", lambda m, p: categories(m["gpt2"], pooling="max"),
     [r"pooling must be None, 'last' or 'mean'"]),
    # embeddings
    ("emb-invalid-regex", lambda m, p: embeddings(m["gpt2"], tokens="re:["),
     [r"tokens='re:\[' is not a valid regular expression"]),
    ("emb-regex-matches-nothing", lambda m, p: embeddings(m["gpt2"], tokens="re:^qqqzzz$"),
     [r"selects 0 token"]),
    ("emb-id-out-of-range", lambda m, p: embeddings(m["gpt2"], tokens=[1, 2, 99999]),
     [r"\[0, 30522\)", r"99999"]),
    ("emb-negative-id", lambda m, p: embeddings(m["gpt2"], tokens=[-1, 2, 3]), [r"\[-1\]"]),
    ("emb-repeated-id", lambda m, p: embeddings(m["gpt2"], tokens=[1, 2, 2]), [r"repeat"]),
    ("emb-float-ids", lambda m, p: embeddings(m["gpt2"], tokens=[1.5, 2.5]),
     [r"must be integers"]),
    ("emb-tokens-not-iterable", lambda m, p: embeddings(m["gpt2"], tokens=5),
     [r"not int"]),
    ("emb-bins-zero", lambda m, p: embeddings(m["gpt2"], bins=0), [r"bins must be an int"]),
    ("emb-topk-zero", lambda m, p: embeddings(m["gpt2"], topk=0), [r"topk must be an int"]),
    ("emb-topk-negative", lambda m, p: embeddings(m["gpt2"], topk=-1), [r"topk"]),
    ("emb-which-unknown", lambda m, p: embeddings(m["gpt2"], which="foo"),
     [r"which must be 'input' or 'output'"]),
    ("emb-threshold-nan", lambda m, p: embeddings(m["gpt2"], duplicate_threshold=float("nan")),
     [r"duplicate_threshold must be a finite number in \(0, 1\], not nan"]),
    ("emb-threshold-above-one", lambda m, p: embeddings(m["gpt2"], duplicate_threshold=1.5),
     [r"duplicate_threshold"]),
    ("emb-probe-one-word", lambda m, p: embeddings(m["gpt2"], probe=["cat"]),
     [r"probe takes two different words"]),
    ("emb-probe-a-string", lambda m, p: embeddings(m["gpt2"], probe="cat"),
     [r"probe takes two different words"]),
    ("emb-probe-unknown-word", lambda m, p: embeddings(m["gpt2"], probe=["cat", "qqqzzzxx"]),
     [r"probe word 'qqqzzzxx' is \d+ tokens"]),
    # alignment
    ("align-layer-out-of-range", lambda m, p: alignment(m["gpt2"], 9, 0),
     [r"layer must be in \[0, 3\), not 9"]),
    ("align-layer-negative", lambda m, p: alignment(m["gpt2"], -1, 0),
     [r"layer must be an integer >= 0"]),
    ("align-head-out-of-range", lambda m, p: alignment(m["gpt2"], 0, 4),
     [r"head must be in \[0, 4\), not 4"]),
    ("align-query-multi-token", lambda m, p: alignment(m["gpt2"], 0, 0,
                                                       query="token:pineapplesauce"),
     [r"query word 'pineapplesauce' is 4 tokens"]),
    ("align-query-unknown", lambda m, p: alignment(m["gpt2"], 0, 0, query="foo"),
     [r"Unknown query 'foo'"]),
    ("align-query-nan-vector", lambda m, p: alignment(m["gpt2"], 0, 0, query=[np.nan] * 8),
     [r"NaN"]),
    ("align-query-wrong-shape", lambda m, p: alignment(m["gpt2"], 0, 0, query=[1.0] * 5),
     [r"shape \[8\] or \[32\]"]),
    ("align-seq-len-zero", lambda m, p: alignment(m["gpt2"], 0, 0, seq_len=0),
     [r"seq_len must be an integer >= 1"]),
    ("align-seq-len-over-context", lambda m, p: alignment(m["gpt2"], 0, 0, seq_len=1000,
                                                          positions=(0,)),
     [r"seq_len=1000 exceeds the model's context of 64"]),
    ("align-position-past-seq-len", lambda m, p: alignment(m["gpt2"], 0, 0, seq_len=8,
                                                           positions=(0, 8)),
     [r"positions must lie in \[0, seq_len=8\)"]),
    ("align-no-positions", lambda m, p: alignment(m["gpt2"], 0, 0, positions=()),
     [r"positions is empty"]),
    ("align-n-sequences-zero", lambda m, p: alignment(m["gpt2"], 0, 0, n_sequences=0),
     [r"n_sequences must be an integer >= 2, not 0"]),
    # lens and pathlength
    ("lens-empty-text", lambda m, p: lens(m["gpt2"], ""), [r"text is empty"]),
    ("lens-no-token-ids", lambda m, p: lens(m["gpt2"], []), [r"empty list of token ids"]),
    ("lens-one-token", lambda m, p: lens(m["gpt2"], [5]), [r"one token", r"at least two"]),
    ("lens-text-over-context", lambda m, p: lens(m["gpt2"], LONG),
     [r"202 tokens", r"truncate=True"]),
    ("lens-encoder", lambda m, p: lens(m["bert"], "the cat sat"), [r"no final norm"]),
    ("pathlength-empty-text", lambda m, p: pathlength(m["gpt2"], " "), [r"text is empty"]),
    ("pathlength-text-over-context", lambda m, p: pathlength(m["gpt2"], LONG),
     [r"202 tokens", r"truncate=True"]),
    ("pathlength-unknown-sites", lambda m, p: pathlength(m["gpt2"], "a b", sites="foo"),
     [r"sites must be 'hidden' or 'resid_post'"]),
    ("pathlength-no-models", lambda m, p: pathlength({}, "a b"), [r"No models"]),
]


@pytest.mark.parametrize("call, needles", [c[1:] for c in API_CASES],
                         ids=[c[0] for c in API_CASES])
def test_api_bad_input(call: Any, needles: list[str], models: dict[str, lamina.Model],
                       paths: dict[str, str], no_work: None) -> None:
    message = api_fails(lambda: call(models, paths), *needles)
    assert "--" not in message, message  # Python users are told about arguments, not options
