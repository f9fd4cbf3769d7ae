"""Scores of every item for a block of users: the dense product at the heart of full ranking."""

from __future__ import annotations

import torch


def _onednn_linear_available() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


_ONEDNN_LINEAR = _onednn_linear_available()


def inner_product_scores(rows: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``rows @ table.T``: [B, d] x [n, d] -> [B, n], without autograd.

    On CPU with float32 inputs this runs oneDNN's linear kernel (the one ``torch.compile`` emits for
    ``nn.Linear``) instead of MKL's ``gemm``: for the thin products of full ranking (d = 32..128,
    thousands of items) it gives bitwise-equal scores faster (docs/benchmarks.md). Elsewhere, and when torch was built
    without oneDNN, it is the plain matrix product.
    """
    if (_ONEDNN_LINEAR and rows.device.type == "cpu" and rows.dtype == table.dtype == torch.float32
            and not torch.is_grad_enabled()):
        return torch.ops.mkldnn._linear_pointwise(rows.contiguous(), table.contiguous(), None, "none", [], "")
    return rows @ table.T
