"""The streamed linear comparison measures against their N x N textbook definitions (numpy /
scipy, float64), published implementations, invariances, and chunked updates + merge."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.stats import ortho_group

from lamina.analyses.compare.sums import MEASURES_LINEAR, StreamedMeasures
from lamina.errors import LaminaError

RTOL = 1e-6


# -- textbook definitions (N x N, or the data matrix itself), numpy float64 -------------------
def _centre(x):
    return x - x.mean(0)


def _double_centre(k):  # H K H, H = I - 11^T/n, without the N^3 products
    return k - k.mean(0, keepdims=True) - k.mean(1, keepdims=True) + k.mean()


def ref_cka(x, y):
    kc, lc = _double_centre(x @ x.T), _double_centre(y @ y.T)
    hsic = lambda a, b: (a * b).sum()  # noqa: E731  trace(HKH HLH)
    return hsic(kc, lc) / np.sqrt(hsic(kc, kc) * hsic(lc, lc))


def _hsic_u(k, l_):  # platonic-rep's hsic_unbiased (Song et al. 2012, eq. 5)
    m = len(k)
    kt, lt = k.copy(), l_.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    return ((kt * lt.T).sum() + kt.sum() * lt.sum() / ((m - 1) * (m - 2))
            - 2 * (kt.sum(0) @ lt.sum(1)) / (m - 2)) / (m * (m - 3))  # sum(K~ @ L~)


def ref_cka_debiased(x, y):
    k, l_ = x @ x.T, y @ y.T
    return _hsic_u(k, l_) / np.sqrt(_hsic_u(k, k) * _hsic_u(l_, l_))


def _sim(x, corr):
    x = x - x.mean(1, keepdims=True) if corr else x
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    return u @ u.T


def ref_rsa(x, y, corr=False):
    iu = np.triu_indices(len(x), 1)
    return np.corrcoef(_sim(x, corr)[iu], _sim(y, corr)[iu])[0, 1]


def ref_procrustes(x, y):
    xc, yc = _centre(x), _centre(y)
    return scipy.linalg.svdvals(xc.T @ yc).sum() / (np.linalg.norm(xc) * np.linalg.norm(yc))


def _basis(x, keep):
    u, s, _ = np.linalg.svd(_centre(x), full_matrices=False)
    lam = s * s
    if keep == "svcca":
        k = int(np.argmax(np.cumsum(lam) / lam.sum() >= 0.99)) + 1
    else:
        k = int((lam > lam[0] * 1e-10).sum())
    return u[:, :k]


def ref_svcca(x, y):
    return scipy.linalg.svdvals(_basis(x, "svcca").T @ _basis(y, "svcca")).mean()


def ref_pwcca(x, y):
    qx, qy = _basis(x, "pwcca"), _basis(y, "pwcca")
    a, rho, bt = np.linalg.svd(qx.T @ qy)
    r = min(qx.shape[1], qy.shape[1])
    h, data = (qx @ a[:, :r], x) if qx.shape[1] <= qy.shape[1] else (qy @ bt.T[:, :r], y)
    alpha = np.abs(h.T @ _centre(data)).sum(1)  # the paper: sum_j |<h_i, x_j>|
    return (alpha * rho[:r]).sum() / alpha.sum()


REF = {"cka": ref_cka, "cka_debiased": ref_cka_debiased, "rsa": ref_rsa,
       "rsa_correlation": lambda x, y: ref_rsa(x, y, corr=True),
       "procrustes": ref_procrustes, "svcca": ref_svcca, "pwcca": ref_pwcca}


# -- helpers ----------------------------------------------------------------------------------
def stream(a, b, measures=MEASURES_LINEAR, batch=17, **kw):
    """StreamedMeasures over dicts of [N, d] arrays, fed in batches; {(sa, sb, m): value}."""
    sm = StreamedMeasures({s: v.shape[1] for s, v in a.items()},
                          {s: v.shape[1] for s, v in b.items()}, measures, **kw)
    n = len(next(iter(a.values())))
    for i in range(0, n, batch):
        sm.update({s: torch.as_tensor(v[i:i + batch]) for s, v in a.items()},
                  {s: torch.as_tensor(v[i:i + batch]) for s, v in b.items()})
    return sm


def table(sm):
    return {(v["site_a"], v["site_b"], v["measure"]): v["value"] for v in sm.values()}


def check_against_refs(a, b, got, measures=MEASURES_LINEAR, rtol=RTOL, atol=1e-9):
    for sa, x in a.items():
        for sb, y in b.items():
            for m in measures:
                want = REF[m](np.asarray(x, np.float64), np.asarray(y, np.float64))
                np.testing.assert_allclose(got[sa, sb, m], want, rtol=rtol, atol=atol,
                                           err_msg=f"{m} {sa} {sb}")


def random_pair(n, seed=0):
    """Two sides, d_a != d_b, correlated, with large column means (a test of the shifts)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 8))
    a = {"a0": z @ rng.normal(size=(8, 20)) + rng.normal(size=(n, 20)) + 30.0,
         "a1": rng.normal(size=(n, 6)) * 4 - 7}
    b = {"b0": np.tanh(z) @ rng.normal(size=(8, 13)) + 0.5 * rng.normal(size=(n, 13)) + 5.0,
         "b1": a["a1"][:, :3] + 0.1 * rng.normal(size=(n, 3))}
    return a, b


