"""Scores of every item for a block of users: the dense product at the heart of full ranking."""

from __future__ import annotations

import torch

from lit_mmrec.compat import onednn_linear


def inner_product_scores(rows: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``rows @ table.T``: [B, d] x [n, d] -> [B, n], without autograd.

    On CPU with float32 inputs this runs oneDNN's linear kernel (the one ``torch.compile`` emits for
    ``nn.Linear``) instead of MKL's ``gemm``: for the thin products of full ranking (d = 32..128,
    thousands of items) it gives bitwise-equal scores faster (docs/benchmarks.md). Elsewhere, and when torch was built
    without oneDNN, it is the plain matrix product.
    """
    if rows.device.type == "cpu" and rows.dtype == table.dtype == torch.float32 and not torch.is_grad_enabled():
        scores = onednn_linear(rows, table)
        if scores is not None:
            return scores
    return rows @ table.T
