"""Loss functions shared by the models: BPR, embedding L2 regularisation and InfoNCE."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lit_mmrec.models.components.precision import ProductPrecision, compute_dtype, pad_rows


def bpr_loss(positive_scores: torch.Tensor, negative_scores: torch.Tensor) -> torch.Tensor:
    """Mean of ``-log sigmoid(y_up - y_un)`` (BPR), computed stably with ``softplus``."""
    return F.softplus(negative_scores - positive_scores).mean()


class _SquaredNorm(torch.autograd.Function):
    """``||x||^2`` as one dot product; backward ``2 g x`` in one pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        flat = x.reshape(-1)
        return torch.dot(flat, flat)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return x * (2.0 * grad)


def squared_norm(x: torch.Tensor) -> torch.Tensor:
    """``sum x^2`` over every entry of ``x``, a scalar; the same value and gradient as ``x.pow(2).sum()``.

    Autograd's ``pow`` backward computes ``x^1`` with the general power kernel and multiplies twice; this is
    one dot product forward and one scaled copy backward (DASRec regularises its whole ID table every step).
    """
    if x.is_complex():
        raise TypeError("squared_norm takes a real tensor")
    return _SquaredNorm.apply(x)


def mean_triplet_penalty(users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """``(2 ||e_u||^2 + ||e_p||^2 + ||e_n||^2) / (2 B d)`` over a batch's [B, d] input rows: the per-entry mean
    squared ID rows (the user's counted for its positive and its negative) that MMRec's MMGCN and GRCN
    regularise."""
    batch, dim = users.shape
    return (2 * squared_norm(users) + squared_norm(positives) + squared_norm(negatives)) / (2 * batch * dim)


def l2_regularisation(*embeddings: torch.Tensor) -> torch.Tensor:
    """``sum_e ||e||^2 / (2 B)`` over the batch's embeddings, B the batch size (LightGCN's reference)."""
    batch_size = embeddings[0].shape[0]
    return sum(squared_norm(embedding) for embedding in embeddings) / (2.0 * batch_size)


def _cosine_logits(anchors: torch.Tensor, candidates: torch.Tensor, temperature: float,
                   dtype: torch.dtype | None) -> torch.Tensor:
    """``cos(a_i, c_j) / t`` [n, m] in float32; the product in ``dtype`` when it is given (bfloat16).

    The 1/t is applied to the normalised anchors [n, d] rather than to the logits [n, m]: the same logits
    up to float rounding, without two passes over n x m (forward and backward). In bfloat16 both operands
    are padded to a multiple of 16 rows
    (oneDNN builds a kernel per shape; :func:`pad_rows`), and the logits are sliced back and upcast, so
    the softmax and the loss are float32.
    """
    a = F.normalize(anchors, dim=1).div_(temperature)
    c = F.normalize(candidates, dim=1)
    if dtype is None:
        return a @ c.T
    n, m = a.shape[0], c.shape[0]
    return (pad_rows(a.to(dtype)) @ pad_rows(c.to(dtype)).T)[:n, :m].float()


def info_nce(view_a: torch.Tensor, view_b: torch.Tensor, temperature: float,
             precision: ProductPrecision = "float32") -> torch.Tensor:
    """InfoNCE with cosine similarity: row i of ``view_a`` and ``view_b`` are positives, other rows negatives.

    ``mean_i -log( exp(s(a_i, b_i)/t) / sum_j exp(s(a_i, b_j)/t) )`` with s the cosine similarity.
    ``precision`` is the arithmetic of the n x n similarity product and of its two backward products
    (:mod:`~lit_mmrec.models.components.precision`); the softmax and the loss are float32 either way.
    In bfloat16 each similarity is rounded to 8 significant bits (2^-9 relative); what it saves at each
    size is measured by ``python benchmarks/dense_products.py``.
    """
    logits = _cosine_logits(view_a, view_b, temperature, compute_dtype(precision))
    targets = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, targets)


def info_nce_against(anchors: torch.Tensor, candidates: torch.Tensor, positives: torch.Tensor,
                     temperature: float, precision: ProductPrecision = "float32") -> torch.Tensor:
    """InfoNCE of ``anchors`` [B, d] against every row of ``candidates`` [N, d]; ``positives`` [B] are
    the indices of each anchor's positive in ``candidates`` (cosine similarity, temperature ``t``,
    products at ``precision`` as in :func:`info_nce`).

    ``mean_b -log( exp(s(a_b, c_{p_b})/t) / sum_n exp(s(a_b, c_n)/t) )``: the all-nodes denominator of
    DASRec eq 26-27 and DiffMM's ``contrastLoss``; :func:`info_nce` is the case ``candidates`` =
    the batch's other view.
    """
    return F.cross_entropy(_cosine_logits(anchors, candidates, temperature, compute_dtype(precision)), positives)