@pytest.fixture(scope="module")
def minilm_rows(minilm):
    """Token rows (N ~ 1,000 > d = 384) and pooled rows (N = 80 < d) of minilm's hidden states
    on 80 short lines of TinyShakespeare."""
    from lamina.corpus import tinyshakespeare

    lines = [t for t in tinyshakespeare().splitlines() if len(t.split()) > 3][:80]
    acts = minilm.collect(lines, "hidden.*", positions="all", dtype=torch.float64,
                          progress=False)
    lengths = acts.lengths.tolist()
    tokens = {s: torch.cat([acts[s][i, :n] for i, n in enumerate(lengths)]).numpy()
              for s in ("hidden.1", "hidden.3", "hidden.6")}
    pooled = {s: np.stack([acts[s][i, :n].mean(0).numpy() for i, n in enumerate(lengths)])
              for s in ("hidden.0", "hidden.2", "hidden.5")}
    return tokens, pooled


# -- exactness --------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [7, 60, 400])
def test_random_equals_textbook(n):
    a, b = random_pair(n, seed=n)
    check_against_refs(a, b, table(stream(a, b)))


def test_minilm_tokens_equal_textbook(minilm_rows):
    tokens, _ = minilm_rows
    assert len(tokens["hidden.1"]) > 900  # well over d = 384 rows (pwcca: see measures.py)
    a = {k: tokens[k] for k in ("hidden.1", "hidden.6")}
    b = {"hidden.3": tokens["hidden.3"]}
    check_against_refs(a, b, table(stream(a, b, batch=64)))


def test_minilm_pooled_equal_textbook(minilm_rows):
    _, pooled = minilm_rows  # N = 80 < d = 384
    a = {k: pooled[k] for k in ("hidden.0", "hidden.5")}
    b = {"hidden.2": pooled["hidden.2"]}
    check_against_refs(a, b, table(stream(a, b, batch=10)))


def test_float32_product_keeps_1e6(minilm_rows):
    """float32 inputs use a float32 product (shifted rows, float64 sums): the measures stay
    within 1e-6 of the float64 textbook values of the same float32 rows."""
    tokens, _ = minilm_rows
    a = {k: tokens[k].astype(np.float32) for k in ("hidden.1", "hidden.6")}
    b = {"hidden.3": tokens["hidden.3"].astype(np.float32)}
    measures = MEASURES_LINEAR
    sm = stream(a, b, measures, batch=64, flush_rows=128)
    assert sm._groups["raw"].product == torch.float32
    check_against_refs(a, b, table(sm), measures, atol=1e-7)
    ra, rb = random_pair(3000, seed=3)
    ra = {k: v.astype(np.float32) for k, v in ra.items()}
    rb = {k: v.astype(np.float32) for k, v in rb.items()}
    check_against_refs(ra, rb, table(stream(ra, rb, measures, batch=512)), measures, atol=1e-7)


