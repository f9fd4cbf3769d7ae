"""DualGNN (Wang et al., IEEE TMM 2021, "DualGNN: Dual Graph Neural Network for Multimedia Recommendation"):
per-modality graph convolution on the user-item graph, a learned per-user fusion of the modalities, and a
user co-occurrence graph over which each user aggregates the fused preferences of similar users."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lit_mmrec.data.graphs import scipy_to_torch_csr, square_csr, torch_csr_to_scipy, user_cooccurrence_graph
from lit_mmrec.models.base import RecommenderModule
from lit_mmrec.models.components import (
    bpr_loss,
    combine_layers,
    entry_rows,
    gather_rows,
    propagate,
    sparse_matmul,
    squared_norm,
)
from lit_mmrec.models.components.edges import edge_softmax

UserAggregation = Literal["softmax", "mean"]


def user_graph_weights(graph: torch.Tensor, aggregation: UserAggregation) -> tuple[torch.Tensor, torch.Tensor]:
    """The user-user aggregation matrix and its transpose (sparse CSR) from a co-occurrence graph whose values
    are counts: per row, ``softmax`` of the counts over the row's neighbours, or their ``mean``."""
    rows = entry_rows(graph).long()
    if aggregation == "softmax":
        values = edge_softmax(graph.values(), rows, graph.shape[0])
    else:
        degree = graph.crow_indices().diff().to(graph.values().dtype)
        values = (1.0 / degree).index_select(0, rows)
    cols = graph.col_indices().long()
    return square_csr(rows, cols, values, graph.shape[0]), square_csr(cols, rows, values, graph.shape[0])


