"""Graph building against small hand-built examples."""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from lit_mmrec.data.graphs import (
    cached_item_item_knn_graph,
    degree_sensitive_pruned_graph,
    item_item_knn_graph,
    scipy_to_torch_csr,
    sym_norm_adjacency,
    torch_csr_to_scipy,
    user_cooccurrence_graph,
)


def test_sym_norm_adjacency_matches_hand_computation():
    # users 0, 1; items 0, 1, 2. user 0 -> items 0, 1; user 1 -> item 1.
    train = sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 0]], dtype=np.float32))
    adjacency = sym_norm_adjacency(train).toarray()
    # node order: u0, u1, i0, i1, i2; degrees: u0=2, u1=1, i0=1, i1=2, i2=0
    expected = np.zeros((5, 5), dtype=np.float32)
    expected[0, 2] = expected[2, 0] = 1 / np.sqrt(2 * 1)
    expected[0, 3] = expected[3, 0] = 1 / np.sqrt(2 * 2)
    expected[1, 3] = expected[3, 1] = 1 / np.sqrt(1 * 2)
    np.testing.assert_allclose(adjacency, expected, rtol=1e-6)


FEATURES = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.7, 0.7]], dtype=np.float32)


def test_knn_binary_without_self_picks_most_similar_items():
    graph = item_item_knn_graph(FEATURES, k=1, weighting="binary", include_self=False).toarray()
    # nearest (cosine) neighbour of each item: 0->1, 1->0, 2->3, 3->2, 4->1 (0.707*... ties broken by value)
    neighbours = graph.argmax(axis=1).tolist()
    assert neighbours[:4] == [1, 0, 3, 2]
    assert (graph > 0).sum(axis=1).tolist() == [1] * 5
    # each row has one edge of weight 1, row degree 1 -> D^-1/2 S D^-1/2 keeps weight 1
    np.testing.assert_allclose(graph.sum(axis=1), np.ones(5), rtol=1e-6)


def test_knn_with_self_and_symmetric_normalisation():
    graph = item_item_knn_graph(FEATURES, k=2, weighting="binary", include_self=True).toarray()
    # self similarity 1 ranks first, so each item keeps itself and its nearest neighbour
    assert np.all(np.diag(graph) > 0)
    # binary, every row degree 2: all kept edges become 1 / sqrt(2 * 2) = 0.5
    np.testing.assert_allclose(graph[graph > 0], 0.5, rtol=1e-6)


def test_knn_similarity_weights_and_degree_normalisation():
    graph = item_item_knn_graph(FEATURES, k=2, weighting="similarity", include_self=False)
    raw = np.zeros((5, 5), dtype=np.float32)
    unit = FEATURES / np.linalg.norm(FEATURES, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    for row in range(5):
        top = np.argsort(-similarity[row])[:2]
        raw[row, top] = similarity[row, top]
    degree = raw.sum(axis=1)
    expected = raw / np.sqrt(degree)[:, None] / np.sqrt(degree)[None, :]
    np.testing.assert_allclose(graph.toarray(), expected, rtol=1e-5, atol=1e-7)


def test_knn_blocks_do_not_change_the_result():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(37, 6)).astype(np.float32)
    whole = item_item_knn_graph(features, k=4, block_size=1000)
    blocked = item_item_knn_graph(features, k=4, block_size=5)
    np.testing.assert_allclose(whole.toarray(), blocked.toarray(), rtol=1e-6)


def _clustered(n: int = 800, width: int = 16, clusters: int = 20) -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(clusters, width))
    return (centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, width))).astype(np.float32)