# -- published implementations ----------------------------------------------------------------
def test_rsatoolbox_agrees(minilm_rows):
    """rsatoolbox's RDMs (dissimilarities) compared with method='corr': Pearson over the same
    pairs. Its 'correlation' RDM is 1 - Pearson similarity (our rsa_correlation); it has no
    cosine RDM, so for rsa its 'euclidean' RDM of the unit rows (mean squared difference,
    linear in the cosine) stands in."""
    from rsatoolbox.data import Dataset
    from rsatoolbox.rdm import calc_rdm, compare

    _, pooled = minilm_rows
    ra, rb = random_pair(50, seed=8)
    for x, y in ((pooled["hidden.0"], pooled["hidden.5"]), (ra["a0"], rb["b0"])):
        got = table(stream({"x": x}, {"y": y}, ["rsa", "rsa_correlation"]))
        unit = lambda z: z / np.linalg.norm(z, axis=1, keepdims=True)  # noqa: E731
        rdm = lambda z, m: calc_rdm(Dataset(z), method=m)  # noqa: E731
        cos = compare(rdm(unit(x), "euclidean"), rdm(unit(y), "euclidean"), method="corr")
        corr = compare(rdm(x, "correlation"), rdm(y, "correlation"), method="corr")
        np.testing.assert_allclose(got["x", "y", "rsa"], cos[0, 0], rtol=RTOL)
        np.testing.assert_allclose(got["x", "y", "rsa_correlation"], corr[0, 0], rtol=RTOL)


def test_ckatorch_agrees(minilm_rows):
    """ckatorch (Kornblith et al.'s formulas): biased CKA, and with unbiased=True the debiased
    HSIC (Song et al.) that cka_debiased uses."""
    from ckatorch import cka_base

    tokens, pooled = minilm_rows
    ra, rb = random_pair(30, seed=9)
    for x, y in ((tokens["hidden.1"], tokens["hidden.6"]), (pooled["hidden.0"],
                                                            pooled["hidden.2"]),
                 (ra["a0"], rb["b0"])):
        got = table(stream({"x": x}, {"y": y}, ["cka", "cka_debiased"], batch=200))
        tx, ty = torch.as_tensor(x), torch.as_tensor(y)
        np.testing.assert_allclose(got["x", "y", "cka"], float(cka_base(tx, ty)), rtol=RTOL)
        np.testing.assert_allclose(got["x", "y", "cka_debiased"],
                                   float(cka_base(tx, ty, unbiased=True)), rtol=RTOL)


def test_procrustes_agrees_with_scipy_and_netrep_formula():
    """scipy.linalg.orthogonal_procrustes's scale is the nuclear norm; netrep's
    LinearMetric(alpha=1, score_method='angular'), written out: centre, zero-pad to equal
    widths, rotate by the Procrustes solution, arccos of the normalised inner product."""
    a, b = random_pair(70, seed=10)
    x, y = _centre(a["a0"]), _centre(b["b0"])
    got = table(stream({"x": a["a0"]}, {"y": b["b0"]}, ["procrustes"]))["x", "y", "procrustes"]
    y_pad = np.hstack([y, np.zeros((len(y), x.shape[1] - y.shape[1]))])
    rot, scale = scipy.linalg.orthogonal_procrustes(x, y_pad)
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    np.testing.assert_allclose(got, scale / (nx * ny), rtol=RTOL)
    u, _, vt = np.linalg.svd(x.T @ y_pad)
    angle = np.arccos(np.sum((x @ (u @ vt)) * y_pad) / (nx * ny))  # netrep's angular score
    np.testing.assert_allclose(np.arccos(got), angle, rtol=RTOL)
    np.testing.assert_allclose(np.sum((x @ rot) * y_pad), scale, rtol=1e-9)


