"""Shared building blocks: sparse propagation (and its gradient), BPR, L2, InfoNCE and full-ranking scores."""

from __future__ import annotations

import math

import pytest
import torch

from lit_mmrec.models.components import (
    bpr_loss,
    combine_layers,
    gather_rows,
    info_nce,
    info_nce_against,
    inner_product_scores,
    l2_regularisation,
    mean_triplet_penalty,
    propagate,
    propagate_rows,
    sparse_matmul,
    squared_norm,
)
from lit_mmrec.models.components.propagation import csr_columns, csr_rows


def test_sparse_matmul_matches_dense_including_gradient():
    torch.manual_seed(0)
    dense_a = torch.rand(6, 6) * (torch.rand(6, 6) > 0.5)
    x = torch.randn(6, 3, requires_grad=True)
    out = sparse_matmul(dense_a.to_sparse_csr(), x, dense_a.T.contiguous().to_sparse_csr())
    (out * torch.arange(3.0)).sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    ((dense_a @ x_ref) * torch.arange(3.0)).sum().backward()
    torch.testing.assert_close(out, dense_a @ x.detach())
    torch.testing.assert_close(x.grad, x_ref.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["csr", "coo"])
def test_sparse_products_by_hand_with_empty_rows_and_strided_inputs(dtype, layout):
    # rows 1 and 3 have no entries; the CPU CSR path sums rows as weighted bags, COO goes through addmm
    a = torch.tensor([[0.5, 0.0, 2.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=dtype)
    sparse = a.to_sparse_csr() if layout == "csr" else a.to_sparse_coo()
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]], dtype=dtype).T.contiguous().T  # strided
    assert not x.is_contiguous()
    expected = torch.tensor([[14.5, 17.0, 19.5], [0.0, 0.0, 0.0], [4.0, 5.0, 6.0], [0.0, 0.0, 0.0]], dtype=dtype)
    torch.testing.assert_close(sparse_matmul(sparse, x, sparse.t() if layout == "coo" else a.T.to_sparse_csr()), expected)
    empty = torch.zeros(4, 3, dtype=dtype).to_sparse_csr()
    torch.testing.assert_close(sparse_matmul(empty, x, torch.zeros(3, 4, dtype=dtype).to_sparse_csr()),
                               torch.zeros(4, 3, dtype=dtype))


def test_propagate_and_combine():
    a = torch.tensor([[0.0, 0.5], [0.5, 0.0]])
    e = torch.tensor([[1.0], [3.0]])
    layers = propagate(a.to_sparse_csr(), e, n_layers=2)
    torch.testing.assert_close(layers[1], torch.tensor([[1.5], [0.5]]))
    torch.testing.assert_close(layers[2], torch.tensor([[0.25], [0.75]]))
    torch.testing.assert_close(combine_layers(layers, "sum"), torch.tensor([[2.75], [4.25]]))
    torch.testing.assert_close(combine_layers(layers, "mean"), torch.tensor([[2.75 / 3], [4.25 / 3]]))
    with pytest.raises(ValueError):
        combine_layers(layers, "max")


def test_propagate_rows_by_hand():
    # the 2-node graph above: E = [1, 3], A E = [1.5, 0.5], A^2 E = [0.25, 0.75]
    a = torch.tensor([[0.0, 0.5], [0.5, 0.0]]).to_sparse_csr()
    e = torch.tensor([[1.0], [3.0]], requires_grad=True)
    out = propagate_rows(a, e, 2, torch.tensor([1, 1, 0]), "sum")
    torch.testing.assert_close(out, torch.tensor([[4.25], [4.25], [2.75]]))
    out.sum().backward()
    # d/dE of (2 * row 1 + row 0) of (I + A + A^2) E, with (I + A + A^2) = [[1.25, 0.5], [0.5, 1.25]]
    torch.testing.assert_close(e.grad, torch.tensor([[2 * 0.5 + 1.25], [2 * 1.25 + 0.5]]))
    last = propagate_rows(a, e.detach(), 2, torch.tensor([0]), "last")
    torch.testing.assert_close(last, torch.tensor([[0.25]]))
    with pytest.raises(ValueError):
        propagate_rows(a, e, 2, torch.tensor([0]), "max")


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("how", ["sum", "mean", "last"])
@pytest.mark.parametrize("n_layers", [0, 1, 3])
def test_propagate_rows_equals_full_propagation_then_gather(symmetric, how, n_layers):
    generator = torch.Generator().manual_seed(n_layers)
    n = 25
    dense = torch.rand(n, n, generator=generator) * (torch.rand(n, n, generator=generator) < 0.2)
    if symmetric:
        dense = dense + dense.T
    a = dense.to_sparse_csr()
    a_t = None if symmetric else dense.T.contiguous().to_sparse_csr()
    rows = torch.tensor([4, 0, 4, 24, 13, 7, 7])  # repeated and unordered rows
    weights = torch.randn(len(rows), 6, generator=generator)
    e = torch.randn(n, 6, generator=generator, requires_grad=True)
    layers = propagate(a, e, n_layers, a_t)
    full = layers[-1] if how == "last" else combine_layers(layers, how)
    expected = gather_rows(full, rows)
    (expected * weights).sum().backward()
    expected_grad, e.grad = e.grad.clone(), None
    out = propagate_rows(a, e, n_layers, rows, how, a_t)
    (out * weights).sum().backward()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(e.grad, expected_grad)
    if n_layers > 0 and how != "last":  # the gradient really flows through the graph, not just the gather
        assert (e.grad[dense[rows].sum(0) > 0] != 0).all()


