"""``lamina.compare``: the public entry point, its inputs (arrays, models, activations), the
result, the bootstrap, the command line and the atlas section, each number checked against an
independent computation (numpy/scipy N x N textbook forms, Hugging Face's own hidden states)."""

from __future__ import annotations

import importlib
import json

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

import lamina
from badinput import api_fails, cli_fails, cli_ok
from conftest import tiny
from lamina.analyses.compare import compare
from lamina.analyses.compare.sums import StreamedMeasures
from lamina.atlas.sections.comparison import comparison_findings, texts_for
from lamina.corpus import sample_lines

compare_pkg = importlib.import_module("lamina.analyses.compare")  # the package, not the function
matplotlib.use("Agg")
LINEAR4 = ("cka", "cka_debiased", "rsa", "procrustes")
LINES = sample_lines(24)


# -- N x N textbook forms (numpy), independent of lamina ------------------------------------

def cka(x: np.ndarray, y: np.ndarray) -> float:
    xc, yc = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) *
                                             np.linalg.norm(yc.T @ yc))


def hsic_u(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. 2012 (platonic-rep's ``hsic_unbiased``)."""
    m = len(k)
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    h = np.trace(k @ l) + k.sum() * l.sum() / ((m - 1) * (m - 2)) - 2 * (k @ l).sum() / (m - 2)
    return h / (m * (m - 3))


def cka_debiased(x: np.ndarray, y: np.ndarray) -> float:
    k, l = x @ x.T, y @ y.T
    return hsic_u(k, l) / np.sqrt(hsic_u(k, k) * hsic_u(l, l))


def cosines(x: np.ndarray) -> np.ndarray:
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    return u @ u.T


def rsa(x: np.ndarray, y: np.ndarray, rank: bool = False) -> float:
    i, j = np.triu_indices(len(x), 1)
    a, b = cosines(x)[i, j], cosines(y)[i, j]
    return (stats.spearmanr(a, b)[0] if rank else np.corrcoef(a, b)[0, 1])


def procrustes(x: np.ndarray, y: np.ndarray) -> float:
    xc, yc = x - x.mean(0), y - y.mean(0)
    return np.linalg.svd(xc.T @ yc, compute_uv=False).sum() / (
        np.linalg.norm(xc) * np.linalg.norm(yc))


def mutual_knn(x: np.ndarray, y: np.ndarray, k: int) -> float:
    def nn(z: np.ndarray) -> np.ndarray:
        s = cosines(z)
        np.fill_diagonal(s, -np.inf)
        return np.argsort(-s, axis=1, kind="stable")[:, :k]

    a, b = nn(x), nn(y)
    return float(np.mean([len(set(a[i]) & set(b[i])) / k for i in range(len(x))]))


TEXTBOOK = {"cka": cka, "cka_debiased": cka_debiased, "rsa": rsa, "procrustes": procrustes,
            "rsa_spearman": lambda x, y: rsa(x, y, rank=True),
            "mutual_knn": lambda x, y: mutual_knn(x, y, 5)}


@pytest.fixture(scope="module")
def arrays() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Two sides over the same 60 rows: B's sites are noisy linear maps of A's."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(60, 6))
    a = {"hidden.0": base @ rng.normal(size=(6, 5)), "hidden.1": rng.normal(size=(60, 7)) + 1}
    b = {f"layer{i}": base @ rng.normal(size=(6, d)) + 0.3 * i * rng.normal(size=(60, d))
         for i, d in enumerate((4, 6, 3))}
    return a, b


# -- arrays ----------------------------------------------------------------------------------

def test_compare_on_dicts_equals_the_textbook_measures(arrays) -> None:
    a, b = arrays
    names = (*LINEAR4, "mutual_knn", "rsa_spearman")
    res = compare(a, b, measures=names, k=5)
    frame = res.to_frame()
    assert list(frame.columns) == ["site_a", "site_b", "measure", "value", "note"]
    assert len(frame) == 2 * 3 * len(names) and res.sites_b == ["layer0", "layer1", "layer2"]
    for row in frame.itertuples(index=False):
        want = TEXTBOOK[row.measure](a[row.site_a], b[row.site_b])
        assert row.value == pytest.approx(want, rel=1e-6, abs=1e-9), row
    # the kNN measures are what knn_measures gives on the same arrays (compare keeps the rows
    # as float32: equal to float32 rounding)
    from lamina.analyses.compare.knn import knn_measures

    direct = pd.DataFrame(knn_measures(a, b, ["cknna"], 5)).set_index(["site_a", "site_b"])
    got = compare(a, b, measures=("cknna",), k=5).to_frame().set_index(["site_a", "site_b"])
    assert got["value"].to_numpy() == pytest.approx(direct["value"].to_numpy(), rel=1e-6)
    # a site with itself: every similarity is 1
    same = compare(a, a, measures=LINEAR4).to_frame()
    diag = same[same["site_a"] == same["site_b"]]
    assert diag["value"].to_numpy() == pytest.approx(1.0, abs=1e-9)


def test_matrix_best_match_summary_and_save(arrays, tmp_path) -> None:
    a, b = arrays
    res = compare(a, b, measures=("cka", "rsa"))
    m = res.matrix("cka")
    assert m.shape == (2, 3) and list(m.index) == ["hidden.0", "hidden.1"]
    want = np.array([[cka(a[s], b[t]) for t in b] for s in a])
    assert m.to_numpy() == pytest.approx(want, rel=1e-6)
    best = res.best_match("cka")
    assert list(best["site_b"]) == [list(b)[j] for j in want.argmax(1)]
    assert best["value"].to_numpy() == pytest.approx(want.max(1), rel=1e-6)
    s = res.summary
    assert s["n_rows"] == 60 and s["rows"] == "given rows" and s["measures"] == ["cka", "rsa"]
    assert s["best_matches"]["cka"]["hidden.0"]["site_b"] == best["site_b"].iloc[0]
    assert repr(res).startswith("CompareResult(model=['arrays', 'arrays']") and len(repr(res)) < 160
    fig = res.plot()
    assert len([ax for ax in fig.axes if ax.images]) == 2
    assert fig.axes[0].images[0].get_clim() == (0.0, 1.0)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["0", "1"]
    out = res.save(tmp_path / "out")
    back = pd.read_csv(out / "compare.csv")
    assert back["value"].to_numpy() == pytest.approx(res.to_frame()["value"].to_numpy())
    assert (out / "compare.png").is_file() and (out / "matrix_cka.csv").is_file()
    assert json.loads((out / "summary.json").read_text())["summary"]["n_rows"] == 60
    api_fails(lambda: res.matrix("cknna"), "No measure 'cknna'", "cka, rsa")


def test_bootstrap_replicate_is_the_measure_on_the_resampled_rows(arrays) -> None:
    """One replicate: chunks drawn with multinomial counts, sums merged; equals the textbook
    measures on the rows of those chunks repeated that many times."""
    from types import SimpleNamespace

    a, b = arrays
    dims = lambda d: {s: v.shape[1] for s, v in d.items()}  # noqa: E731
    p = SimpleNamespace(n=60, a=SimpleNamespace(dims=dims(a)), b=SimpleNamespace(dims=dims(b)))
    sums = compare_pkg._Sums(p, LINEAR4, bootstrap=1)
    for lo in range(0, 60, 13):  # batches that straddle the chunk edges
        sums.update(lo, {s: torch.from_numpy(v[lo:lo + 13]) for s, v in a.items()},
                    {s: torch.from_numpy(v[lo:lo + 13]) for s, v in b.items()})
    counts = np.random.default_rng(7).multinomial(50, np.full(50, 1 / 50))
    rows = np.concatenate([np.arange(sums.edges[c], sums.edges[c + 1]).repeat(1)
                           for c in range(50) for _ in range(counts[c])])
    merged = sums.merged(counts).values()
    for v in merged:
        want = TEXTBOOK[v["measure"]](a[v["site_a"]][rows], b[v["site_b"]][rows])
        assert v["value"] == pytest.approx(want, rel=1e-6, abs=1e-9), v
    # the weighted sum of the chunks' tensors gives what a chain of merges gives
    chain = StreamedMeasures(*sums.args)
    for c, chunk in enumerate(sums.chunks):
        for _ in range(int(counts[c])):
            chain = chain.merge(chunk)
    assert [v["value"] for v in chain.values()] == pytest.approx(
        [v["value"] for v in merged], rel=1e-9)


def test_bootstrap_intervals_contain_the_estimate_and_follow_the_seed(arrays) -> None:
    a, b = arrays
    a0 = {"hidden.0": a["hidden.0"]}  # related to every site of b
    one = compare(a0, b, measures=(*LINEAR4, "mutual_knn"), k=5, bootstrap=40, seed=3)
    frame = one.to_frame()
    assert list(frame.columns) == ["site_a", "site_b", "measure", "value", "ci_low", "ci_high",
                                   "note"]
    lin = frame[frame["measure"] != "mutual_knn"]
    assert (lin["ci_low"] <= lin["value"]).all() and (lin["value"] <= lin["ci_high"]).all()
    assert frame.loc[frame["measure"] == "mutual_knn", "ci_low"].isna().all()
    assert any("No bootstrap interval for mutual_knn" in n for n in one.summary["notes"])
    again = compare(a0, b, measures=(*LINEAR4, "mutual_knn"), k=5, bootstrap=40, seed=3)
    pd.testing.assert_frame_equal(again.to_frame(), frame)
    other = compare(a0, b, measures=LINEAR4, bootstrap=40, seed=4).to_frame()
    assert not np.allclose(other["ci_low"], lin["ci_low"])
    # the point estimate of the chunked sums is the plain one
    plain = compare(a0, b, measures=LINEAR4).to_frame()
    assert lin["value"].to_numpy() == pytest.approx(plain["value"].to_numpy(), rel=1e-9)


def test_bad_inputs_are_one_clear_error(arrays, monkeypatch) -> None:
    a, b = arrays
    api_fails(lambda: compare(a, b, measures=("cca",)), "Unknown measure 'cca'", "cka")
    api_fails(lambda: compare(a, b, rows="words"), "rows must be 'tokens' or 'pooled'")
    api_fails(lambda: compare(a, b, pooling="max"), "pooling must be 'mean' or 'last'")
    api_fails(lambda: compare(a, {"x": np.ones((59, 3))}), "different numbers of rows")
    api_fails(lambda: compare({"x": np.ones((5, 2)), "y": np.ones((4, 2))}, b),
              "different numbers of rows")
    api_fails(lambda: compare({"x": np.ones(5)}, b), r"shape \(5,\)", r"\[N, d\]")
    api_fails(lambda: compare({"x": np.full((60, 2), np.nan)}, b), "NaN")
    api_fails(lambda: compare({}, b), "empty dict")
    api_fails(lambda: compare(3, b), "must be a model")
    api_fails(lambda: compare(a, b, measures=("mutual_knn",), k=60), "k=60", "62 rows")
    # k = N - 1: every row's neighbours would be all the others (mutual kNN 1 whatever)
    api_fails(lambda: compare(a, b, measures=("mutual_knn",), k=59), "k=59", "61 rows")
    api_fails(lambda: compare(a, b, texts=["x"], corpus="y"), "not both")
    api_fails(lambda: compare(a, b, sites_a="blocks.*"), "No site of a matches")
    monkeypatch.setattr(compare_pkg, "_available_bytes", lambda: 1000)
    api_fails(lambda: compare(a, b, measures=("mutual_knn",), k=3), "kept in memory",
              "max_rows")
    from lamina.analyses.compare import spearman

    monkeypatch.setattr(spearman, "SPEARMAN_MAX_ROWS", 10)
    api_fails(lambda: compare(a, b, measures=("rsa_spearman",)), "exact up to 10 rows",
              "max_rows=10")
    monkeypatch.setattr(compare_pkg, "BOOTSTRAP_BYTES", 1000)
    api_fails(lambda: compare(a, b, bootstrap=10), "above the", "bootstrap=0")


def test_max_rows_keeps_the_first_rows(arrays) -> None:
    a, b = arrays
    res = compare(a, b, measures=("cka",), max_rows=30)
    want = cka(a["hidden.1"][:30], b["layer2"][:30])
    assert res.matrix("cka").loc["hidden.1", "layer2"] == pytest.approx(want, rel=1e-6)
    assert "first 30 of 60 rows" in res.summary["notes"][0]


# -- models ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def char() -> lamina.Model:
    return lamina.load("shakespeare-char", device="cpu")


def by_hand(model: lamina.Model, texts: list[str], pooled: bool) -> dict[str, np.ndarray]:
    """``hidden.{i}`` rows from Hugging Face's own ``output_hidden_states``, one text at a time
    (no padding): every token, or the mean over each text's tokens."""
    out: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for text in texts:
            ids = model.tokenizer(text, return_tensors="pt")["input_ids"]
            hidden = model.hf_model(input_ids=ids, output_hidden_states=True).hidden_states
            for i, h in enumerate(hidden):
                rows = h[0].double().numpy()
                out.setdefault(f"hidden.{i}", []).append(rows.mean(0, keepdims=True)
                                                         if pooled else rows)
    return {k: np.concatenate(v) for k, v in out.items()}


def test_models_equal_arrays_captured_by_hand(minilm, char) -> None:
    texts = LINES[:8]
    some_a, some_b = ["hidden.0", "hidden.3", "hidden.6"], ["hidden.1", "hidden.4"]
    got = compare(minilm, char, texts=texts, rows="pooled", batch_size=3, sites_a=some_a,
                  sites_b=some_b)
    ha, hb = by_hand(minilm, texts, True), by_hand(char, texts, True)
    ref = compare({s: ha[s] for s in some_a}, {s: hb[s] for s in some_b})
    assert got.summary["rows"] == "pooled per text (mean)" and got.summary["n_rows"] == 8
    assert got.sites_a == some_a and got.sites_b == some_b
    assert got.to_frame()["value"].to_numpy() == pytest.approx(
        ref.to_frame()["value"].to_numpy(), rel=1e-4, abs=1e-5)
    tokens = compare(minilm, minilm, texts=texts[:4], rows="tokens", measures=("cka", "rsa"),
                     sites_a=["hidden.1", "hidden.6"], sites_b="hidden.3")
    hand = by_hand(minilm, texts[:4], False)
    assert tokens.summary["n_rows"] == len(hand["hidden.1"])
    for s in ("hidden.1", "hidden.6"):
        assert tokens.matrix("cka").loc[s, "hidden.3"] == pytest.approx(
            cka(hand[s], hand["hidden.3"]), rel=1e-4)
        assert tokens.matrix("rsa").loc[s, "hidden.3"] == pytest.approx(
            rsa(hand[s], hand["hidden.3"]), rel=1e-4)
    acts = minilm.collect(texts[:4], "hidden.*", positions="all")
    from_acts = compare(acts, minilm, texts=texts[:4], measures=("cka", "rsa"),
                        sites_a=["hidden.1", "hidden.6"], sites_b="hidden.3")
    pd.testing.assert_frame_equal(from_acts.to_frame(), tokens.to_frame(), rtol=1e-5)


def test_a_model_with_itself_has_diagonal_one(minilm) -> None:
    res = lamina.compare("minilm", "minilm", texts=LINES, rows="pooled", measures=LINEAR4)
    assert res.summary["models"] == ["minilm", "minilm"]
    for m in LINEAR4:
        assert np.diag(res.matrix(m).to_numpy()) == pytest.approx(1.0, abs=1e-6), m
    last = res.matrix("cka").to_numpy()
    assert (last <= 1 + 1e-9).all() and last[0, -1] < 0.99


def test_token_rows_across_tokenizers_are_refused_pooled_rows_work(minilm, char) -> None:
    api_fails(lambda: compare(minilm, char, texts=LINES[:4], rows="tokens"),
              "identical tokenization", r"rows='pooled'")
    last = compare(minilm, char, texts=LINES[:8], rows="pooled", pooling="last",
                   measures=("cka",))
    assert last.sites_a == [f"hidden.{i}" for i in range(7)] and len(last.sites_b) == 5
    ref = compare(minilm.collect(LINES[:8], "hidden.*").numpy(),
                  char.collect(LINES[:8], "hidden.*").numpy(), measures=("cka",))
    assert last.to_frame()["value"].to_numpy() == pytest.approx(
        ref.to_frame()["value"].to_numpy(), rel=1e-5)
    api_fails(lambda: compare(minilm, char), "needs texts")


# -- command line ---------------------------------------------------------------------------

def test_cli_happy_path(tmp_path, minilm, char) -> None:
    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(LINES[:6]) + "\n\n")
    out = cli_ok(["compare", "--model", "minilm", "--model", "shakespeare-char", "--lines", lines,
                  "--rows", "pooled", "--measure", "cka", "--measure", "procrustes",
                  "--out", tmp_path / "o"])
    assert "minilm vs shakespeare-char: 6 rows (pooled per text (mean))" in out
    assert "best match in B" in out and "wrote" in out
    saved = pd.read_csv(tmp_path / "o" / "compare.csv")
    api = compare(minilm, char, texts=LINES[:6], rows="pooled", measures=("cka", "procrustes"))
    assert saved["value"].to_numpy() == pytest.approx(api.to_frame()["value"].to_numpy(),
                                                      rel=1e-6)
    same = cli_ok(["compare", "-m", "minilm", "-m", "minilm", "--text", "a short text",
                   "--text", "another one here", "--text", "and a third", "--site-a",
                   "hidden.6", "--site-b", "hidden.6", "--measure", "cka"])
    block = same.split("cka (rows")[1].split("best match")[0].strip().splitlines()
    assert block[-1].split() == ["hidden.6", "1"]  # a layer with itself


def test_cli_bad_inputs(tmp_path) -> None:
    lines = tmp_path / "lines.txt"
    lines.write_text("one line\ntwo lines\nthree\n")
    base = ["compare", "--lines", lines]
    cli_fails([*base, "--model", "minilm"], "--model exactly twice")
    cli_fails(["compare", "-m", "minilm", "-m", "minilm"], "exactly one of --corpus")
    cli_fails(["compare", "-m", "minilm", "-m", "minilm", "--lines", lines, "--text", "x"],
              "not --lines and --text")
    cli_fails([*base, "-m", "minilm", "-m", "shakespeare-char"], "--rows pooled")
    cli_fails([*base, "-m", "minilm", "-m", "minilm", "--measure", "nope"], "Unknown --measure")
    cli_fails([*base, "-m", "minilm", "-m", "minilm", "--rows", "words"], "--rows must be")
    cli_fails([*base, "-m", "minilm", "-m", "minilm", "--bootstrap", "-1"], "--bootstrap")
    cli_fails(["compare", "-m", "minilm", "-m", "minilm", "--corpus", tmp_path / "none.txt"],
              "No such text file")
    cli_fails([*base, "-m", "minilm", "-m", "minilm", "--site-a", "blocks.9.nope"], "site")
    (tmp_path / "file").write_text("x")
    cli_fails([*base, "-m", "minilm", "-m", "minilm", "--out", tmp_path / "file"], "is a file")


# -- atlas ----------------------------------------------------------------------------------

def test_comparison_findings_sentences() -> None:

    s = {"rows": "tokens", "n_rows": 1234, "best_cka": 0.987, "best_cka_site_a": "hidden.1",
         "best_cka_site_b": "hidden.2", "last_site_a": "hidden.3", "last_match_cka": "hidden.3",
         "last_cka": 0.5, "last_match_debiased": "hidden.2", "last_cka_debiased": 0.25}
    assert comparison_findings({"a vs b": s}) == [
        "a vs b on 1,234 rows (tokens): CKA peaks at 0.99 between hidden.1 and hidden.2; the "
        "last layer, hidden.3, best matches hidden.3 (CKA 0.50; debiased: hidden.2, 0.25)."]
    few = comparison_findings({"a vs b": {**s, "n_rows": 16}})
    assert few[1] == ("With fewer than 100 rows (a vs b) the biased CKA runs high even between "
                      "unrelated representations; read the debiased map.")


EVIL = '<script>alert("x")</script> & \u202eevil'


def test_atlas_comparison_section(tmp_path) -> None:
    gpt2, bert = tiny("gpt2"), tiny("bert")
    bert.name = EVIL  # every name on the page is escaped
    texts = LINES[:6]
    rep = lamina.report([gpt2, bert], tmp_path / "r", texts=texts,
                        sections=["modelcard", "comparison"], progress=False)
    assert [s.key for s in rep.cross] == ["comparison"] and rep.cross[0].skipped is None
    sec = rep.cross[0]
    pair = sec.summary["pairs"][f"GPT2LMHeadModel vs {EVIL}"]
    used = texts_for(rep.inputs)  # the report's texts, then further corpus lines
    assert used[:6] == texts and len(used) == sec.summary["n_texts"] == 200
    ref = compare(gpt2, bert, texts=used, measures=("cka", "cka_debiased"), rows="tokens")
    assert pair["rows"] == "tokens" and pair["n_rows"] == ref.summary["n_rows"]
    assert pair["best_cka"] == pytest.approx(ref.matrix("cka").to_numpy().max(), rel=1e-9)
    assert sec.findings == comparison_findings(sec.summary["pairs"])
    page = (tmp_path / "r" / "index.html").read_text()
    assert 'id="x-comparison"' in page and 'href="#x-comparison"' in page
    assert "<script>alert" not in page and "\u202e" not in page and page.count("<script>") == 1
    assert sec.findings[0].startswith("GPT2LMHeadModel vs <script>")
    saved = json.loads((tmp_path / "r" / "models-compared" / "comparison" / "summary.json")
                       .read_text())
    assert saved["model"] == "models compared" and saved["findings"] == sec.findings
    assert rep.manifest["cross_sections"]["comparison"]["skipped"] is None
    one = lamina.report(gpt2, texts=texts, sections=["comparison"], progress=False)
    assert one.cross == []


def test_rbf_cka_equals_ckatorch_and_the_trace_form(arrays) -> None:
    """``cka_rbf`` (asked for explicitly; N x N, bounded) against ckatorch's RBF CKA and the
    textbook trace form ``tr(K H L H) / sqrt(tr(K H K H) tr(L H L H))``."""
    ckatorch = pytest.importorskip("ckatorch")
    a, b = arrays
    a = {s: v[:59] for s, v in a.items()}  # odd N: the median of the N^2 distances is unique
    b = {s: v[:59] for s, v in b.items()}
    res = compare(a, b, measures=("cka_rbf",)).to_frame()
    n = 59
    h = np.eye(n) - 1.0 / n

    def kernel(x: np.ndarray) -> np.ndarray:
        sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
        return np.exp(-sq / (2 * np.median(sq)))

    for sa, xa in a.items():
        for sb, xb in b.items():
            got = float(res[(res.site_a == sa) & (res.site_b == sb)]["value"].iloc[0])
            k, l_ = kernel(xa), kernel(xb)
            textbook = np.trace(k @ h @ l_ @ h) / np.sqrt(
                np.trace(k @ h @ k @ h) * np.trace(l_ @ h @ l_ @ h))
            theirs = float(ckatorch.cka_base(torch.tensor(xa), torch.tensor(xb), kernel="rbf"))
            np.testing.assert_allclose(got, textbook, rtol=1e-6)  # rows kept as float32
            np.testing.assert_allclose(got, theirs, rtol=1e-6)
    same = compare(a, a, measures=("cka_rbf",)).matrix("cka_rbf")
    np.testing.assert_allclose(np.diag(same.to_numpy()), 1.0, rtol=1e-12)


def test_rbf_cka_is_refused_above_its_size(arrays, monkeypatch) -> None:
    from lamina.analyses.compare import rbf

    monkeypatch.setattr(rbf, "RBF_MAX_ROWS", 10)
    a, b = arrays
    api_fails(lambda: compare(a, b, measures=("cka_rbf",)), "up to 10 rows", "max_rows=10")
    assert compare(a, b, measures=("cka_rbf",), max_rows=10).to_frame()["value"].notna().all()