# -- invariances ------------------------------------------------------------------------------
def test_invariances():
    a, b = random_pair(80, seed=1)
    x = a["a0"]
    q = ortho_group.rvs(20, random_state=2)
    base = table(stream({"x": x}, {"y": b["b0"], "self": x}))
    moved = table(stream({"x": x}, {"y": b["b0"], "self": 3.7 * x @ q + 2.0}))
    for m in ("cka", "cka_debiased", "procrustes"):
        np.testing.assert_allclose(moved["x", "self", m], 1.0, rtol=1e-9)
        np.testing.assert_allclose(base["x", "self", m], 1.0, rtol=1e-9)
    moved = table(stream({"x": 3.7 * x @ q}, {"y": b["b0"]}))
    for m in ("cka", "cka_debiased", "procrustes", "svcca", "pwcca"):
        np.testing.assert_allclose(moved["x", "y", m], base["x", "y", m], rtol=1e-9)
    swapped = table(stream({"y": b["b0"]}, {"x": x}))
    for m in ("rsa", "rsa_correlation", "cka", "cka_debiased", "procrustes", "svcca"):
        np.testing.assert_allclose(swapped["y", "x", m], base["x", "y", m], rtol=1e-9)
    assert base["x", "y", "cka"] < 0.99


def test_chunks_and_merge_equal_one_update():
    a, b = random_pair(300, seed=4)
    b["b0"][200:] += 50.0  # later chunks far from the first chunk's reference shift
    a["a0"][100:] *= -2.0
    whole = stream(a, b, batch=300)
    parts = [stream({k: v[lo:hi] for k, v in a.items()}, {k: v[lo:hi] for k, v in b.items()},
                    batch=23) for lo, hi in ((0, 100), (100, 230), (230, 300))]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    assert merged.n == whole.n == 300
    want, got = table(whole), table(merged)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-9, err_msg=str(key))
    empty = StreamedMeasures({"a0": 20, "a1": 6}, {"b0": 13, "b1": 3}, MEASURES_LINEAR)
    assert table(empty.merge(parts[0])) == table(parts[0])
    check_against_refs(a, b, got)
    # combine: the same sums as one weighted sum; a part taken twice counts its rows twice
    combined = table(StreamedMeasures.combine([empty, *parts], [5, 1, 1, 1]))
    for key, value in want.items():
        np.testing.assert_allclose(combined[key], value, rtol=1e-9, err_msg=str(key))
    twice = StreamedMeasures.combine(parts, [2, 0, 1])
    assert twice.n == 2 * 100 + 70
    np.testing.assert_allclose(table(twice)["a0", "b0", "cka"], table(
        parts[0].merge(parts[0]).merge(parts[2]))["a0", "b0", "cka"], rtol=1e-9)
    with pytest.raises(LaminaError, match="one count per part"):
        StreamedMeasures.combine(parts, [1, 1])