def test_csr_row_and_column_selection():
    dense = torch.tensor([[0.0, 1.0, 0.0, 2.0], [3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 4.0, 5.0, 6.0]])
    csr = dense.to_sparse_csr()
    torch.testing.assert_close(csr_rows(csr, torch.tensor([3, 0, 2, 3])).to_dense(), dense[[3, 0, 2, 3]])
    torch.testing.assert_close(csr_columns(csr, torch.tensor([3, 1])).to_dense(), dense[:, [3, 1]])
    assert csr_columns(csr, torch.tensor([2]))._nnz() == 1


def test_bpr_loss_value():
    loss = bpr_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0]))
    expected = (-math.log(1 / (1 + math.exp(-2.0))) - math.log(1 / (1 + math.exp(1.0)))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_l2_regularisation_value():
    u = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    i = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    assert l2_regularisation(u, i).item() == pytest.approx((5 + 1 + 9 + 2) / (2 * 2))


def test_squared_norm_value_and_gradient():
    x = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]], requires_grad=True)
    value = squared_norm(x.t())  # a non-contiguous view
    assert value.item() == pytest.approx(1 + 4 + 0.25 + 9 + 0 + 1)
    (3.0 * value).backward()
    torch.testing.assert_close(x.grad, 6.0 * x.detach())  # d/dx 3 ||x||^2 = 6 x
    with pytest.raises(TypeError, match="real"):
        squared_norm(torch.ones(2, dtype=torch.complex64))


def test_info_nce_on_hand_made_views():
    # identical orthogonal views: positive cosine 1, negatives 0
    view = torch.eye(3)
    t = 0.5
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2 * math.exp(0)))
    assert info_nce(view, view, t).item() == pytest.approx(expected, rel=1e-6)
    # scaling a view does not change cosine similarity
    assert info_nce(view, 3 * view, t).item() == pytest.approx(expected, rel=1e-6)
    # bfloat16 products: these similarities (2 and 0 after the 1/t) are exact in bfloat16
    assert info_nce(view, view, t, "bfloat16").item() == pytest.approx(expected, rel=1e-6)


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value.double() - reference).norm() / reference.norm()).item()


@pytest.mark.parametrize("against", [False, True])
def test_info_nce_in_bfloat16_is_float32_up_to_the_products_rounding(against):
    """37 anchors and 53 candidates (not multiples of the 16-row padding): loss and gradients of the
    bfloat16-product InfoNCE against float64, float32 results and gradients, no padded row leaking."""
    generator = torch.Generator().manual_seed(0)
    anchors = torch.randn(37, 24, generator=generator, dtype=torch.float64)
    candidates = torch.randn(53 if against else 37, 24, generator=generator, dtype=torch.float64)
    positives = torch.randint(0, candidates.shape[0], (37,), generator=generator)

    def loss(a: torch.Tensor, c: torch.Tensor, precision: str = "float32") -> torch.Tensor:
        if against:
            return info_nce_against(a, c, positives, 0.2, precision)
        return info_nce(a, c, 0.2, precision)

    inputs64 = [x.clone().requires_grad_() for x in (anchors, candidates)]
    reference = loss(*inputs64)
    reference_grads = torch.autograd.grad(reference, inputs64)
    errors = {}
    for precision in ("float32", "bfloat16"):
        inputs = [x.float().requires_grad_() for x in (anchors, candidates)]
        value = loss(*inputs, precision)
        grads = torch.autograd.grad(value, inputs)
        assert value.dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads)
        assert [g.shape for g in grads] == [x.shape for x in inputs]
        errors[precision] = max(_relative_error(g, r) for g, r in zip(grads, reference_grads))
        assert value.item() == pytest.approx(reference.item(), rel=1e-3)
    assert errors["float32"] < 1e-5
    assert 1e-4 < errors["bfloat16"] < 1e-2  # rounded to 8 significant bits, not worse


@pytest.mark.parametrize("dim", [1, 64, 128])
def test_inner_product_scores_equal_the_matrix_product(dim):
    generator = torch.Generator().manual_seed(dim)
    rows, table = torch.randn(33, dim, generator=generator), torch.randn(517, dim, generator=generator)
    expected = rows @ table.T
    with torch.inference_mode():  # the evaluation path (oneDNN's kernel where torch has it)
        torch.testing.assert_close(inner_product_scores(rows, table), expected)
        torch.testing.assert_close(inner_product_scores(rows[::2], table), expected[::2])  # non-contiguous rows
    torch.testing.assert_close(inner_product_scores(rows, table), expected)  # with autograd on: the plain product
    assert inner_product_scores(torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 4.0], [0.5, -1.0]])).tolist() == [[11.0, -1.5]]


def test_mean_triplet_penalty_by_hand():
    """(2 * 5 + 1 + 4) / (2 * 1 * 2): the user row counts twice, the mean is over the batch's entries."""
    users, positives, negatives = torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    assert mean_triplet_penalty(users, positives, negatives).item() == pytest.approx(15 / 4)
