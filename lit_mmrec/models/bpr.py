"""BPR matrix factorisation (Rendle et al., UAI 2009): the simplest ID-only baseline."""

from __future__ import annotations

import torch
from torch import nn

from lit_mmrec.models.base import RecommenderModule


class BPRMF(RecommenderModule):
    """Matrix factorisation trained with the BPR loss: ``score(u, i) = p_u . q_i``.

    Args:
        n_users: number of users (linked from the data module).
        n_items: number of items (linked from the data module).
        embedding_dim: width of the user and item embeddings (Xavier-uniform initialised, as in MMRec).
        **kwargs: see :class:`RecommenderModule` (``reg_weight``, ``optimizer``, ...).
    """

    def __init__(self, n_users: int, n_items: int, embedding_dim: int = 64, **kwargs) -> None:
        super().__init__(n_users, n_items, **kwargs)
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_users, embedding_dim)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_items, embedding_dim)))

    def input_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_embedding, self.item_embedding

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_embedding, self.item_embedding