class PreferenceGCN(nn.Module):
    """One modality's branch: ``x = normalize([P_m; MLP(f^m)])`` (``P_m`` the users' learnable preference,
    the MLP ``Linear(d_m, 4 d) -> leaky_relu -> Linear(4 d, d)``), then ``x + A x + ... + A^L x`` over the
    normalised user-item graph ``A = D^-1/2 A D^-1/2``.

    Args:
        n_users: number of users.
        feature_dim: width of the modality's item features.
        dim: width of the preferences and of the projected features.
        n_layers: propagation layers.
    """

    def __init__(self, n_users: int, feature_dim: int, dim: int, n_layers: int) -> None:
        super().__init__()
        self.n_layers = n_layers
        self.preference = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users, dim)))
        self.mlp = nn.Sequential(nn.Linear(feature_dim, 4 * dim), nn.LeakyReLU(), nn.Linear(4 * dim, dim))

    def forward(self, features: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        x = F.normalize(torch.cat([self.preference, self.mlp(features)]), dim=1)
        return combine_layers(propagate(adjacency, x, self.n_layers), "sum")


class DualGNN(RecommenderModule):
    """DualGNN for any number (>= 1) of modalities, as MMRec runs it unless stated.

    * Single-modal representation learning: a :class:`PreferenceGCN` per modality gives ``u_m`` and ``i_m``.
    * Multi-modal fusion: items ``i = sum_m i_m``; users ``u = sum_m w_um u_m`` with learned per-user weights
      ``w_u`` (MMRec's ``weighted_sum`` construction), initialised to a softmax.
    * User co-occurrence graph: each user's ``n_user_neighbours`` users with most items in common
      (:func:`~lit_mmrec.data.graphs.user_cooccurrence_graph`), weighted by the ``softmax`` of the counts
      (MMRec's ``user_aggr_mode``; or their ``mean``); the final user is ``u + sum_v a_uv u_v``.
    * Loss: BPR in bits (MMRec's ``-mean log2 sigmoid``, natural BPR / ln 2) plus ``reg_weight`` times the mean
      square of the batch users' preference rows per modality and of the fusion weights.

    Choices:
        * MMRec reads a user graph of each user's top 200 from a preprocessing file and keeps the top 40;
          here the top ``n_user_neighbours`` (40) are computed from the training interactions. MMRec pads a
          user with fewer than 40 neighbours by repeating random ones each epoch (which re-weights them at
          random); here the weights are over the user's actual neighbours.
        * MMRec's item representation is the sum of the modalities', and its user fusion adds the first
          modality's rows to the second in place before weighting, so it weights ``(u_1 + u_2, u_2)``, not
          ``(u_1, u_2)``; here the weighted sum is the paper's. Its per-item weights (``weight_i``) and its
          edge-dropped graphs are built but never used in the forward; they are left out.
        * MMRec ranks from the last training forward's representations; here they are recomputed.

    Args:
        n_users: number of users (linked from the data module).
        n_items: number of items (linked from the data module).
        feature_dims: widths of the item feature modalities (linked from the data module).
        embedding_dim: width of the preferences and projected features (MMRec: 64).
        n_layers: propagation layers of each modality branch (MMRec: 2).
        n_user_neighbours: neighbours per user in the user co-occurrence graph (MMRec: 40).
        user_aggregation: ``softmax`` of the co-occurrence counts or ``mean`` over a user's neighbours.
        reg_weight: weight of the L2 penalty on preference rows and fusion weights (MMRec's first-listed: 0.1).
        **kwargs: see :class:`RecommenderModule` (``optimizer``, ``scheduler``).
    """

    requires_features = True

    def __init__(
        self,
        n_users: int,
        n_items: int,
        feature_dims: dict[str, int] | None = None,
        embedding_dim: int = 64,
        n_layers: int = 2,
        n_user_neighbours: int = 40,
        user_aggregation: UserAggregation = "softmax",
        reg_weight: float = 0.1,
        **kwargs,
    ) -> None:
        super().__init__(n_users, n_items, feature_dims=feature_dims, reg_weight=reg_weight, **kwargs)
        if user_aggregation not in ("softmax", "mean"):
            raise ValueError(f"user_aggregation must be 'softmax' or 'mean', got {user_aggregation!r}")
        self.modalities = list(self.feature_dims)
        self.n_user_neighbours, self.user_aggregation = n_user_neighbours, user_aggregation
        self.branches = nn.ModuleDict({m: PreferenceGCN(n_users, d, embedding_dim, n_layers)
                                       for m, d in self.feature_dims.items()})
        weights = nn.init.xavier_normal_(torch.empty(n_users, len(self.modalities), 1))
        self.user_weights = nn.Parameter(torch.softmax(weights, dim=1).squeeze(2))  # w_u [n_users, M]

    def on_graphs_ready(self) -> None:
        graph = user_cooccurrence_graph(torch_csr_to_scipy(self.graphs.train_interactions), self.n_user_neighbours)
        graph = scipy_to_torch_csr(graph).to(self.graphs.train_interactions.device)
        self.user_graph, self.user_graph_t = user_graph_weights(graph, self.user_aggregation)

    def branch_outputs(self) -> list[torch.Tensor]:
        """Each modality branch's output [n_users + n_items, d]."""
        return [self.branches[m](self.graphs.features[m], self.graphs.norm_adjacency) for m in self.modalities]

    def fuse(self, outputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Users ``sum_m w_um u_m`` and items ``sum_m i_m`` before the user graph."""
        users = sum(self.user_weights[:, k : k + 1] * out[: self.n_users] for k, out in enumerate(outputs))
        items = sum(out[self.n_users :] for out in outputs)
        return users, items

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        users, items = self.fuse(self.branch_outputs())
        return users + sparse_matmul(self.user_graph, users, self.user_graph_t), items

    def preference_penalty(self, users: torch.Tensor) -> torch.Tensor:
        """MMRec's penalty: per modality the mean square of the batch users' preference rows, plus the mean
        square of the fusion weights."""
        penalty = squared_norm(self.user_weights) / self.user_weights.numel()
        for branch in self.branches.values():
            rows = gather_rows(branch.preference, users)
            penalty = penalty + squared_norm(rows) / rows.numel()
        return penalty

    def training_losses(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor
                        ) -> dict[str, torch.Tensor]:
        user_repr, item_repr = self()
        u, p, n = gather_rows(user_repr, users), gather_rows(item_repr, positives), gather_rows(item_repr, negatives)
        losses = {"bpr": bpr_loss((u * p).sum(dim=1), (u * n).sum(dim=1)) / math.log(2.0)}
        if self.reg_weight > 0:
            losses["reg"] = self.reg_weight * self.preference_penalty(users)
        return losses