def test_reshift_equals_sums_about_new_reference():
    a, b = random_pair(50, seed=5)
    sm = stream(a, b, ["cka_debiased"], batch=50)
    mom = sm._groups["raw"]
    new_a, new_b = torch.randn(26, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
    mom.reshift(new_a.clone(), new_b.clone())
    x = torch.as_tensor(np.hstack([a["a0"], a["a1"]])) - new_a
    y = torch.as_tensor(np.hstack([b["b0"], b["b1"]])) - new_b
    qa = torch.stack([(x[:, :20] ** 2).sum(1), (x[:, 20:] ** 2).sum(1)], 1)
    qb = torch.stack([(y[:, :13] ** 2).sum(1), (y[:, 13:] ** 2).sum(1)], 1)
    want = {"s_a": x.sum(0), "g_ab": x.T @ y, "t1_ab": qa.T @ qb, "t2_ab": qa.T @ y,
            "t3_ab": x.T @ qb, "t1_aa": (qa ** 2).sum(0), "n_b": qb.sum(0),
            "t2_bb": torch.cat([qb[:, :1] * y[:, :13], qb[:, 1:] * y[:, 13:]], 1).sum(0)}
    for name, value in want.items():
        torch.testing.assert_close(getattr(mom, name), value, rtol=1e-10, atol=1e-8)
    torch.testing.assert_close(mom.g_aa[1], x[:, 20:].T @ x[:, 20:], rtol=1e-10, atol=1e-8)


# -- memory, undefined values, bad input ------------------------------------------------------
def test_nbytes_is_what_is_held_and_independent_of_n():
    a, b = random_pair(600, seed=6)
    sm = StreamedMeasures({k: v.shape[1] for k, v in a.items()},
                          {k: v.shape[1] for k, v in b.items()}, MEASURES_LINEAR)
    planned = sm.nbytes()
    sm.update({k: torch.as_tensor(v, dtype=torch.float32) for k, v in a.items()},
              {k: torch.as_tensor(v, dtype=torch.float32) for k, v in b.items()})
    held = sum(t.numel() * t.element_size() for mom in sm._groups.values()
               for t in mom.tensors()) + 8 * (2 * 26 + 2 * 16)
    assert planned == sm.nbytes() == held
    sm.update({k: torch.as_tensor(v, dtype=torch.float32) for k, v in a.items()},
              {k: torch.as_tensor(v, dtype=torch.float32) for k, v in b.items()})
    assert sm.nbytes() == planned and sm.n == 1200


def test_undefined_values_have_notes():
    x = np.random.default_rng(0).normal(size=(3, 4))
    vals = StreamedMeasures({"x": 4}, {"c": 2}, ["cka", "cka_debiased", "rsa"])
    vals.update({"x": torch.as_tensor(x)}, {"c": torch.ones(3, 2, dtype=torch.float64)})
    out = {v["measure"]: v for v in vals.values()}
    assert np.isnan(out["cka"]["value"]) and "constant" in out["cka"]["note"]
    assert np.isnan(out["cka_debiased"]["value"]) and "at least 4" in out["cka_debiased"]["note"]
    assert np.isnan(out["rsa"]["value"]) and "equal" in out["rsa"]["note"]
    assert all(v["note"] is None for v in stream(*random_pair(9)).values())


@pytest.mark.parametrize("make, match", [
    (lambda: StreamedMeasures({"x": 4}, {"y": 4}, ["cka", "nope"]), "Unknown linear"),
    (lambda: StreamedMeasures({}, {"y": 4}, ["cka"]), "dims_a"),
    (lambda: StreamedMeasures({"x": 0}, {"y": 4}, ["cka"]), "positive int"),
    (lambda: StreamedMeasures({"x": 4}, {"y": 4}, "cka"), "list of names"),
    (lambda: StreamedMeasures({"x": 4}, {"y": 4}, ["cka"], product_dtype=torch.float16),
     "product_dtype"),
    (lambda: StreamedMeasures({"x": 4}, {"y": 4}, ["cka"], flush_rows=0), "flush_rows"),
])
def test_bad_construction(make, match):
    with pytest.raises(LaminaError, match=match):
        make()


def test_bad_rows():
    sm = StreamedMeasures({"x": 4}, {"y": 3}, ["rsa", "cka"])
    ok = torch.ones(5, 3)
    with pytest.raises(LaminaError, match="missing"):
        sm.update({"z": torch.ones(5, 4)}, {"y": ok})
    with pytest.raises(LaminaError, match=r"shape \[B, 4\]"):
        sm.update({"x": torch.ones(5, 5)}, {"y": ok})
    with pytest.raises(LaminaError, match="same rows"):
        sm.update({"x": torch.ones(4, 4)}, {"y": ok})
    x = torch.randn(5, 4)
    x[3] = 0
    with pytest.raises(LaminaError, match=r"rows \[3\] of site 'x'.*exactly zero"):
        sm.update({"x": x}, {"y": torch.randn(5, 3)})
    assert sm.n == 0  # nothing was added by the refused batches
    flat = torch.randn(5, 3)
    flat[1:3] = 2.5
    with pytest.raises(LaminaError, match=r"rsa_correlation: rows \[1, 2\] of site 'y'.*constant"):
        StreamedMeasures({"x": 4}, {"y": 3}, ["rsa_correlation"]).update(
            {"x": torch.randn(5, 4)}, {"y": flat})
    x[3] = float("nan")
    with pytest.raises(LaminaError, match="NaN"):
        StreamedMeasures({"x": 4}, {"y": 3}, ["cka"]).update({"x": x}, {"y": ok})
    with pytest.raises(LaminaError, match="same sites"):
        sm.merge(StreamedMeasures({"x": 4}, {"y": 2}, ["rsa", "cka"]))
