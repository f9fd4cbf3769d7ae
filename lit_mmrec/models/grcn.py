"""GRCN (Wei et al., ACM MM 2020, "Graph-Refined Convolutional Network for Multimedia Recommendation with
Implicit Feedback"): per-modality attention scores each interaction edge, the scores prune and reweight the
user-item graph, and the ID embeddings are propagated over the refined graph."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lit_mmrec.models.base import RecommenderModule
from lit_mmrec.models.components import bpr_loss, gather_rows, mean_triplet_penalty, squared_norm
from lit_mmrec.models.components.edges import InteractionEdges, edge_softmax

WeightMode = Literal["confid", "max", "mean"]


class GRCN(RecommenderModule):
    """GRCN for any number (>= 1) of modalities, as MMRec runs it unless stated.

    * Per modality m (the content branch): item features ``f_i = normalize(leaky_relu(W_m x_i^m + b))``, user
      preferences ``p_u = normalize(P_m[u])``, refined by ``n_routing`` routing iterations (eq 2-3):
      ``p_u <- normalize(p_u + sum_{i in N(u)} softmax_i(p_u . f_i) f_i)``.
    * Graph refining (eq 4-6): on every interaction (u, i), in each direction, the attention of the receiving
      node over its neighbours, ``a^m_{i<-u} = softmax_{u' in N(i)}(p_u' . f_i)`` and
      ``a^m_{u<-i} = softmax_{i' in N(u)}(p_u . f_i')``; with ``weight_mode: confid`` each score is multiplied
      by the sending node's learned per-modality confidence ``c[s, m]``, the maximum over modalities taken and
      negative weights pruned to 0 (``relu``); ``max`` and ``mean`` are the paper's other two poolings.
    * ID branch: ``x = normalize(E_id)``, ``n_id_layers`` weighted sums over the refined graph in both
      directions, ``e_id = x + h_1 + ... + h_L``. Content branch output: ``[p; f] + `` the attention-weighted
      neighbour sum of ``[p; f]``.
    * Representation ``[e_id ; content_1 ; ... ; content_M]``, scored by inner product; loss BPR plus
      ``reg_weight`` times MMRec's penalty: the mean square of the batch's ID rows (each user row counted once
      per positive and once per negative), of every preference table, and of the batch users' preference rows.

    Choices:
        * Routing: MMRec passes the routing messages along user -> item edges only, so the users' rows it adds are
          zero and its routing changes nothing; ``n_routing: 0`` reproduces that. The default, 3 (MMRec's
          ``n_layers``), routes as the paper's eq 2-3 do.
        * Aggregation is a sum (MMRec's ``aggr_mode: add``), no activation and no edge dropout (MMRec's
          ``has_act: False``, ``dropout: 0``); features pass a Xavier-normal Linear and leaky ReLU first.
        * MMRec's confidence table is initialised Xavier-normal and not regularised (it computes the penalty and
          drops it); the same here. MMRec regularises the whole preference table of its first modality only;
          here every modality's.
        * MMRec ranks from the last training forward's representations; here they are recomputed for evaluation.

    Args:
        n_users: number of users (linked from the data module).
        n_items: number of items (linked from the data module).
        feature_dims: widths of the item feature modalities (linked from the data module).
        embedding_dim: width of the ID embeddings (MMRec: 64).
        content_dim: width of each modality's preferences and projected features (MMRec's latent_embedding: 64).
        n_routing: routing iterations of the user preferences (0 reproduces MMRec, where routing is a no-op).
        n_id_layers: propagation layers of the ID branch over the refined graph (MMRec: 2).
        weight_mode: how the modalities' edge scores are pooled: ``confid``, ``max`` or ``mean`` (MMRec: confid).
        reg_weight: weight of the L2 penalty on ID and preference rows (MMRec's first-listed: 0.1).
        **kwargs: see :class:`RecommenderModule` (``optimizer``, ``scheduler``).
    """

    requires_features = True

    def __init__(
        self,
        n_users: int,
        n_items: int,
        feature_dims: dict[str, int] | None = None,
        embedding_dim: int = 64,
        content_dim: int = 64,
        n_routing: int = 3,
        n_id_layers: int = 2,
        weight_mode: WeightMode = "confid",
        reg_weight: float = 0.1,
        **kwargs,
    ) -> None:
        super().__init__(n_users, n_items, feature_dims=feature_dims, reg_weight=reg_weight, **kwargs)
        if weight_mode not in ("confid", "max", "mean"):
            raise ValueError(f"weight_mode must be 'confid', 'max' or 'mean', got {weight_mode!r}")
        if n_routing < 0 or n_id_layers < 0:
            raise ValueError(f"n_routing and n_id_layers must be >= 0, got {n_routing} and {n_id_layers}")
        self.modalities = list(self.feature_dims)
        self.n_routing, self.n_id_layers, self.weight_mode = n_routing, n_id_layers, weight_mode
        self.embedding = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users + n_items, embedding_dim)))
        self.preferences = nn.ParameterDict({m: nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users, content_dim)))
                                             for m in self.modalities})
        self.projections = nn.ModuleDict({m: nn.Linear(d, content_dim) for m, d in self.feature_dims.items()})
        for layer in self.projections.values():
            nn.init.xavier_normal_(layer.weight)
        self.confidence = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users + n_items, len(self.modalities))))

    def on_graphs_ready(self) -> None:
        self.edges = InteractionEdges.from_csr(self.graphs.train_interactions)

    def input_table(self) -> torch.Tensor:
        return self.embedding

    def propagate_both_ways(self, nodes: torch.Tensor, to_item: torch.Tensor, to_user: torch.Tensor
                            ) -> torch.Tensor:
        """Weighted neighbour sums of ``nodes`` [n_users + n_items, d] over every edge, each direction with its
        own per-edge weights (user-major), users first."""
        users, items = nodes[: self.n_users], nodes[self.n_users :]
        return torch.cat([self.edges.to_users(items, to_user), self.edges.to_items(users, to_item)])

    def content_branch(self, modality: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The modality's output [n_users + n_items, content_dim] and its attention on every edge towards the
        item and towards the user ([E] each, user-major)."""
        edges = self.edges
        features = F.normalize(F.leaky_relu(self.projections[modality](self.graphs.features[modality])), dim=1)
        preference = F.normalize(self.preferences[modality], dim=1)
        for _ in range(self.n_routing):
            scores = (preference.index_select(0, edges.users) * features.index_select(0, edges.items)).sum(dim=1)
            weights = edge_softmax(scores, edges.users, self.n_users)
            preference = F.normalize(preference + edges.to_users(features, weights), dim=1)
        scores = (preference.index_select(0, edges.users) * features.index_select(0, edges.items)).sum(dim=1)
        to_item = edge_softmax(scores, edges.items, self.n_items)
        to_user = edge_softmax(scores, edges.users, self.n_users)
        nodes = torch.cat([preference, features])
        return nodes + self.propagate_both_ways(nodes, to_item, to_user), to_item, to_user

    def refined_weights(self, to_item: torch.Tensor, to_user: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The refined graph's weights [E] per direction from the modalities' attention [E, M] per direction."""
        if self.weight_mode == "mean":
            return to_item.mean(dim=1), to_user.mean(dim=1)
        if self.weight_mode == "confid":  # each score times its sending node's confidence
            to_item = to_item * self.confidence.index_select(0, self.edges.users)
            to_user = to_user * self.confidence.index_select(0, self.edges.items + self.n_users)
        return F.relu(to_item.max(dim=1).values), F.relu(to_user.max(dim=1).values)

    def nodes(self) -> torch.Tensor:
        """The representation of every node [n_users + n_items, embedding_dim + M * content_dim]."""
        contents, to_item, to_user = zip(*(self.content_branch(m) for m in self.modalities))
        weight_to_item, weight_to_user = self.refined_weights(torch.stack(to_item, 1), torch.stack(to_user, 1))
        layer = F.normalize(self.embedding, dim=1)
        identity = layer
        for _ in range(self.n_id_layers):
            layer = self.propagate_both_ways(layer, weight_to_item, weight_to_user)
            identity = identity + layer
        return torch.cat([identity, *contents], dim=1)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        nodes = self.nodes()
        return nodes[: self.n_users], nodes[self.n_users :]

    def training_losses(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor
                        ) -> dict[str, torch.Tensor]:
        nodes = self.nodes()
        u, p, n = (gather_rows(nodes, rows) for rows in (users, positives + self.n_users, negatives + self.n_users))
        losses = {"bpr": bpr_loss((u * p).sum(dim=1), (u * n).sum(dim=1))}
        if self.reg_weight > 0:
            penalty = mean_triplet_penalty(*self.input_rows(users, positives, negatives))
            for table in self.preferences.values():
                penalty = penalty + squared_norm(table) / table.numel()
                penalty = penalty + squared_norm(gather_rows(table, users)) / (users.shape[0] * table.shape[1])
            losses["reg"] = self.reg_weight * penalty
        return losses