def test_ivf_search_probing_every_cell_is_the_exact_search():
    pytest.importorskip("faiss")
    from lit_mmrec.data.graphs import ivf_knn_neighbours, knn_neighbours

    x = torch.nn.functional.normalize(torch.from_numpy(_clustered()), dim=1)
    for include_self in (True, False):
        exact_values, exact_indices = knn_neighbours(x, 5, include_self)
        values, indices = ivf_knn_neighbours(x, 5, include_self, n_lists=10, n_probe=10)
        assert (indices.sort(1).values == exact_indices.sort(1).values).all()
        torch.testing.assert_close(values, exact_values, atol=1e-5, rtol=0)
        assert include_self or not (indices == torch.arange(len(x))[:, None]).any()


def test_ivf_graph_is_close_to_exact_and_probing_fewer_cells_finds_fewer():
    """On clustered features the default index finds most exact neighbours; one probed cell finds fewer."""
    pytest.importorskip("faiss")
    features = _clustered()
    exact = item_item_knn_graph(features, k=5, include_self=False) > 0
    recall = {probe: (exact.multiply(item_item_knn_graph(features, k=5, include_self=False, search="ivf",
                                                        ivf_probe=probe) > 0).nnz / exact.nnz) for probe in (1, 8)}
    assert recall[8] > 0.95 and recall[1] < recall[8]
    with pytest.raises(ValueError, match="raise knn_probe"):  # one cell of one item cannot give 5 neighbours
        item_item_knn_graph(features, k=5, search="ivf", ivf_lists=800, ivf_probe=1)


def test_knn_rejects_bad_arguments():
    with pytest.raises(ValueError, match="knn k"):
        item_item_knn_graph(FEATURES, k=5, include_self=False)
    with pytest.raises(ValueError, match="weighting"):
        item_item_knn_graph(FEATURES, k=2, weighting="cosine")
    with pytest.raises(ValueError, match="search"):
        item_item_knn_graph(FEATURES, k=2, search="annoy")


def test_knn_cache_roundtrip(tmp_path):
    first = cached_item_item_knn_graph(FEATURES, 2, "binary", True, tmp_path)
    files = list(tmp_path.glob("knn-*.npz"))
    assert len(files) == 1
    second = cached_item_item_knn_graph(FEATURES, 2, "binary", True, tmp_path)
    np.testing.assert_array_equal(first.toarray(), second.toarray())
    cached_item_item_knn_graph(FEATURES, 3, "binary", True, tmp_path)  # other parameters, other key
    assert len(list(tmp_path.glob("knn-*.npz"))) == 2
    if importlib.util.find_spec("faiss") is not None:  # an approximate search is never read as the exact one
        cached_item_item_knn_graph(FEATURES, 2, "binary", True, tmp_path, search="ivf", ivf_lists=1)
        assert len(list(tmp_path.glob("knn-*.npz"))) == 3


def test_scipy_to_torch_csr_roundtrip():
    matrix = sp.random(7, 5, density=0.3, format="csr", dtype=np.float32, random_state=1)
    np.testing.assert_allclose(scipy_to_torch_csr(matrix).to_dense().numpy(), matrix.toarray())
    back = torch_csr_to_scipy(scipy_to_torch_csr(matrix))
    np.testing.assert_allclose(back.toarray(), matrix.toarray())


def test_user_cooccurrence_graph_by_hand():
    # items per user: 0 {0, 1, 2}, 1 {0, 1}, 2 {2}, 3 {0}, 4 {3} (shares nothing)
    train = sp.csr_matrix(np.array([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]]))
    expected_all = np.array([[0, 2, 1, 1, 0], [2, 0, 0, 1, 0], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(user_cooccurrence_graph(train, k=4).toarray(), expected_all)
    # k = 2: user 0 keeps 1 (2 common) and, of the ties at 1, the lower id 2; a block of 2 rows changes nothing
    top_two = user_cooccurrence_graph(train, k=2, block_rows=2).toarray()
    np.testing.assert_array_equal(top_two[0], [0, 2, 1, 0, 0])
    np.testing.assert_array_equal(top_two[1:], expected_all[1:])
    with pytest.raises(ValueError, match="at least 1"):
        user_cooccurrence_graph(train, k=0)


def test_pruned_graph_keeping_every_edge_is_the_normalised_adjacency():
    train = sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 0]], dtype=np.float32))
    users, items = (torch.from_numpy(a.astype(np.int64)) for a in train.nonzero())
    graph = degree_sensitive_pruned_graph(users, items, 2, 3, keep_fraction=1.0)
    np.testing.assert_allclose(graph.to_dense().numpy(), sym_norm_adjacency(train).toarray(), rtol=1e-6)


