"""LATTICE (Zhang et al., ACM MM 2021): item-item graphs learnt from projected modality features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lit_mmrec.data.graphs import knn_neighbours, square_csr
from lit_mmrec.models.base import RecommenderModule, user_item_table
from lit_mmrec.models.components import bpr_loss, combine_layers, gather_rows, propagate, propagate_rows, sparse_matmul


def normalised_edge_values(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    """The values of ``D^-1/2 S D^-1/2`` for the edges (rows, cols, values) of S, D its row sums (0 where a row
    sums to 0); differentiable in ``values``. Repeated edges count once each, as in the summed matrix."""
    degree = torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, rows, values)
    inverse = torch.where(degree > 0, degree.clamp_min(1e-30).rsqrt(), torch.zeros_like(degree))
    return values * inverse[rows] * inverse[cols]


def edge_propagate(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``S @ dense`` for S given by its edges, differentiable in ``values`` and ``dense``."""
    return torch.zeros_like(dense).index_add(0, rows, values.unsqueeze(1) * gather_rows(dense, cols))


class LATTICE(RecommenderModule):
    """LATTICE as MMRec runs it (LightGCN backbone), for any number (>= 1) of item modalities.

    * Learnt graphs (eq 1-4 of the paper): per modality m, the projected features ``f~_i = W_m f_i + b_m``
      (``feature_dim`` wide); ``S~_m`` keeps each item's top ``knn_k`` cosine similarities of ``f~``
      (itself included, its self-similarity 1 ranking first), at their values; the modalities are summed
      with ``w = softmax(alpha)``, ``S~ = sum_m w_m S~_m``, and normalised, ``A~ = D^-1/2 S~ D^-1/2``.
    * Original graphs: ``S_m`` the data module's KNN graphs of the raw features (``D^-1/2 S_m D^-1/2``; set
      the data module's ``knn_weighting: similarity`` and ``knn_k`` for MMRec's), combined with the same
      ``w``; the item graph is ``A = (1 - lambda) A~ + lambda sum_m w_m S_m`` (eq 5, ``lambda_coeff``).
    * Items' graph part ``h = A^L E_i`` (``n_mm_layers`` = L) of the item ID embeddings; representations:
      LightGCN over the user-item graph, the mean of layers ``0..n_ui_layers``, items adding
      ``h / ||h||`` (MMRec's ``F.normalize``).
    * Loss: BPR plus ``reg_weight`` times ``(||u||^2 + ||p||^2 + ||n||^2) / (2 B)`` on the batch's final
      representations (MMRec's LATTICE regularises those, not the input embeddings).

    Choices, as in MMRec's LATTICE unless stated:
        * The learnt graph is rebuilt once per training epoch, in its first step, whose loss is the only one
          whose gradient reaches the projections, the modality weights and the fine-tuned features; later
          steps of the epoch use it detached. Evaluation rebuilds it (no gradient) from the current weights.
        * The user-item graph is MMRec's LATTICE's ``D^-1 (A + I)`` (row-normalised, with self-loops;
          ``ui_graph: row_self_loops``); ``symmetric`` takes the data module's ``D^-1/2 A D^-1/2``.
        * MMRec holds the n_items x n_items similarity and graph matrices dense; here the top-k is found in
          row blocks and the graphs are kept as edge lists, which computes the same matrices (equal up to
          ties in the top-k) without the quadratic memory.
        * The raw features are trainable (``finetune_features``, MMRec's ``from_pretrained(freeze=False)``),
          while the original graphs stay those of the initial features, as in MMRec.
        * ``alpha`` starts equal for every modality (MMRec: [0.5, 0.5]); Xavier-uniform ID embeddings.

    Args:
        n_users: number of users (linked from the data module).
        n_items: number of items (linked from the data module).
        feature_dims: feature width of each modality (linked from the data module).
        embedding_dim: width of the ID embeddings (MMRec's ``embedding_size``: 64).
        feature_dim: width of the projected features the graphs are learnt from (``feat_embed_dim``: 64).
        n_ui_layers: LightGCN layers on the user-item graph (``len(weight_size)``: 2).
        n_mm_layers: propagation layers on the item-item graph (MMRec: 1).
        knn_k: neighbours per item in the learnt graphs (MMRec: 10).
        lambda_coeff: weight of the original graphs in the item graph (MMRec: 0.9; 1 drops the learnt graph).
        ui_graph: ``row_self_loops`` (MMRec's D^-1 (A + I)) or ``symmetric`` (the data module's graph).
        finetune_features: train the raw item features along with the model.
        knn_block_size: rows per block of the top-k search.
        **kwargs: see :class:`RecommenderModule` (``reg_weight``, ``optimizer``, ...).
    """

    requires_features = True

    def __init__(
        self,
        n_users: int,
        n_items: int,
        feature_dims: dict[str, int] | None = None,
        embedding_dim: int = 64,
        feature_dim: int = 64,
        n_ui_layers: int = 2,
        n_mm_layers: int = 1,
        knn_k: int = 10,
        lambda_coeff: float = 0.9,
        ui_graph: str = "row_self_loops",
        finetune_features: bool = True,
        knn_block_size: int = 2048,
        reg_weight: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(n_users, n_items, feature_dims=feature_dims, reg_weight=reg_weight, **kwargs)
        if not 0.0 <= lambda_coeff <= 1.0:
            raise ValueError(f"lambda_coeff must be in [0, 1], got {lambda_coeff}")
        if ui_graph not in ("row_self_loops", "symmetric"):
            raise ValueError(f"ui_graph must be 'row_self_loops' or 'symmetric', got {ui_graph!r}")
        self.modalities = list(self.feature_dims)
        self.n_ui_layers, self.n_mm_layers = n_ui_layers, n_mm_layers
        self.knn_k, self.lambda_coeff, self.ui_graph = knn_k, lambda_coeff, ui_graph
        self.knn_block_size = knn_block_size
        self.embedding = user_item_table(n_users, n_items, embedding_dim)  # users first, then items
        self.projections = nn.ModuleDict({m: nn.Linear(d, feature_dim) for m, d in self.feature_dims.items()})
        self.modality_logits = nn.Parameter(torch.full((len(self.modalities),), 0.5))
        self.init_feature_tables(finetune_features)
        self._learnt: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # this epoch's A~ edges
        self._rebuild = True

    # ---- graphs ----
    def on_graphs_ready(self) -> None:
        self.fill_feature_tables()
        graphs = self.graphs
        if self.ui_graph == "symmetric":
            self.ui_adjacency, self.ui_adjacency_t = graphs.norm_adjacency, None
        else:
            users, items = graphs.train_interactions.to_sparse_coo().coalesce().indices()
            n = self.n_users + self.n_items
            loops = torch.arange(n, device=users.device)
            rows = torch.cat([users, items + self.n_users, loops])
            cols = torch.cat([items + self.n_users, users, loops])
            values = 1.0 / torch.bincount(rows, minlength=n).float()[rows]
            self.ui_adjacency = square_csr(rows, cols, values, n)
            self.ui_adjacency_t = square_csr(cols, rows, values, n)
        self.item_item_t = {m: graphs.item_item[m].to_sparse_coo().t().coalesce().to_sparse_csr()
                            for m in self.modalities}  # S_m is not symmetric: its transpose for gradients
        self._learnt = None

    def modality_weights(self) -> torch.Tensor:
        """``w = softmax(alpha)`` over the modalities."""
        return torch.softmax(self.modality_logits, dim=0)

    def learnt_graph(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The edges (rows, cols, values) of ``A~`` from the current projections; values carry gradient."""
        weights = self.modality_weights()
        rows, cols, values = [], [], []
        for w, m in zip(weights, self.modalities):
            projected = F.normalize(self.projections[m](self.feature_table(m)), dim=1)
            _, neighbours = knn_neighbours(projected.detach(), self.knn_k, True, self.knn_block_size)
            row = torch.arange(self.n_items, device=neighbours.device).repeat_interleave(self.knn_k)
            col = neighbours.reshape(-1)
            rows.append(row)
            cols.append(col)
            values.append(w * (gather_rows(projected, row) * gather_rows(projected, col)).sum(dim=1))
        rows, cols, values = torch.cat(rows), torch.cat(cols), torch.cat(values)
        return rows, cols, normalised_edge_values(rows, cols, values, self.n_items)

    def item_graph_part(self, learnt: tuple[torch.Tensor, torch.Tensor, torch.Tensor], weights: torch.Tensor
                        ) -> torch.Tensor:
        """``h = A^L E_i`` [n_items, d], A the mix of the learnt and original graphs."""
        h = self.embedding[self.n_users :]
        for _ in range(self.n_mm_layers):
            mixed = (1.0 - self.lambda_coeff) * edge_propagate(*learnt, h)
            for w, m in zip(weights, self.modalities):
                mixed = mixed + self.lambda_coeff * w * sparse_matmul(self.graphs.item_item[m], h, self.item_item_t[m])
            h = mixed
        return h

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._rebuild = True

    def training_graph(self) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        """The epoch's item graph: built with gradient in its first step, detached afterwards."""
        if self._rebuild or self._learnt is None:
            self._rebuild = False
            learnt, weights = self.learnt_graph(), self.modality_weights()
            self._learnt = (learnt[0], learnt[1], learnt[2].detach())
            self._weights = weights.detach()
            return learnt, weights
        return self._learnt, self._weights

    # ---- representations ----
    def input_table(self) -> torch.Tensor:
        return self.embedding

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        final = combine_layers(propagate(self.ui_adjacency, self.embedding, self.n_ui_layers, self.ui_adjacency_t),
                               "mean")
        h = self.item_graph_part(self.learnt_graph(), self.modality_weights())
        return final[: self.n_users], final[self.n_users :] + F.normalize(h, dim=1)

    def training_losses(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor
                        ) -> dict[str, torch.Tensor]:
        items = torch.cat([positives, negatives])
        rows = torch.cat([users, items + self.n_users])
        final = propagate_rows(self.ui_adjacency, self.embedding, self.n_ui_layers, rows, "mean", self.ui_adjacency_t)
        u, item_rows = final.split([users.shape[0], items.shape[0]])
        h = F.normalize(gather_rows(self.item_graph_part(*self.training_graph()), items), dim=1)
        p, n = (item_rows + h).split(users.shape[0])
        losses = {"bpr": bpr_loss((u * p).sum(dim=1), (u * n).sum(dim=1))}
        if self.reg_weight > 0:
            losses["reg"] = self.reg_weight * (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / (2 * len(users))
        return losses
