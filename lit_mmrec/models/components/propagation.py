"""Sparse graph propagation (LightGCN-style message passing) used by every graph model."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

_BAG_DTYPES = (torch.float32, torch.float64)  # weighted embedding_bag sums on CPU

LayerCombination = Literal["mean", "sum"]


def _spmm(adjacency: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``adjacency @ dense`` for a sparse ``adjacency``, into a fresh output, without autograd (the
    callers are autograd Functions that define the products' gradients).

    On CPU, for a CSR ``adjacency`` whose values have ``dense``'s dtype, the product runs as a weighted
    ``embedding_bag`` sum: row i of the result is ``sum_j a_ij dense[j]`` over row i's entries, the
    CSR arrays being exactly the bags' indices, offsets and per-entry weights. That kernel (FBGEMM's
    on x86) is faster than torch's CSR product for the graphs here (``benchmarks/sparse_products.py``;
    docs/benchmarks.md), and gives the same sums up to float rounding.

    Elsewhere (CUDA, COO inputs, other dtypes) ``addmm_`` with ``beta=0`` writes into an uninitialised
    output: it skips the zero fill that ``torch.sparse.mm`` does first and the copy of its input that
    the functional ``torch.addmm`` makes for a CSR operand.
    """
    if (dense.device.type == "cpu" and adjacency.layout == torch.sparse_csr and dense.dim() == 2
            and adjacency.values().dtype == dense.dtype and dense.dtype in _BAG_DTYPES):
        # detached: a table that requires grad sends embedding_bag down its slower autograd-ready path
        # (10% here), and gradients of these products are the callers' (_SparseMatmul, _PropagatedRows)
        return F.embedding_bag(adjacency.col_indices(), dense.detach().contiguous(), adjacency.crow_indices(),
                               mode="sum", per_sample_weights=adjacency.values(), include_last_offset=True)
    return _addmm_product(adjacency, dense)


