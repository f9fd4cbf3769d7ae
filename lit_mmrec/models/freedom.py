"""FREEDOM (Zhou and Shen, ACM MM 2023): a frozen item-item graph and a degree-pruned user-item graph."""

from __future__ import annotations

import torch
from torch import nn

from lit_mmrec.data.graphs import degree_sensitive_pruned_graph
from lit_mmrec.models.base import RecommenderModule, user_item_table
from lit_mmrec.models.components import (
    bpr_loss,
    combine_layers,
    gather_rows,
    propagate,
    propagate_rows,
    weighted_graph_sum,
)


class FREEDOM(RecommenderModule):
    """FREEDOM as MMRec runs it, for any number (>= 1) of item modalities.

    * Frozen item-item graph: ``S = sum_m w_m S_m``, the data module's per-modality KNN graphs
      (``D^-1/2 S_m D^-1/2`` over each item's top ``knn_k`` raw-feature neighbours), built once and never
      learnt. Items' graph part ``h = S^L E_i`` (``n_mm_layers`` = L) of the item ID embeddings.
    * Denoised user-item graph: at the start of every training epoch, ``floor((1 - edge_dropout) |E|)``
      training edges are drawn without replacement with probability proportional to ``1 / sqrt(d_u d_i)``
      and normalised again (:func:`~lit_mmrec.data.graphs.degree_sensitive_pruned_graph`); evaluation
      uses the full normalised graph. The draw depends only on the data module's seed and the epoch,
      so every DDP process trains on the same graph.
    * Representations: LightGCN over the user-item graph, the mean of layers ``0..n_ui_layers``;
      items add ``h``. Scores are inner products.
    * Loss: BPR on the representations plus ``lambda_modality`` times, per modality, BPR between the
      user's representation and the projected features ``W_m f_i + b_m`` of the positive and negative
      items (MMRec's ``reg_weight``), plus ``reg_weight`` L2 on the batch's input embeddings (lit_mmrec's
      common term; 0 by default, as FREEDOM has none).

    Choices, as in MMRec's FREEDOM unless stated:
        * ``modality_weights`` (w_m): MMRec has two modalities and ``mm_image_weight`` 0.1 (image 0.1,
          text 0.9); ``None`` here weighs the modalities equally. Given weights cover every modality.
        * ``finetune_features``: MMRec loads the raw features as trainable embeddings (True; they are then
          part of the checkpoints); False keeps them fixed, which at Sports scale (4,096-d image
          features) saves their copy, gradient and Adam state.
        * The KNN graphs include each item itself among its neighbours (self-similarity 1 ranks first), as
          MMRec's; that is the data module's ``knn_include_self`` default.
        * Xavier-uniform ID embeddings; the feature projections are PyTorch's default ``nn.Linear``.

    Args:
        n_users: number of users (linked from the data module).
        n_items: number of items (linked from the data module).
        embedding_dim: width of the ID embeddings and of the feature projections.
        n_ui_layers: LightGCN layers on the user-item graph (MMRec: 2).
        n_mm_layers: propagation layers on the item-item graph (MMRec: 1).
        edge_dropout: fraction of user-item edges pruned each epoch (MMRec's ``dropout``: 0.8 or 0.9).
        lambda_modality: weight of the modality BPR terms (MMRec's ``reg_weight``: 0 to 1e-3).
        modality_weights: weights of the modalities' KNN graphs in S, by modality name.
        finetune_features: train the raw item features along with the model.
        **kwargs: see :class:`RecommenderModule` (``reg_weight``, ``optimizer``, ...).
    """

    requires_features = True

    def __init__(
        self,
        n_users: int,
        n_items: int,
        feature_dims: dict[str, int] | None = None,
        embedding_dim: int = 64,
        n_ui_layers: int = 2,
        n_mm_layers: int = 1,
        edge_dropout: float = 0.8,
        lambda_modality: float = 1e-4,
        modality_weights: dict[str, float] | None = None,
        finetune_features: bool = True,
        reg_weight: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(n_users, n_items, feature_dims=feature_dims, reg_weight=reg_weight, **kwargs)
        if not 0.0 <= edge_dropout < 1.0:
            raise ValueError(f"edge_dropout must be in [0, 1), got {edge_dropout}")
        self.modalities = list(self.feature_dims)
        weights = modality_weights or {m: 1.0 / len(self.modalities) for m in self.modalities}
        if set(weights) != set(self.modalities):
            raise ValueError(f"modality_weights must name every modality {self.modalities}, got {sorted(weights)}")
        self.modality_weights = {m: float(weights[m]) for m in self.modalities}
        self.n_ui_layers, self.n_mm_layers = n_ui_layers, n_mm_layers
        self.edge_dropout = edge_dropout
        self.lambda_modality = lambda_modality
        self.embedding = user_item_table(n_users, n_items, embedding_dim)  # users first, then items
        self.projections = nn.ModuleDict({m: nn.Linear(d, embedding_dim) for m, d in self.feature_dims.items()})
        self.init_feature_tables(finetune_features)
        self.item_graph: torch.Tensor | None = None  # S [n_items, n_items] and its transpose
        self.item_graph_t: torch.Tensor | None = None
        self.train_graph: torch.Tensor | None = None  # this epoch's pruned user-item graph

    # ---- graphs ----
    def on_graphs_ready(self) -> None:
        graphs = self.graphs
        self.item_graph, self.item_graph_t = weighted_graph_sum(graphs.item_item, self.modality_weights)
        self.fill_feature_tables()
        interactions = graphs.train_interactions.to_sparse_coo().coalesce()
        self._train_users, self._train_items = interactions.indices()
        self.train_graph = None

    def pruned_graph(self, epoch: int) -> torch.Tensor:
        """The epoch's degree-pruned, renormalised user-item graph (the full graph without dropout)."""
        if self.edge_dropout == 0.0:
            return self.graphs.norm_adjacency
        return degree_sensitive_pruned_graph(self._train_users, self._train_items, self.n_users, self.n_items,
                                             1.0 - self.edge_dropout, self.epoch_generator(epoch))

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.train_graph = self.pruned_graph(self.current_epoch)

    # ---- representations ----
    def input_table(self) -> torch.Tensor:
        return self.embedding

    def item_graph_part(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """``h = S^L E_i`` for every item [n_items, d], or for ``items`` only."""
        item_ids = self.embedding[self.n_users :]
        if items is None:
            return propagate(self.item_graph, item_ids, self.n_mm_layers, self.item_graph_t)[-1]
        return propagate_rows(self.item_graph, item_ids, self.n_mm_layers, items, "last", self.item_graph_t)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        final = combine_layers(propagate(self.graphs.norm_adjacency, self.embedding, self.n_ui_layers), "mean")
        return final[: self.n_users], final[self.n_users :] + self.item_graph_part()

    def projected_features(self, modality: str, items: torch.Tensor) -> torch.Tensor:
        """``W_m f_i + b_m`` [len(items), d] of ``items``."""
        return self.projections[modality](gather_rows(self.feature_table(modality), items))

    def training_losses(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor
                        ) -> dict[str, torch.Tensor]:
        graph = self.train_graph if self.train_graph is not None else self.pruned_graph(self.current_epoch)
        items = torch.cat([positives, negatives])
        rows = torch.cat([users, items + self.n_users])
        # only the batch's rows of both propagations (the same values and gradients as the full tables)
        final = propagate_rows(graph, self.embedding, self.n_ui_layers, rows, "mean")
        u, item_rows = final.split([users.shape[0], items.shape[0]])
        p, n = (item_rows + self.item_graph_part(items)).split(users.shape[0])
        losses = self.bpr_and_reg(u, p, n, users, positives, negatives)
        if self.lambda_modality > 0:
            modality = 0.0
            for m in self.modalities:
                f_p, f_n = self.projected_features(m, items).split(users.shape[0])
                modality = modality + bpr_loss((u * f_p).sum(dim=1), (u * f_n).sum(dim=1))
            losses["modality"] = self.lambda_modality * modality
        return losses
