"""LightGCN (He et al., SIGIR 2020): linear propagation of ID embeddings over the user-item graph."""

from __future__ import annotations

import torch

from lit_mmrec.models.base import RecommenderModule, user_item_table
from lit_mmrec.models.components import LayerCombination, combine_layers, propagate, propagate_rows


class LightGCN(RecommenderModule):
    """``E^(l+1) = D^-1/2 A D^-1/2 E^(l)``; the final embedding combines layers 0..L.

    Args:
        n_users: number of users (linked from the data module).
        n_items: number of items (linked from the data module).
        embedding_dim: width of the ID embeddings (Xavier-uniform initialised, as in MMRec).
        n_layers: propagation layers L.
        layer_combination: ``mean`` (the paper's alpha_k = 1/(L+1), MMRec's default) or ``sum``.
        **kwargs: see :class:`RecommenderModule` (``reg_weight``, ``optimizer``, ...).
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        embedding_dim: int = 64,
        n_layers: int = 2,
        layer_combination: LayerCombination = "mean",
        **kwargs,
    ) -> None:
        super().__init__(n_users, n_items, **kwargs)
        self.n_layers = n_layers
        self.layer_combination = layer_combination
        # one table, users first then items, so propagation needs no concatenation per step
        self.embedding = user_item_table(n_users, n_items, embedding_dim)

    def input_table(self) -> torch.Tensor:
        return self.embedding

    def propagated(self) -> torch.Tensor:
        """Final representations of users then items [n_users + n_items, d]."""
        layers = propagate(self.graphs.norm_adjacency, self.embedding, self.n_layers)
        return combine_layers(layers, self.layer_combination)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        final = self.propagated()
        return final[: self.n_users], final[self.n_users :]

    def training_losses(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor
                        ) -> dict[str, torch.Tensor]:
        # only the batch's rows of the propagation (propagate_rows: the same values and gradients)
        rows = torch.cat([users, positives + self.n_users, negatives + self.n_users])
        final = propagate_rows(self.graphs.norm_adjacency, self.embedding, self.n_layers, rows, self.layer_combination)
        u, p, n = final.split(users.shape[0])
        return self.bpr_and_reg(u, p, n, users, positives, negatives)