def _addmm_product(adjacency: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``adjacency @ dense`` by torch's sparse kernel, ``addmm_`` into an uninitialised output (see :func:`_spmm`)."""
    return dense.new_empty(adjacency.shape[0], dense.shape[1]).addmm_(adjacency, dense, beta=0)


class _SparseMatmul(torch.autograd.Function):
    """``A @ X`` for a constant sparse A, whose backward multiplies by a precomputed ``A^T``.

    torch's own backward for a CSR product transposes A on every call, which costs more than the
    product itself; graphs here are constant, so the transpose is built once (and for symmetric
    graphs, such as ``D^-1/2 A D^-1/2``, it is A itself).
    """

    @staticmethod
    def forward(ctx, adjacency: torch.Tensor, adjacency_t: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        ctx.adjacency_t = adjacency_t
        return _spmm(adjacency, dense)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_dense = _spmm(ctx.adjacency_t, grad_output) if ctx.needs_input_grad[2] else None
        return None, None, grad_dense


def sparse_matmul(adjacency: torch.Tensor, dense: torch.Tensor, adjacency_t: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """``adjacency @ dense``; pass ``adjacency_t`` (its transpose) unless ``adjacency`` is symmetric."""
    return _SparseMatmul.apply(adjacency, adjacency if adjacency_t is None else adjacency_t, dense)


def propagate(adjacency: torch.Tensor, embeddings: torch.Tensor, n_layers: int,
              adjacency_t: torch.Tensor | None = None) -> list[torch.Tensor]:
    """``[E, A E, A^2 E, ...]``: the input and each of ``n_layers`` sparse propagations ``E <- A E``.

    ``adjacency_t`` is A's transpose, needed for gradients unless A is symmetric.
    """
    layers = [embeddings]
    for _ in range(n_layers):
        layers.append(sparse_matmul(adjacency, layers[-1], adjacency_t))
    return layers


def csr_rows(matrix: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows ``rows`` [r] of a sparse CSR ``matrix`` [n, m] as a sparse CSR [r, m], vectorised.

    Costs O(entries of the selected rows); the other rows are never touched. Gathers are
    ``index_select``: advanced indexing (``x[idx]``) took 2-3x as long here on CPU.
    """
    crow, col, values = matrix.crow_indices(), matrix.col_indices(), matrix.values()
    rows = rows.to(crow.device)
    starts = crow.index_select(0, rows).long()
    counts = crow.index_select(0, rows + 1).long() - starts
    new_crow = torch.zeros(len(rows) + 1, dtype=torch.long, device=crow.device)
    torch.cumsum(counts, 0, out=new_crow[1:])
    total = int(new_crow[-1])
    # source position of each kept entry: its output position shifted by (source row start - output row start)
    shift = torch.repeat_interleave(starts - new_crow[:-1], counts, output_size=total)
    position = shift.add_(torch.arange(total, device=crow.device))
    return torch.sparse_csr_tensor(new_crow.to(crow.dtype), col.index_select(0, position),
                                   values.index_select(0, position), (len(rows), matrix.shape[1]),
                                   check_invariants=False)


def csr_columns(matrix: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Columns ``columns`` [c] (distinct) of a sparse CSR ``matrix`` [n, m] as a sparse CSR [n, c],
    column j of the result being column ``columns[j]``; one vectorised pass over the entries."""
    crow, col, values = matrix.crow_indices(), matrix.col_indices(), matrix.values()
    new_index = torch.full((matrix.shape[1],), -1, dtype=col.dtype, device=col.device)
    new_index.index_copy_(0, columns.to(col.device), torch.arange(len(columns), dtype=col.dtype, device=col.device))
    mapped = new_index.index_select(0, col)
    keep = mapped >= 0
    kept_before = torch.zeros(len(col) + 1, dtype=torch.long, device=col.device)
    torch.cumsum(keep, 0, out=kept_before[1:])
    position = keep.nonzero().squeeze(1)
    return torch.sparse_csr_tensor(kept_before.index_select(0, crow.long()).to(crow.dtype),
                                   mapped.index_select(0, position), values.index_select(0, position),
                                   (matrix.shape[0], len(columns)), check_invariants=False)


class _PropagatedRows(torch.autograd.Function):
    """Rows ``rows`` (distinct) of ``sum_{k=0..L} A^k E`` (divided by L + 1 for the mean; ``A^L E`` alone
    for ``last``), without the other rows.

    A loss that reads only a batch's rows of a LightGCN-style propagation needs the last layer only at
    those rows, and the layer sum only there: forward runs L - 1 full products and one over the
    selected rows of A; no full-size sums. The map is linear in E, so backward needs no activations:
    ``sum_k (A^T)^k S^T g`` by Horner's rule, ``v + A^T(v + ... A^T v)`` with ``v = S^T g`` nonzero
    only on ``rows``, so the first product reads only A^T's columns ``rows`` and each ``v +`` is an
    ``index_add_`` of ``len(rows)`` rows, not a full-size add.
    """

    @staticmethod
    def forward(ctx, embeddings, adjacency, adjacency_t, rows, n_layers, how):
        if n_layers == 0:
            out = embeddings.index_select(0, rows)
        else:
            layer = embeddings
            out = embeddings.index_select(0, rows) if how != "last" else None
            for _ in range(n_layers - 1):
                layer = _spmm(adjacency, layer)
                if out is not None:
                    out += layer.index_select(0, rows)
            last_rows = csr_rows(adjacency, rows)  # the last layer, at the selected rows only
            out = _spmm(last_rows, layer) if out is None else out.add_(_spmm(last_rows, layer))
        if how == "mean":
            out /= n_layers + 1
        ctx.adjacency_t, ctx.n_layers, ctx.how = adjacency_t, n_layers, how
        ctx.n_nodes = embeddings.shape[0]
        ctx.save_for_backward(rows)
        return out

    @staticmethod
    def backward(ctx, grad_output):
        (rows,) = ctx.saved_tensors
        g = grad_output / (ctx.n_layers + 1) if ctx.how == "mean" else grad_output.contiguous()
        if ctx.n_layers == 0:
            return g.new_zeros(ctx.n_nodes, g.shape[1]).index_add_(0, rows, g), None, None, None, None, None
        every_layer = ctx.how != "last"
        grad = _spmm(csr_columns(ctx.adjacency_t, rows), g)  # A^T v, v = S^T g nonzero on rows only
        for _ in range(ctx.n_layers - 1):
            grad = _spmm(ctx.adjacency_t, grad.index_add_(0, rows, g) if every_layer else grad)
        return grad.index_add_(0, rows, g) if every_layer else grad, None, None, None, None, None


def propagate_rows(adjacency: torch.Tensor, embeddings: torch.Tensor, n_layers: int, rows: torch.Tensor,
                   how: LayerCombination | Literal["last"], adjacency_t: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """Rows ``rows`` of the propagation's layers 0..L combined by ``how``, computed for those rows only.

    ``how`` is ``sum`` or ``mean`` (``combine_layers(propagate(adjacency, embeddings, n_layers), how)[rows]``)
    or ``last`` (``propagate(...)[-1][rows]``). For training steps whose losses read a batch's rows;
    ``rows`` may repeat. Same values and gradients as the full propagation followed by a gather, up to
    float rounding, at L - 1 full sparse products plus one over the rows' part of A each way, instead
    of L, and without full-size layer sums. ``adjacency_t`` is A's transpose, needed for gradients
    unless A is symmetric.
    """
    if how not in ("mean", "sum", "last"):
        raise ValueError(f"layer combination must be 'mean', 'sum' or 'last', got {how!r}")
    unique, inverse = torch.unique(rows, return_inverse=True)
    out = _PropagatedRows.apply(embeddings, adjacency, adjacency if adjacency_t is None else adjacency_t,
                                unique, n_layers, how)
    return out.index_select(0, inverse)


def combine_layers(layers: list[torch.Tensor], how: LayerCombination) -> torch.Tensor:
    """Mean (LightGCN paper, alpha_k = 1/(K+1)) or sum (DiffCL eq 4) of the layer outputs."""
    if how not in ("mean", "sum"):
        raise ValueError(f"layer combination must be 'mean' or 'sum', got {how!r}")
    total = layers[0]
    for layer in layers[1:]:  # running sum: no [n_layers + 1, n_nodes, dim] stack
        total = total + layer
    return total / len(layers) if how == "mean" else total


def gather_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for a 1-D ``index``, as ``index_select``: the same values, a cheaper gradient.

    Autograd turns ``table[index]`` into an ``index_put_(accumulate=True)`` into a zero table, which on
    CPU costs several times ``index_select``'s backward, an ``index_add_``. The two sum repeated rows' gradients in different orders, so
    gradients agree to float rounding, not bit for bit. A BPR step gathers such rows six times or
    more, so every model's training path gathers through this.
    """
    return table.index_select(0, index)


def weighted_graph_sum(graphs: dict[str, torch.Tensor], weights: dict[str, float]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``S = sum_m w_m S_m`` of sparse graphs of one shape, and its transpose, both sparse CSR (the
    modality-weighted item-item graph of FREEDOM and DRAGON)."""
    combined = None
    for name, weight in weights.items():
        term = weight * graphs[name].to_sparse_coo()
        combined = term if combined is None else combined + term
    combined = combined.coalesce()
    return combined.to_sparse_csr(), combined.t().coalesce().to_sparse_csr()


def entry_rows(matrix: torch.Tensor) -> torch.Tensor:
    """The row index [nnz] of every stored entry of a sparse CSR ``matrix``, in storage order."""
    crow = matrix.crow_indices()
    return torch.repeat_interleave(torch.arange(len(crow) - 1, device=crow.device), crow.diff(),
                                   output_size=matrix.col_indices().shape[0])


def dense_rows(matrix: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows ``rows`` [B] of a sparse CSR ``matrix`` [n, m] as a dense [B, m] tensor, vectorised.

    For per-batch work on interaction rows (diffusion over users' rows) without ever holding the
    dense n x m matrix.
    """
    return csr_rows(matrix, rows).to_dense()


def row_block(matrix: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Rows ``start:end`` of a sparse CSR matrix as a sparse CSR matrix (no copy of other rows)."""
    crow = matrix.crow_indices()
    first, last = int(crow[start]), int(crow[end])
    return torch.sparse_csr_tensor(crow[start:end + 1] - first, matrix.col_indices()[first:last],
                                   matrix.values()[first:last], (end - start, matrix.shape[1]),
                                   check_invariants=False)
