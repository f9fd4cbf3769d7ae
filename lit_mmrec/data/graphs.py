"""Graph construction shared by all models: the normalised user-item adjacency and item-item KNN graphs."""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch

KnnWeighting = Literal["binary", "similarity"]
KnnSearch = Literal["exact", "ivf"]


def scipy_to_torch_csr(matrix: sp.spmatrix) -> torch.Tensor:
    """Convert a scipy sparse matrix to a float32 torch sparse CSR tensor.

    CSR is torch's fastest sparse-dense product on CPU; int32 indices (while nnz fits) take the
    MKL/cuSPARSE kernels, measurably faster than int64 on this project's benchmark machine.
    """
    csr = sp.csr_matrix(matrix, dtype=np.float32)
    csr.sort_indices()
    index_dtype = np.int32 if csr.nnz < np.iinfo(np.int32).max else np.int64
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(
            torch.from_numpy(csr.indptr.astype(index_dtype)),
            torch.from_numpy(csr.indices.astype(index_dtype)),
            torch.from_numpy(csr.data),
            size=csr.shape,
            check_invariants=False,  # built from a sorted scipy CSR, valid by construction
        )


def torch_csr_to_scipy(matrix: torch.Tensor) -> sp.csr_matrix:
    """A torch sparse CSR matrix as a scipy CSR matrix, on the CPU (the inverse of :func:`scipy_to_torch_csr`)."""
    return sp.csr_matrix((matrix.values().cpu().numpy(), matrix.col_indices().cpu().numpy(),
                          matrix.crow_indices().cpu().numpy()), shape=tuple(matrix.shape))


def symmetric_normalise(matrix: sp.spmatrix) -> sp.csr_matrix:
    """``D^-1/2 A D^-1/2`` with D the row sums of A; rows with zero degree stay zero."""
    csr = sp.csr_matrix(matrix, dtype=np.float32)
    degree = np.asarray(csr.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(degree)
    nonzero = degree > 0
    inv_sqrt[nonzero] = degree[nonzero] ** -0.5
    scale = sp.diags(inv_sqrt)
    return sp.csr_matrix(scale @ csr @ scale, dtype=np.float32)


def bipartite_adjacency(train: sp.csr_matrix) -> sp.csr_matrix:
    """The (n_users + n_items) square adjacency ``[[0, R], [R^T, 0]]`` of the interaction matrix R."""
    return sp.bmat([[None, train], [train.T, None]], format="csr", dtype=np.float32)


def sym_norm_adjacency(train: sp.csr_matrix) -> sp.csr_matrix:
    """LightGCN's ``D^-1/2 A D^-1/2`` over the user-item bipartite graph; users first, then items."""
    return symmetric_normalise(bipartite_adjacency(train))


def square_csr(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, n_nodes: int) -> torch.Tensor:
    """The [n_nodes, n_nodes] torch sparse CSR with entries ``values`` at (``rows``, ``cols``), indices in
    range by construction (not re-checked); repeated positions are summed."""
    graph = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n_nodes, n_nodes),
                                    check_invariants=False).coalesce()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return graph.to_sparse_csr()


