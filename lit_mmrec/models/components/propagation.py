"""Sparse graph propagation (LightGCN-style message passing) used by every graph model."""

from __future__ import annotations

from typing import Literal

import torch

LayerCombination = Literal["mean", "sum"]


def propagate(adjacency: torch.Tensor, embeddings: torch.Tensor, n_layers: int) -> list[torch.Tensor]:
    """``[E, A E, A^2 E, ...]``: the input and each of ``n_layers`` sparse propagations ``E <- A E``."""
    layers = [embeddings]
    for _ in range(n_layers):
        layers.append(torch.sparse.mm(adjacency, layers[-1]))
    return layers


def combine_layers(layers: list[torch.Tensor], how: LayerCombination) -> torch.Tensor:
    """Mean (LightGCN paper, alpha_k = 1/(K+1)) or sum (DiffCL eq 4) of the layer outputs."""
    stacked = torch.stack(layers, dim=0)  # [n_layers + 1, n_nodes, dim]
    if how == "mean":
        return stacked.mean(dim=0)
    if how == "sum":
        return stacked.sum(dim=0)
    raise ValueError(f"layer combination must be 'mean' or 'sum', got {how!r}")
