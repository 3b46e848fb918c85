"""Mutual kNN, CKNNA and Spearman RSA against N x N brute force.

The references are written here from the definitions, platonic-rep style (Huh et al. 2024,
github.com/minyoungg/platonic-rep ``metrics.py``): the full float64 cosine and kernel matrices,
each row's neighbours by sorting (cosine descending, then row index, the documented tie rule),
0/1 masks, and the unbiased HSIC of Song et al. (2012) on the masked kernels. Spearman RSA is
``scipy.stats.spearmanr`` of the two upper triangles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import lamina
from lamina.analyses.compare import knn as knn_mod
from lamina.analyses.compare.knn import MEASURES_KNN, knn_measures
from lamina.analyses.compare.spearman import SPEARMAN_MAX_ROWS, pair_values, spearman_rsa
from lamina.errors import LaminaError


# --------------------------------------------------------------------------- references
def cosine(x: np.ndarray) -> np.ndarray:
    u = np.asarray(x, dtype=np.float64)
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    return u @ u.T


def knn_mask(x: np.ndarray, k: int) -> np.ndarray:
    """N x N 0/1: row i's k nearest other rows by cosine, ties by lower index (values equal to
    12 decimals are ties: exact duplicates have cosine 1 up to rounding)."""
    n = len(x)
    c = np.round(cosine(x), 12)
    np.fill_diagonal(c, -np.inf)
    idx = np.broadcast_to(np.arange(n), (n, n))
    order = np.lexsort((idx, -c), axis=-1)[:, :k]
    mask = np.zeros((n, n))
    np.put_along_axis(mask, order, 1.0, axis=1)
    return mask


def hsic_unbiased(k: np.ndarray, l_: np.ndarray) -> float:
    m = len(k)
    kt, lt = k.copy(), l_.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    val = (np.sum(kt * lt.T) + kt.sum() * lt.sum() / ((m - 1) * (m - 2))
           - 2 * np.sum(kt @ lt) / (m - 2))
    return val / (m * (m - 3))


def brute(xa: np.ndarray, xb: np.ndarray, k: int, masks=None) -> tuple[float, float]:
    """(mutual_knn, cknna) from full matrices."""
    ma, mb = masks if masks is not None else (knn_mask(xa, k), knn_mask(xb, k))
    mutual = float(((ma * mb).sum(1) / k).mean())
    kk = xa.astype(np.float64) @ xa.astype(np.float64).T
    ll = xb.astype(np.float64) @ xb.astype(np.float64).T
    m = ma * mb
    ck = hsic_unbiased(m * kk, m * ll) / np.sqrt(
        hsic_unbiased(ma * kk, ma * kk) * hsic_unbiased(mb * ll, mb * ll))
    return mutual, float(ck)


def values(records: list[dict]) -> dict[tuple[str, str, str], float]:
    return {(r["site_a"], r["site_b"], r["measure"]): r["value"] for r in records}


def neighbour_sets(x: np.ndarray, k: int) -> np.ndarray:
    return knn_mod._neighbours(np.ascontiguousarray(x), k, False)


def reference_sets(x: np.ndarray, k: int) -> np.ndarray:
    return np.sort(np.nonzero(knn_mask(x, k))[1].reshape(len(x), k), axis=1)


# --------------------------------------------------------------------------- random data
@pytest.fixture(scope="module")
def random_pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((300, 24)).astype(np.float32)
    b = (a @ rng.standard_normal((24, 16)) + 0.7 * rng.standard_normal((300, 16))).astype(
        np.float32)
    return a, b


@pytest.mark.parametrize("k", [1, 3, 10, 40])
def test_random_rows_equal_brute_force(random_pair, k):
    a, b = random_pair
    got = values(knn_measures({"a": a}, {"b": b}, MEASURES_KNN, k))
    mutual, ck = brute(a, b, k)
    assert got[("a", "b", "mutual_knn")] == pytest.approx(mutual, abs=1e-12)
    assert got[("a", "b", "cknna")] == pytest.approx(ck, rel=1e-9)
    assert 0 < mutual < 1 and 0 < ck < 1
    np.testing.assert_array_equal(neighbour_sets(a, k), reference_sets(a, k))


def test_platonic_rep_dot_product_topk_on_unit_rows(random_pair):
    """platonic-rep takes top-k of the dot products (argsort) of unit rows: the same sets."""
    a, b = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in random_pair)
    k = 7
    masks = []
    for x in (a, b):
        kern = x.astype(np.float64) @ x.astype(np.float64).T
        np.fill_diagonal(kern, -1e8)
        top = np.argsort(-kern, axis=1)[:, :k]
        mask = np.zeros_like(kern)
        np.put_along_axis(mask, top, 1.0, axis=1)
        masks.append(mask)
    mutual, ck = brute(a, b, k, masks=masks)
    got = values(knn_measures({"a": a}, {"b": b}, MEASURES_KNN, k))
    assert got[("a", "b", "mutual_knn")] == pytest.approx(mutual, abs=1e-12)
    assert got[("a", "b", "cknna")] == pytest.approx(ck, rel=1e-9)


def test_every_site_pair_and_self_is_one(random_pair):
    a, b = random_pair
    rows = {"a": torch.from_numpy(a), "b": b.astype(np.float64)}
    got = values(knn_measures(rows, rows, ["cknna", "mutual_knn"], 5))
    assert len(got) == 2 * 2 * 2
    for s in rows:
        assert got[(s, s, "mutual_knn")] == 1.0
        assert got[(s, s, "cknna")] == pytest.approx(1.0, rel=1e-12)
    # platonic-rep's CKNNA is not symmetric (sum(P Q) pairs P's column sums with Q's row
    # sums, and kNN masks are not symmetric): each order against its own brute force
    for sa, sb in (("a", "b"), ("b", "a")):
        mutual, ck = brute(rows[sa].numpy() if sa == "a" else rows[sa],
                           rows[sb].numpy() if sb == "a" else rows[sb], 5)
        assert got[(sa, sb, "mutual_knn")] == pytest.approx(mutual, abs=1e-12)
        assert got[(sa, sb, "cknna")] == pytest.approx(ck, rel=1e-9)
    assert got[("a", "b", "mutual_knn")] == got[("b", "a", "mutual_knn")]


def test_each_site_is_scanned_once(random_pair, monkeypatch):
    a, b = random_pair
    calls = []
    real = knn_mod.scan

    def counting(x, **kw):
        calls.append(len(x))
        return real(x, **kw)

    monkeypatch.setattr(knn_mod, "scan", counting)
    rows = {"a": a, "b": b}
    knn_measures(rows, {"b": b, "a2": a, "a": a}, MEASURES_KNN, 4)
    assert len(calls) == 2  # a and b once each, however many pairs they are in


# --------------------------------------------------------------------------- ties
def test_duplicate_rows_follow_the_tie_rule():
    """Exact duplicates (cosine 1 with each other) come first, by index; a duplicate group cut
    by the k-th place is taken by index; rows of equal cosine elsewhere likewise."""
    rng = np.random.default_rng(1)
    base = rng.standard_normal((40, 8)).astype(np.float32)
    reps = np.concatenate([np.full(12, 0), np.full(3, 1), np.full(2, 2), np.arange(3, 40)])
    x = base[rng.permutation(reps)]
    for k in (1, 2, 4, 11, 12, 15):
        np.testing.assert_array_equal(neighbour_sets(x, k), reference_sets(x, k), err_msg=f"{k}")
    y = x + 0.3 * rng.standard_normal(x.shape).astype(np.float32)
    got = values(knn_measures({"x": x}, {"y": y}, MEASURES_KNN, 6))
    mutual, ck = brute(x, y, 6)
    assert got[("x", "y", "mutual_knn")] == pytest.approx(mutual, abs=1e-12)
    assert got[("x", "y", "cknna")] == pytest.approx(ck, rel=1e-9)


def test_all_rows_identical():
    x = np.ones((6, 3))
    np.testing.assert_array_equal(neighbour_sets(x, 2), [[1, 2], [0, 2], [0, 1], [0, 1],
                                                         [0, 1], [0, 1]])
    y = np.concatenate([np.ones((3, 3)), -np.ones((3, 3))])
    got = values(knn_measures({"x": x}, {"y": y}, MEASURES_KNN, 3))
    mutual, ck = brute(x, y, 3)
    assert got[("x", "y", "mutual_knn")] == pytest.approx(mutual, abs=1e-12)
    assert got[("x", "y", "cknna")] == pytest.approx(ck, rel=1e-9)


def test_near_ties_below_float32_resolution_are_settled_in_float64(monkeypatch):
    """A cluster of 30 rows whose cosines differ by ~1e-9..1e-5 (float32 cannot tell all of them
    apart): the sets are those of the float64 order, through the re-scoring paths."""
    rng = np.random.default_rng(2)
    far = rng.standard_normal((50, 16))
    centre = rng.standard_normal(16)
    scale = np.linspace(1e-4, 1e-2, 30)[:, None]
    cluster = centre + scale * rng.standard_normal((30, 16))
    x = np.concatenate([far, cluster])[rng.permutation(80)]
    used = {"picks": 0, "full": 0}
    real_full, real_pick = knn_mod._choose_full, knn_mod._pick

    def spy_full(gr, full, *args):
        used["full"] += len(full)
        return real_full(gr, full, *args)

    def spy_pick(*args):
        used["picks"] += 1
        return real_pick(*args)

    monkeypatch.setattr(knn_mod, "_choose_full", spy_full)
    monkeypatch.setattr(knn_mod, "_pick", spy_pick)
    for k in (3, 8, 20):
        np.testing.assert_array_equal(neighbour_sets(x, k), reference_sets(x, k), err_msg=f"{k}")
    assert used["full"] > 0 and used["picks"] > used["full"]  # both re-scoring paths ran


# --------------------------------------------------------------------------- real rows
@pytest.fixture(scope="module")
def minilm_rows() -> dict[str, np.ndarray]:
    model = lamina.load("minilm")
    text = (lamina.__path__[0] + "/data/tinyshakespeare.txt")
    with open(text, encoding="utf-8") as f:
        lines = [ln for ln in f.read().splitlines() if len(ln.split()) >= 3][:60]
    acts = model.collect(lines, ["hidden.0", "hidden.3", "hidden.6"], positions="all",
                         progress=False)
    mask = acts.mask
    return {s: acts[s][mask].numpy() for s in acts.sites}


@pytest.mark.parametrize("k", [5, 10])
def test_minilm_rows_equal_brute_force(minilm_rows, k):
    got = values(knn_measures(minilm_rows, minilm_rows, MEASURES_KNN, k))
    for sa, sb in [("hidden.0", "hidden.3"), ("hidden.3", "hidden.6"), ("hidden.0", "hidden.6")]:
        mutual, ck = brute(minilm_rows[sa], minilm_rows[sb], k)
        assert got[(sa, sb, "mutual_knn")] == pytest.approx(mutual, abs=1e-12)
        assert got[(sa, sb, "cknna")] == pytest.approx(ck, rel=1e-9)
    x = minilm_rows["hidden.0"]  # [CLS] rows repeat exactly: duplicates
    assert len(np.unique(x, axis=0)) < len(x)
    np.testing.assert_array_equal(neighbour_sets(x, k), reference_sets(x, k))


def test_minilm_spearman_equals_scipy(minilm_rows):
    rows = {s: minilm_rows[s][:400] for s in ("hidden.0", "hidden.6")}
    got = values(spearman_rsa(rows, rows))
    iu = np.triu_indices(400, 1)
    ref = stats.spearmanr(cosine(rows["hidden.0"])[iu], cosine(rows["hidden.6"])[iu])
    # tied pair values (duplicate rows) may differ in the last bit between the two float64
    # products, which moves a few ranks by 1/2: 1e-6 relative, the acceptance tolerance
    assert got[("hidden.0", "hidden.6", "rsa_spearman")] == pytest.approx(ref.statistic,
                                                                           rel=1e-6)
    assert got[("hidden.6", "hidden.6", "rsa_spearman")] == pytest.approx(1.0, rel=1e-12)


# --------------------------------------------------------------------------- refusals
def test_bad_input_is_refused_clearly(random_pair):
    a, b = random_pair
    with pytest.raises(LaminaError, match=r"k=299 is too large for N=300.*k <= 298"):
        knn_measures({"a": a}, {"b": b}, ["mutual_knn"], 299)
    with pytest.raises(LaminaError, match="k=3 is too large for N=4"):
        knn_measures({"a": a[:4]}, {"b": b[:4]}, ["mutual_knn"], 3)
    for bad_k in (0, True, 2.5):
        with pytest.raises(LaminaError, match="k must be a positive int"):
            knn_measures({"a": a}, {"b": b}, ["cknna"], bad_k)
    with pytest.raises(LaminaError, match="Unknown kNN measure 'cka'"):
        knn_measures({"a": a}, {"b": b}, ["cka"])
    with pytest.raises(LaminaError, match="same N rows"):
        knn_measures({"a": a}, {"b": b[:-1]}, ["cknna"])
    z = a.copy()
    z[[3, 7]] = 0
    with pytest.raises(LaminaError, match=r"exactly zero \(2 rows: 3, 7\)"):
        knn_measures({"a": z}, {"b": b}, ["mutual_knn"])
    z[3, 0] = np.nan
    with pytest.raises(LaminaError, match=r"NaN or infinite values \(row 3\)"):
        knn_measures({"a": z}, {"b": b}, ["mutual_knn"])


# --------------------------------------------------------------------------- Spearman
def test_pair_values_are_the_upper_triangle(random_pair):
    a = random_pair[0][:123].astype(np.float64)
    u = a / np.linalg.norm(a, axis=1, keepdims=True)
    np.testing.assert_allclose(pair_values(u), cosine(a)[np.triu_indices(123, 1)], atol=1e-14)


@pytest.mark.parametrize("kind", ["cosine", "correlation"])
def test_spearman_equals_scipy(random_pair, kind):
    a, b = (x[:200] for x in random_pair)
    b = b.copy()
    b[10:20] = b[0]  # duplicate rows: tied pair values, average ranks
    got = values(spearman_rsa({"a": a}, {"b": b, "a": a}, kind=kind))
    name = "rsa_spearman" if kind == "cosine" else "rsa_spearman_correlation"

    def sim(x):
        x = x.astype(np.float64)
        return cosine(x - x.mean(1, keepdims=True) if kind == "correlation" else x)

    iu = np.triu_indices(200, 1)
    ref = stats.spearmanr(sim(a)[iu], sim(b)[iu]).statistic
    assert got[("a", "b", name)] == pytest.approx(ref, rel=1e-6)
    assert got[("a", "a", name)] == pytest.approx(1.0, rel=1e-12)
    assert -1 < ref < 1 and ref != 0


def test_spearman_size_and_bad_rows_refused():
    n = SPEARMAN_MAX_ROWS + 1
    x = np.ones((n, 1), dtype=np.float32)
    with pytest.raises(LaminaError, match=rf"N = {n:,} rows.*limit of SPEARMAN_MAX_ROWS = "
                                          rf"{SPEARMAN_MAX_ROWS:,}.*Use 'rsa'.*subsample"):
        spearman_rsa({"a": x}, {"b": x})
    rows = np.random.default_rng(0).standard_normal((10, 4))
    rows[4] = 2.5
    with pytest.raises(LaminaError, match=r"constant \(row 4\)"):
        spearman_rsa({"a": rows}, {"b": rows}, kind="correlation")
    with pytest.raises(LaminaError, match="kind must be one of"):
        spearman_rsa({"a": rows}, {"b": rows}, kind="spearman")
    got = spearman_rsa({"a": rows[:2]}, {"b": rows[:2]})
    assert np.isnan(got[0]["value"]) and "at least 2 pairs" in got[0]["note"]