def test_pruned_graph_renormalises_the_kept_edges_by_hand():
    # user 0 -> items 0, 1, 2; user 1 -> item 0; keep floor(4 * 0.5) = 2 of the 4 edges
    users, items = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 1, 2, 0])
    graph = degree_sensitive_pruned_graph(users, items, 2, 3, keep_fraction=0.5,
                                          generator=torch.Generator().manual_seed(0)).to_dense()
    assert torch.equal(graph, graph.T)
    kept = graph[:2, 2:].nonzero()  # (user, item) of the kept edges
    assert len(kept) == 2
    assert all((int(u), int(i)) in {(0, 0), (0, 1), (0, 2), (1, 0)} for u, i in kept)
    user_degree = torch.bincount(kept[:, 0], minlength=2).float()
    item_degree = torch.bincount(kept[:, 1], minlength=3).float()
    for u, i in kept:  # normalised by the kept graph's degrees, not the original ones
        assert float(graph[u, 2 + i]) == pytest.approx(1 / float(torch.sqrt(user_degree[u] * item_degree[i])))
    again = degree_sensitive_pruned_graph(users, items, 2, 3, keep_fraction=0.5,
                                          generator=torch.Generator().manual_seed(0)).to_dense()
    assert torch.equal(graph, again)  # a function of the generator's seed


def test_pruning_prefers_edges_between_low_degree_nodes():
    """Five edges: (u0, i0) joins two degree-1 nodes (weight 1); user 1 has degree 4, so its four edges
    weigh 1/2 each. Keeping one edge, (u0, i0) is kept with probability 1 / (1 + 4 / 2) = 1/3, against
    1/5 for a uniform draw."""
    users = torch.tensor([0, 1, 1, 1, 1])
    items = torch.tensor([0, 1, 2, 3, 4])
    kept_first = 0
    draws = 3000
    for seed in range(draws):
        graph = degree_sensitive_pruned_graph(users, items, 2, 5, keep_fraction=0.2,
                                              generator=torch.Generator().manual_seed(seed))
        kept_first += int(graph.to_dense()[0, 2] > 0)
    assert kept_first / draws == pytest.approx(1 / 3, abs=0.03)
    with pytest.raises(ValueError, match="keep_fraction"):
        degree_sensitive_pruned_graph(users, items, 2, 5, keep_fraction=0.0)


_KNN_PEAK_GROWTH = """
import resource, torch
from lit_mmrec.runtime import keep_freed_memory_for_reuse
keep_freed_memory_for_reuse()
from lit_mmrec.data.graphs import knn_neighbours
torch.manual_seed(0)
x = torch.nn.functional.normalize(torch.randn(8000, 64), dim=1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
knn_neighbours(x, 10, block_size=1024)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_exact_knn_peak_memory_is_one_similarity_block_with_freed_memory_kept():
    # with glibc keeping freed memory (as the lit_mmrec command does), a fresh block per step fragmented the
    # heap: 8 blocks grew the process by about 7 blocks' bytes; written in place it grows by about one
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LIT_MMREC_MALLOC_TUNING": "1"}
    result = subprocess.run([sys.executable, "-c", _KNN_PEAK_GROWTH], env=env, capture_output=True, text=True,
                            check=True)
    block_bytes = 1024 * 8000 * 4
    assert int(result.stdout.split()[-1]) < 2 * block_bytes