def generated_bipartite_graph(
    users: torch.Tensor,
    items: torch.Tensor,
    n_users: int,
    n_items: int,
    keep_rate: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Normalised user-item graph from generated edges (u, i), as a torch sparse CSR [(U + I)^2].

    Binary edges plus self-loops, ``D^-1/2 (A + I) D^-1/2`` (DASRec eq 23; DiffMM's ``buildUIMatrix``).
    With ``keep_rate`` < 1 each undirected edge and each self-loop is then kept with that probability
    and rescaled by ``1 / keep_rate`` (DiffMM's edge dropout; both directions of an edge drop together,
    so the graph stays symmetric). Duplicated pairs count once. Built on the tensors' device.
    """
    device = users.device
    n_nodes = n_users + n_items
    pairs = torch.unique(users.long() * n_items + items.long())
    users, items = pairs // n_items, pairs % n_items + n_users
    loops = torch.arange(n_nodes, device=device)
    degree = torch.bincount(torch.cat([users, items]), minlength=n_nodes).float() + 1.0  # + self-loop
    inv_sqrt = degree.rsqrt()
    edge_values = inv_sqrt[users] * inv_sqrt[items]
    loop_values = inv_sqrt[loops] ** 2
    if keep_rate < 1.0:
        keep_edge = torch.rand(len(edge_values), generator=generator, device=device) < keep_rate
        keep_loop = torch.rand(n_nodes, generator=generator, device=device) < keep_rate
        users, items, edge_values = users[keep_edge], items[keep_edge], edge_values[keep_edge] / keep_rate
        loops, loop_values = loops[keep_loop], loop_values[keep_loop] / keep_rate
    return square_csr(torch.cat([users, items, loops]), torch.cat([items, users, loops]),
                      torch.cat([edge_values, edge_values, loop_values]), n_nodes)


def degree_edge_weights(users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int) -> torch.Tensor:
    """``1 / sqrt(d_u d_i)`` for each user-item edge (u, i), degrees counted over the given edges."""
    user_degree = torch.bincount(users, minlength=n_users).float()
    item_degree = torch.bincount(items, minlength=n_items).float()
    return (user_degree[users] * item_degree[items]).rsqrt()


def degree_sensitive_pruned_graph(
    users: torch.Tensor,
    items: torch.Tensor,
    n_users: int,
    n_items: int,
    keep_fraction: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """FREEDOM's degree-sensitive edge pruning: a normalised user-item graph [(U + I)^2] (torch sparse CSR)
    of ``floor(keep_fraction * |E|)`` of the edges (u, i), drawn without replacement with probability
    proportional to ``1 / sqrt(d_u d_i)``, so edges between popular nodes are dropped first.

    The kept edges are normalised again by their own degrees, ``D^-1/2 A D^-1/2`` without self-loops;
    nodes left without an edge get an empty row. ``users`` and ``items`` are distinct pairs (the training
    interactions); the graph is built on their device.
    """
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    users, items = users.long(), items.long()
    n_keep = max(1, int(len(users) * keep_fraction))
    if n_keep < len(users):
        kept = torch.multinomial(degree_edge_weights(users, items, n_users, n_items), n_keep, replacement=False,
                                 generator=generator)
        users, items = users[kept], items[kept]
    values = degree_edge_weights(users, items, n_users, n_items)
    return square_csr(torch.cat([users, items + n_users]), torch.cat([items + n_users, users]),
                      torch.cat([values, values]), n_users + n_items)


def knn_neighbours(normalised: torch.Tensor, k: int, include_self: bool = True, block_size: int = 1024
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's ``k`` largest cosine similarities and their columns [n, k], for unit-norm rows.

    Computed ``block_size`` rows at a time (no n x n matrix is held) and without gradient. Without
    ``include_self`` an item is never its own neighbour. The similarity block and the results are
    allocated once and written in place: with freed memory kept for reuse
    (:func:`lit_mmrec.runtime.keep_freed_memory_for_reuse`), a fresh block per step fragments the heap and
    the process grows with every block (docs/benchmarks.md).
    """
    n_items = normalised.shape[0]
    if not 0 < k < n_items + (1 if include_self else 0):
        raise ValueError(f"knn k={k} must be between 1 and the number of candidate neighbours ({n_items})")
    values = torch.empty(n_items, k, dtype=normalised.dtype, device=normalised.device)
    indices = torch.empty(n_items, k, dtype=torch.long, device=normalised.device)
    block = torch.empty(min(block_size, n_items), n_items, dtype=normalised.dtype, device=normalised.device)
    with torch.no_grad():
        for start in range(0, n_items, block_size):  # blocks of items, vectorised inside
            rows = normalised[start : start + block_size]
            similarity = block[: len(rows)]
            torch.matmul(rows, normalised.T, out=similarity)  # [block, n_items]
            if not include_self:
                local = torch.arange(len(similarity), device=similarity.device)
                similarity[local, local + start] = -torch.inf
            torch.topk(similarity, k, dim=1, out=(values[start : start + block_size],
                                                  indices[start : start + block_size]))
    return values, indices


def ivf_knn_neighbours(normalised: torch.Tensor, k: int, include_self: bool = True, n_lists: int | None = None,
                       n_probe: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximate :func:`knn_neighbours` with faiss's inverted-file index (``IndexIVFFlat``, inner product).

    The unit-norm rows are clustered into ``n_lists`` cells (k-means on at most 64 rows per cell; default
    ``4 sqrt(n)`` cells, at most n / 39 so that faiss has its 39 training rows per cell); each row is compared with the rows of its ``n_probe`` nearest cells only, so the
    cost is about ``n * n * n_probe / n_lists`` products instead of ``n * n``. With ``n_probe = n_lists``
    the search is exhaustive and equals the exact one. Needs ``pip install faiss-cpu``.
    """
    try:
        import faiss
    except ImportError:
        raise ImportError("knn_search: ivf needs faiss: pip install faiss-cpu (or lit_mmrec[ann]); or set "
                          "knn_search: exact") from None
    x = np.ascontiguousarray(normalised.detach().cpu().numpy(), dtype=np.float32)
    n_items, width = x.shape
    if not 0 < k < n_items + (1 if include_self else 0):
        raise ValueError(f"knn k={k} must be between 1 and the number of candidate neighbours ({n_items})")
    n_lists = min(n_items, n_lists or max(1, min(int(4 * n_items**0.5), n_items // 39)))
    faiss.omp_set_num_threads(torch.get_num_threads())
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(width), width, n_lists, faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(0).permutation(n_items)[: 64 * n_lists]
    index.train(x[np.sort(sample)])
    index.add(x)
    index.nprobe = min(n_probe, n_lists)
    wanted = k + (0 if include_self else 1)
    values, indices = index.search(x, wanted)  # [n, wanted], best first; -1 where the probed cells ran out
    if not include_self:  # drop each row's own entry, or its last one where it is not among the results
        own = indices == np.arange(n_items)[:, None]
        own[~own.any(axis=1), -1] = True
        keep = np.argsort(own, axis=1, kind="stable")[:, :k]
        values, indices = np.take_along_axis(values, keep, 1), np.take_along_axis(indices, keep, 1)
    if (indices < 0).any():
        raise ValueError(f"knn_search: ivf found fewer than k={k} neighbours for {int((indices < 0).any(1).sum())} "
                         f"items in their {index.nprobe} probed cells of {n_lists}; raise knn_probe or lower "
                         f"knn_lists")
    return torch.from_numpy(values), torch.from_numpy(indices.astype(np.int64))


def item_item_knn_graph(
    features: np.ndarray | torch.Tensor,
    k: int = 10,
    weighting: KnnWeighting = "binary",
    include_self: bool = True,
    block_size: int = 1024,
    search: KnnSearch = "exact",
    ivf_lists: int | None = None,
    ivf_probe: int = 32,
) -> sp.csr_matrix:
    """Top-k cosine-similarity neighbours of each item, symmetrically normalised (DiffCL eq 18-21).

    ``exact`` search computes similarities ``block_size`` rows at a time (:func:`knn_neighbours`), so no
    items x items dense matrix is held; ``ivf`` searches faiss's inverted-file index
    (:func:`ivf_knn_neighbours`, ``ivf_lists`` cells, ``ivf_probe`` probed), for catalogues where n^2
    products take too long. Each row keeps its ``k`` most similar items (edges of weight 1 for ``binary``,
    the cosine similarity for ``similarity``, negative similarities clipped to 0). With ``include_self``
    the item itself may be among its neighbours, as in MMRec's LATTICE/FREEDOM code, where
    self-similarity 1 always ranks first. The result is ``D^-1/2 S D^-1/2`` with D the row sums of S.
    """
    x = torch.nn.functional.normalize(torch.as_tensor(features, dtype=torch.float32), dim=1)
    if search == "exact":
        top_values, top_indices = knn_neighbours(x, k, include_self, block_size)
    elif search == "ivf":
        top_values, top_indices = ivf_knn_neighbours(x, k, include_self, ivf_lists, ivf_probe)
    else:
        raise ValueError(f"knn search must be 'exact' or 'ivf', got {search!r}")
    n_items = x.shape[0]
    row = torch.arange(n_items).repeat_interleave(k).numpy()
    col = top_indices.reshape(-1).numpy()
    if weighting == "binary":
        weight = np.ones(len(row), dtype=np.float32)
    elif weighting == "similarity":
        weight = top_values.reshape(-1).clamp_min(0.0).numpy()
    else:
        raise ValueError(f"knn weighting must be 'binary' or 'similarity', got {weighting!r}")
    graph = sp.csr_matrix((weight, (row, col)), shape=(n_items, n_items), dtype=np.float32)
    return symmetric_normalise(graph)


def user_cooccurrence_graph(train: sp.csr_matrix, k: int, block_rows: int = 2048) -> sp.csr_matrix:
    """Each user's ``k`` users with the most items in common, weighted by that count, as a sparse
    [n_users, n_users] matrix (DualGNN's and DRAGON's user-user graph; MMRec's preprocessing script).

    ``C = R R^T`` without its diagonal, computed ``block_rows`` users at a time (no users x users matrix is
    held); each row keeps its ``k`` largest counts, ties broken towards the lower user id; users who share no
    item with anyone get an empty row. Not symmetric: v may be among u's top k without u among v's.
    """
    if k < 1:
        raise ValueError(f"user graph k must be at least 1, got {k}")
    csr = sp.csr_matrix(train, dtype=np.float32)
    csr.data[:] = 1.0
    transpose = csr.T.tocsr()
    n_users = csr.shape[0]
    rows, cols, values = [], [], []
    for start in range(0, n_users, block_rows):  # blocks of users, vectorised inside
        block = (csr[start : start + block_rows] @ transpose).tocoo()
        row, col, count = block.row.astype(np.int64) + start, block.col.astype(np.int64), block.data
        off_diagonal = row != col
        row, col, count = row[off_diagonal], col[off_diagonal], count[off_diagonal]
        order = np.lexsort((col, -count, row))  # by user, then count descending, then neighbour id
        row, col, count = row[order], col[order], count[order]
        first = np.searchsorted(row, row, side="left")  # each entry's row start in the sorted block
        keep = np.arange(len(row)) - first < k
        rows.append(row[keep]), cols.append(col[keep]), values.append(count[keep])
    return sp.csr_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(n_users, n_users), dtype=np.float32)


def default_cache_dir() -> Path:
    """``$LIT_MMREC_CACHE``, else ``$XDG_CACHE_HOME/lit_mmrec``, else ``~/.cache/lit_mmrec``."""
    if "LIT_MMREC_CACHE" in os.environ:
        return Path(os.environ["LIT_MMREC_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "lit_mmrec"


def cached_item_item_knn_graph(
    features: np.ndarray,
    k: int,
    weighting: KnnWeighting,
    include_self: bool,
    cache_dir: Path | None,
    search: KnnSearch = "exact",
    ivf_lists: int | None = None,
    ivf_probe: int = 32,
) -> sp.csr_matrix:
    """:func:`item_item_knn_graph`, cached on disk under a hash of the features and the parameters."""
    options = dict(search=search, ivf_lists=ivf_lists, ivf_probe=ivf_probe)
    if cache_dir is None:
        return item_item_knn_graph(features, k, weighting, include_self, **options)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(np.ascontiguousarray(features, dtype=np.float32).data)  # the buffer itself, not a copy
    search_key = "" if search == "exact" else f"|ivf={ivf_lists},{ivf_probe}"  # exact keeps its earlier key
    digest.update(f"{features.shape}|k={k}|w={weighting}|self={include_self}{search_key}|v1".encode())
    path = Path(cache_dir) / f"knn-{digest.hexdigest()}.npz"
    if path.is_file():
        return sp.load_npz(path).tocsr()
    graph = item_item_knn_graph(features, k, weighting, include_self, **options)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp.npz")
    sp.save_npz(temporary, graph)
    os.replace(temporary, path)  # atomic, so concurrent processes never read a half-written file
    return graph


@dataclass
class RecGraphs:
    """Everything graph-shaped a model needs, as torch tensors on one device.

    * ``norm_adjacency``: sparse CSR [(n_users + n_items)^2], ``D^-1/2 A D^-1/2``;
    * ``item_item``: per modality, sparse CSR [n_items, n_items] normalised KNN graph;
    * ``features``: per modality, dense float32 [n_items, d_m] raw item features;
    * ``train_interactions``: sparse CSR [n_users, n_items] binary training matrix.
    """

    n_users: int
    n_items: int
    norm_adjacency: torch.Tensor
    train_interactions: torch.Tensor
    item_item: dict[str, torch.Tensor] = field(default_factory=dict)
    features: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> RecGraphs:
        return RecGraphs(
            self.n_users,
            self.n_items,
            self.norm_adjacency.to(device),
            self.train_interactions.to(device),
            {name: graph.to(device) for name, graph in self.item_item.items()},
            {name: feature.to(device) for name, feature in self.features.items()},
        )
