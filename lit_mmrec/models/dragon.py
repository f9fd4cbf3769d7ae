"""DRAGON (Zhou et al., ECAI 2023, "Enhancing Dyadic Relations with Homogeneous Graphs for Multimodal
Recommendation"): DualGNN's heterogeneous user-item branches, joined with two homogeneous graphs, the user
co-occurrence graph and the item-item graph of the modalities' KNN graphs."""

from __future__ import annotations

import torch

from lit_mmrec.models.components import sparse_matmul, weighted_graph_sum
from lit_mmrec.models.dualgnn import DualGNN, UserAggregation


class DRAGON(DualGNN):
    """DRAGON for any number (>= 1) of modalities, as MMRec runs it unless stated.

    * Heterogeneous graph: a :class:`~lit_mmrec.models.dualgnn.PreferenceGCN` per modality over the user-item
      graph (``x + A x + A^2 x`` of ``normalize([P_m; MLP(f^m)])``), giving ``u_m`` and ``i_m``.
    * Concatenation (MMRec's ``cat`` construction): items ``i = [i_1; ...; i_M]``; users
      ``u = [w_u1 u_1; ...; w_uM u_M]`` with learned per-user modality weights.
    * Homogeneous graphs: items add ``S^L i`` with ``S = sum_m w_m S_m`` the weighted sum of the data module's
      normalised item-item KNN graphs and L = ``n_mm_layers``; users add ``sum_v a_uv u_v`` over the user
      co-occurrence graph (softmax of the counts over each user's top ``n_user_neighbours``).
    * Loss: BPR in bits (MMRec's log2) plus ``reg_weight`` times the mean square of the batch users' preference
      rows per modality and of the modality weights (as :class:`DualGNN`).

    Choices:
        * ``modality_weights`` (w_m): MMRec has two modalities and ``mm_image_weight`` 0.1 (image 0.1, text 0.9);
          ``None`` here weighs the modalities equally. MMRec's KNN graphs (k = 10, each item its own first
          neighbour, ``D^-1/2 S D^-1/2``) are the data module's defaults; the graphs are sparse here, where
          MMRec computes each from a dense items x items similarity.
        * The user graph, its padding and the recomputed evaluation representations: as :class:`DualGNN`.
        * MMRec also builds trainable copies of the raw features with linear maps that the forward never reads;
          they are left out.

    Args:
        n_users: number of users (linked from the data module).
        n_items: number of items (linked from the data module).
        feature_dims: widths of the item feature modalities (linked from the data module).
        embedding_dim: width of the preferences and projected features per modality (MMRec: 64).
        n_layers: propagation layers of each modality branch on the user-item graph (MMRec: 2).
        n_mm_layers: propagation layers on the item-item graph (MMRec: 1).
        modality_weights: weights of the modalities' KNN graphs in S, by modality name (None: equal).
        n_user_neighbours: neighbours per user in the user co-occurrence graph (MMRec: 40).
        user_aggregation: ``softmax`` of the co-occurrence counts or ``mean`` over a user's neighbours.
        reg_weight: weight of the L2 penalty on preference rows and modality weights (MMRec's first-listed: 0.1).
        **kwargs: see :class:`RecommenderModule` (``optimizer``, ``scheduler``).
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        feature_dims: dict[str, int] | None = None,
        embedding_dim: int = 64,
        n_layers: int = 2,
        n_mm_layers: int = 1,
        modality_weights: dict[str, float] | None = None,
        n_user_neighbours: int = 40,
        user_aggregation: UserAggregation = "softmax",
        reg_weight: float = 0.1,
        **kwargs,
    ) -> None:
        super().__init__(n_users, n_items, feature_dims=feature_dims, embedding_dim=embedding_dim,
                         n_layers=n_layers, n_user_neighbours=n_user_neighbours, user_aggregation=user_aggregation,
                         reg_weight=reg_weight, **kwargs)
        weights = modality_weights or {m: 1.0 / len(self.modalities) for m in self.modalities}
        if set(weights) != set(self.modalities):
            raise ValueError(f"modality_weights must name every modality {self.modalities}, got {sorted(weights)}")
        self.modality_weights = {m: float(weights[m]) for m in self.modalities}
        self.n_mm_layers = n_mm_layers

    def on_graphs_ready(self) -> None:
        super().on_graphs_ready()
        self.item_graph, self.item_graph_t = weighted_graph_sum(self.graphs.item_item, self.modality_weights)

    def fuse(self, outputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Users ``[w_u1 u_1; ...]`` and items ``[i_1; ...]`` before the homogeneous graphs."""
        users = torch.cat([self.user_weights[:, k : k + 1] * out[: self.n_users] for k, out in enumerate(outputs)], 1)
        items = torch.cat([out[self.n_users :] for out in outputs], dim=1)
        return users, items

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        users, items = self.fuse(self.branch_outputs())
        item_context = items
        for _ in range(self.n_mm_layers):
            item_context = sparse_matmul(self.item_graph, item_context, self.item_graph_t)
        return users + sparse_matmul(self.user_graph, users, self.user_graph_t), items + item_context
