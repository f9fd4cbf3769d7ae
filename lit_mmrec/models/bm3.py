"""BM3 (Zhou et al., WWW 2023, "Bootstrap Latent Representations for Multi-modal Recommendation"): a
self-supervised model without negative sampling, its targets the online representations under dropout."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lit_mmrec.models.base import RecommenderModule, user_item_table
from lit_mmrec.models.components import combine_layers, gather_rows, propagate, squared_norm


class BM3(RecommenderModule):
    """BM3 for any number (>= 1) of item modalities, as MMRec runs it.

    * Online representations: LightGCN over the ID embeddings, the mean of layers ``0..n_layers``; items add
      their ID embedding (``h_i = e_i + mean_l (A^l E)_i``). Modality m's item representation is
      ``W_m f_i^m + b_m``.
    * Targets: the online representations detached, under dropout with rate ``dropout`` (the latent-embedding
      dropout that replaces a second augmented graph).
    * A shared predictor ``p(x) = W_p x + b_p`` maps online representations into the targets' space; with
      ``L(a, b) = 1 - mean cos(a, b)``:
      ``L_rec = L(p(h_u), target(h_i)) + L(p(h_i), target(h_u))`` over the batch's (user, positive item) pairs,
      ``L_cl = cl_weight * sum_m [L(p(f_i^m), target(h_i)) + L(p(f_i^m), target(f_i^m))]`` over the positives,
      ``L_reg = reg_weight * (||H_U||_F + ||H_I||_F) / n_items`` over the whole online tables (MMRec's
      ``EmbLoss``: norms, not squared norms, divided by the item count). No negative items are used (the
      batch's negatives are ignored).
    * Scores: ``p(h_u) . p(h_i)``.

    Choices, as MMRec's BM3 unless stated:
        * ``finetune_features``: the raw features are trainable (MMRec loads them as unfrozen embeddings).
        * The feature projections and the predictor are Xavier-normal initialised, the ID embeddings
          Xavier-uniform.
        * Dropout on the targets scales kept entries by ``1 / (1 - dropout)`` (``F.dropout``).

    Args:
        n_users: number of users (linked from the data module).
        n_items: number of items (linked from the data module).
        feature_dims: widths of the item feature modalities (linked from the data module).
        embedding_dim: width of the ID embeddings and of the projected features (MMRec: 64).
        n_layers: LightGCN layers (MMRec searches 1, 2).
        dropout: dropout rate of the targets (MMRec searches 0.3, 0.5).
        cl_weight: weight of the modality terms L_cl (MMRec: 2.0).
        reg_weight: weight of L_reg (MMRec searches 0.1, 0.01).
        finetune_features: train the raw item features along with the model.
        **kwargs: see :class:`RecommenderModule` (``optimizer``, ``scheduler``).
    """

    requires_features = True

    def __init__(
        self,
        n_users: int,
        n_items: int,
        feature_dims: dict[str, int] | None = None,
        embedding_dim: int = 64,
        n_layers: int = 1,
        dropout: float = 0.3,
        cl_weight: float = 2.0,
        reg_weight: float = 0.1,
        finetune_features: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(n_users, n_items, feature_dims=feature_dims, reg_weight=reg_weight, **kwargs)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.modalities = list(self.feature_dims)
        self.n_layers, self.dropout, self.cl_weight = n_layers, dropout, cl_weight
        self.embedding = user_item_table(n_users, n_items, embedding_dim)  # users first, then items
        self.predictor = nn.Linear(embedding_dim, embedding_dim)
        self.projections = nn.ModuleDict({m: nn.Linear(d, embedding_dim) for m, d in self.feature_dims.items()})
        for layer in (self.predictor, *self.projections.values()):
            nn.init.xavier_normal_(layer.weight)
        self.init_feature_tables(finetune_features)

    def on_graphs_ready(self) -> None:
        self.fill_feature_tables()

    def input_table(self) -> torch.Tensor:
        return self.embedding

    def online(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The online user [n_users, d] and item [n_items, d] representations, before the predictor."""
        final = combine_layers(propagate(self.graphs.norm_adjacency, self.embedding, self.n_layers), "mean")
        return final[: self.n_users], final[self.n_users :] + self.embedding[self.n_users :]

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        users, items = self.online()
        return self.predictor(users), self.predictor(items)

    def projected_features(self, modality: str, items: torch.Tensor) -> torch.Tensor:
        return self.projections[modality](gather_rows(self.feature_table(modality), items))

    def training_losses(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor
                        ) -> dict[str, torch.Tensor]:
        user_table, item_table = self.online()
        h_u, h_i = gather_rows(user_table, users), gather_rows(item_table, positives)
        target_u = F.dropout(h_u.detach(), self.dropout, training=True)
        target_i = F.dropout(h_i.detach(), self.dropout, training=True)

        def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return 1.0 - F.cosine_similarity(a, b, dim=-1).mean()

        losses = {"rec": distance(self.predictor(h_u), target_i) + distance(self.predictor(h_i), target_u)}
        if self.reg_weight > 0:
            norms = squared_norm(user_table).clamp_min(1e-12).sqrt() + squared_norm(item_table).clamp_min(1e-12).sqrt()
            losses["reg"] = self.reg_weight * norms / self.n_items
        if self.cl_weight > 0:
            cl = 0.0
            for m in self.modalities:
                f = self.projected_features(m, positives)
                online = self.predictor(f)
                cl = cl + distance(online, target_i) + distance(online, F.dropout(f.detach(), self.dropout,
                                                                                   training=True))
            losses["cl"] = self.cl_weight * cl
        return losses
