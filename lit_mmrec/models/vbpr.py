"""VBPR (He and McAuley, AAAI 2016): BPR matrix factorisation with a learnt projection of item features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lit_mmrec.models.base import RecommenderModule
from lit_mmrec.models.components import bpr_loss, gather_rows, l2_regularisation


class VBPR(RecommenderModule):
    """``score(u, i) = gamma_u . gamma_i + theta_u . (E f_i)``, the multimodal baseline of MMRec.

    ``f_i`` is the concatenation of item i's raw features over every modality the data module provides
    (MMRec: text then image; here in the data module's modality order, which only permutes E's columns),
    ``E`` a learnt linear map (with bias) to ``embedding_dim``. Users hold one table of width
    ``2 * embedding_dim``, ``[gamma_u; theta_u]``; items ``[gamma_i; E f_i]``, so a score is one inner
    product. The item-bias term of the original paper is left out, as in MMRec.

    Choices, as in MMRec's VBPR unless stated:
        * Xavier-uniform ID tables, Xavier-normal ``E`` with zero bias.
        * No dropout on the representations (MMRec's ``forward`` has a dropout argument it never sets).
        * L2 on the batch's final user, positive and negative rows ``[gamma; E f]`` (so ``E`` is
          regularised through them), in lit_mmrec's form ``sum ||e||^2 / (2B)`` for every model;
          MMRec sums unsquared norms (``EmbLoss``), so its ``reg_weight`` values do not carry over.
        * ``normalise_features``: MMRec projects the raw features (default). True scales each modality's
          feature rows to unit L2 norm first, for features as large and uncentred as TikTok's (image rows
          of norm ~33), whose projection otherwise starts far larger than the ID part and makes all items
          alike.

    Args:
        n_users: number of users (linked from the data module).
        n_items: number of items (linked from the data module).
        embedding_dim: width d of ``gamma`` and of the feature projection (users: 2d in all).
        normalise_features: L2-normalise each modality's raw feature rows before projecting them.
        **kwargs: see :class:`RecommenderModule` (``reg_weight``, ``optimizer``, ...).
    """

    requires_features = True

    def __init__(self, n_users: int, n_items: int, feature_dims: dict[str, int] | None = None,
                 embedding_dim: int = 64, normalise_features: bool = False, **kwargs) -> None:
        super().__init__(n_users, n_items, feature_dims=feature_dims, **kwargs)
        self.modalities = list(self.feature_dims)
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_users, 2 * embedding_dim)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_items, embedding_dim)))
        self.projection = nn.Linear(sum(self.feature_dims.values()), embedding_dim)
        nn.init.xavier_normal_(self.projection.weight)
        nn.init.zeros_(self.projection.bias)
        self.normalise_features = normalise_features
        self.item_features: torch.Tensor | None = None

    def on_graphs_ready(self) -> None:
        features = self.graphs.features
        parts = [F.normalize(features[m], dim=1) if self.normalise_features else features[m] for m in self.modalities]
        self.item_features = torch.cat(parts, dim=1)  # [n_items, sum of dims]

    def item_rows(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """``[gamma_i; E f_i]`` [len(items), 2d] of ``items``, or of every item [n_items, 2d]."""
        if items is None:
            return torch.cat([self.item_embedding, self.projection(self.item_features)], dim=1)
        return torch.cat([gather_rows(self.item_embedding, items),
                          self.projection(gather_rows(self.item_features, items))], dim=1)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_embedding, self.item_rows()

    def training_losses(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor
                        ) -> dict[str, torch.Tensor]:
        # only the batch's items are projected: [2B, sum of dims] x [sum of dims, d] per step
        u = gather_rows(self.user_embedding, users)
        p, n = self.item_rows(torch.cat([positives, negatives])).split(users.shape[0])
        losses = {"bpr": bpr_loss((u * p).sum(dim=1), (u * n).sum(dim=1))}
        if self.reg_weight > 0:
            losses["reg"] = self.reg_weight * l2_regularisation(u, p, n)
        return losses
