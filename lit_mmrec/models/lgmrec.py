"""LGMRec (Guo et al., AAAI 2024, "LGMRec: Local and Global Graph Learning for Multimodal Recommendation"):
local user-item graph embeddings of IDs and of each modality, plus global embeddings from learned hypergraphs."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lit_mmrec.models.base import RecommenderModule, user_item_table
from lit_mmrec.models.components import (
    bpr_loss,
    combine_layers,
    gather_rows,
    info_nce_against,
    propagate,
    propagate_rows,
    sparse_matmul,
)


def gumbel_softmax(logits: torch.Tensor, tau: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``softmax((logits + g) / tau)`` over the last dimension, ``g`` standard Gumbel noise (``F.gumbel_softmax``
    with ``hard=False``, drawing the same numbers from the global RNG); ``generator`` draws them instead."""
    gumbels = -torch.empty_like(logits).exponential_(generator=generator).log()
    return torch.softmax((logits + gumbels) / tau, dim=-1)


def hypergraph_embeddings(item_assignment: torch.Tensor, user_assignment: torch.Tensor, item_embeddings: torch.Tensor,
                          n_layers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """LGMRec's hypergraph message passing (eq 8-9): ``n_layers`` times ``Z = H_i^T E_i`` (hyperedges gather
    their items), ``E_i <- H_i Z`` (items read back); users read the last ``Z`` through their own
    assignments, ``E_u = H_u Z``. Assignments are [n, n_hyperedges], embeddings [n_items, d]."""
    if n_layers < 1:
        raise ValueError(f"the hypergraph needs at least one layer, got {n_layers}")
    items = item_embeddings
    for _ in range(n_layers):
        hyperedges = item_assignment.T @ items  # [n_hyperedges, d]
        items = item_assignment @ hyperedges
    return user_assignment @ hyperedges, items


class LGMRec(RecommenderModule):
    """LGMRec for any number (>= 1) of item modalities, as MMRec runs it.

    * Collaborative graph embedding (CGE): LightGCN over the ID embeddings, the mean of layers
      ``0..n_ui_layers`` (``cf_model: mf`` uses the ID embeddings as they are).
    * Modality graph embedding (MGE, eq 4-5): items ``f_i^m P_m`` (a bias-free projection of the frozen raw
      features), users the mean of their training items' rows, then ``n_mm_layers`` propagations over
      ``D^-1/2 A D^-1/2``, the last layer kept. Local embedding ``E_L = E_CGE + sum_m normalize(E_MGE^m)``.
    * Global hypergraph embedding (GHE, eq 6-9): item-hyperedge logits ``f_i^m W_m`` [n_items, n_hyperedges],
      user logits ``R f^m W_m`` (R the binary training matrix); both through a Gumbel-softmax at
      temperature ``gumbel_tau`` over the hyperedges, then dropout with keep rate ``keep_rate``; hypergraph
      passing (:func:`hypergraph_embeddings`) of the CGE item embeddings. ``E_G = sum_m E_GHE^m``.
    * Representation ``E_L + alpha * normalize(E_G)``; scores are inner products.
    * Loss: BPR, ``cl_weight`` times the hypergraph contrastive loss (eq 11), and ``reg_weight`` times
      ``(||u|| + ||p|| + ||n||) / B`` of the batch's final representations (MMRec: norms, not squared norms).
      The contrastive loss, for each pair of modalities (a, b), a before b: InfoNCE of the batch users'
      ``E_GHE^a`` against every user's ``E_GHE^b`` (the user's own row the positive; cosine, temperature
      ``tau``), plus the same over the batch's positive items; summed over the batch, not averaged.

    Choices, as MMRec's LGMRec unless stated:
        * The Gumbel noise is drawn at evaluation too (MMRec's ``full_sort_predict`` runs the same forward);
          here it comes from a generator seeded by the data module's seed and the epoch, so an evaluation is
          repeatable and does not move the training's random stream. ``eval_gumbel_noise: false`` ranks
          by the noise-free softmax instead.
        * With two modalities the contrastive pair is (first, second), MMRec's (image, text); with more, every
          pair in the data's modality order; with one, there is no contrastive term (MMRec's code needs two).
        * One width for IDs and projected features (MMRec's ``embedding_size`` and ``feat_embed_dim``, both
          64, are added together, so they must agree).
        * The raw features are frozen; projections and hyperedge matrices are Xavier-uniform, as the ID tables.
        * A user's MGE row divides by its degree plus 1e-7 (MMRec's guard for users without training items).

    Args:
        n_users: number of users (linked from the data module).
        n_items: number of items (linked from the data module).
        feature_dims: widths of the item feature modalities (linked from the data module).
        embedding_dim: width of the ID embeddings and of the projected features (MMRec: 64).
        n_ui_layers: LightGCN layers of the collaborative graph embedding (MMRec: 2).
        n_mm_layers: propagation layers of each modality graph embedding (MMRec: 2).
        n_hyper_layers: hypergraph passing layers (MMRec: 1 for Baby and Sports, 2 for Clothing).
        n_hyperedges: hyperedges per modality (MMRec: 4 for Baby and Sports, 64 for Clothing).
        keep_rate: keep probability of the dropout on the hyperedge assignments (MMRec: 0.5 Baby, 0.4 Sports).
        alpha: weight of the global embeddings (MMRec: 0.3 Baby, 0.6 Sports).
        cl_weight: weight of the hypergraph contrastive loss (MMRec: 1e-4).
        tau: temperature of the contrastive loss (MMRec: 0.2).
        gumbel_tau: temperature of the Gumbel-softmax (MMRec uses its one tau, 0.2).
        cf_model: ``lightgcn`` or ``mf``, the collaborative graph embedding (MMRec: lightgcn).
        eval_gumbel_noise: draw Gumbel noise when ranking too, as MMRec does.
        reg_weight: weight of the norm penalty on the batch's final representations (MMRec: 1e-6).
        **kwargs: see :class:`RecommenderModule` (``optimizer``, ``scheduler``).
    """

    requires_features = True

    def __init__(
        self,
        n_users: int,
        n_items: int,
        feature_dims: dict[str, int] | None = None,
        embedding_dim: int = 64,
        n_ui_layers: int = 2,
        n_mm_layers: int = 2,
        n_hyper_layers: int = 1,
        n_hyperedges: int = 4,
        keep_rate: float = 0.5,
        alpha: float = 0.3,
        cl_weight: float = 1e-4,
        tau: float = 0.2,
        gumbel_tau: float = 0.2,
        cf_model: Literal["lightgcn", "mf"] = "lightgcn",
        eval_gumbel_noise: bool = True,
        reg_weight: float = 1e-6,
        **kwargs,
    ) -> None:
        super().__init__(n_users, n_items, feature_dims=feature_dims, reg_weight=reg_weight, **kwargs)
        if cf_model not in ("lightgcn", "mf"):
            raise ValueError(f"cf_model must be 'lightgcn' or 'mf', got {cf_model!r}")
        if not 0.0 < keep_rate <= 1.0:
            raise ValueError(f"keep_rate must lie in (0, 1], got {keep_rate}")
        if tau <= 0 or gumbel_tau <= 0:
            raise ValueError(f"tau and gumbel_tau must be positive, got {tau} and {gumbel_tau}")
        if n_hyper_layers < 1 or n_hyperedges < 1:
            raise ValueError(f"n_hyper_layers and n_hyperedges must be at least 1, got {n_hyper_layers}, "
                             f"{n_hyperedges}")
        self.modalities = list(self.feature_dims)
        self.n_ui_layers, self.n_mm_layers, self.n_hyper_layers = n_ui_layers, n_mm_layers, n_hyper_layers
        self.keep_rate, self.alpha, self.cl_weight = keep_rate, alpha, cl_weight
        self.tau, self.gumbel_tau = tau, gumbel_tau
        self.cf_model, self.eval_gumbel_noise = cf_model, eval_gumbel_noise
        self.embedding = user_item_table(n_users, n_items, embedding_dim)
        self.projections = nn.ParameterDict({m: nn.Parameter(nn.init.xavier_uniform_(torch.empty(d, embedding_dim)))
                                             for m, d in self.feature_dims.items()})
        self.hyperedges = nn.ParameterDict({m: nn.Parameter(nn.init.xavier_uniform_(torch.empty(d, n_hyperedges)))
                                            for m, d in self.feature_dims.items()})

    def on_graphs_ready(self) -> None:
        interactions = self.graphs.train_interactions
        self.interactions_t = interactions.t().to_sparse_csr()
        degree = interactions.crow_indices().diff().to(self.embedding.dtype)
        self.inverse_user_degree = (1.0 / (degree + 1e-7)).unsqueeze(1)

    def input_table(self) -> torch.Tensor:
        return self.embedding

    def collaborative(self) -> torch.Tensor:
        """E_CGE [n_users + n_items, d]."""
        if self.cf_model == "mf":
            return self.embedding
        return combine_layers(propagate(self.graphs.norm_adjacency, self.embedding, self.n_ui_layers), "mean")

    def modality_input(self, modality: str) -> torch.Tensor:
        """Layer 0 of the MGE of ``modality`` [n_users + n_items, d]: users' mean item row, items' projection."""
        items = self.graphs.features[modality] @ self.projections[modality]
        users = sparse_matmul(self.graphs.train_interactions, items, self.interactions_t) * self.inverse_user_degree
        return torch.cat([users, items])

    def local_rows(self, collaborative_rows: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """E_L at ``rows`` (every node when ``None``) given E_CGE there."""
        local = collaborative_rows
        for m in self.modalities:
            start = self.modality_input(m)
            if rows is None:
                view = propagate(self.graphs.norm_adjacency, start, self.n_mm_layers)[-1]
            else:
                view = propagate_rows(self.graphs.norm_adjacency, start, self.n_mm_layers, rows, "last")
            local = local + F.normalize(view, dim=1)
        return local

    def hypergraph_views(self, collaborative: torch.Tensor, generator: torch.Generator | None = None,
                         noise: bool = True) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per modality, E_GHE's user [n_users, d] and item [n_items, d] parts. Gumbel noise for every modality's
        item then user assignments first, then the dropout draws, in MMRec's order."""
        assignments = []
        for m in self.modalities:
            item_logits = self.graphs.features[m] @ self.hyperedges[m]
            user_logits = sparse_matmul(self.graphs.train_interactions, item_logits, self.interactions_t)
            if noise:
                assignments.append((gumbel_softmax(item_logits, self.gumbel_tau, generator),
                                    gumbel_softmax(user_logits, self.gumbel_tau, generator)))
            else:
                assignments.append((torch.softmax(item_logits / self.gumbel_tau, dim=1),
                                    torch.softmax(user_logits / self.gumbel_tau, dim=1)))
        drop = 1.0 - self.keep_rate
        items = collaborative[self.n_users :]
        return {m: hypergraph_embeddings(F.dropout(item_h, drop, self.training), F.dropout(user_h, drop, self.training),
                                         items, self.n_hyper_layers)
                for m, (item_h, user_h) in zip(self.modalities, assignments)}

    @staticmethod
    def global_embeddings(views: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """E_G = sum_m [E_GHE^m users; E_GHE^m items] [n_users + n_items, d]."""
        return sum(torch.cat(view) for view in views.values())

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        collaborative = self.collaborative()
        if self.training:
            views = self.hypergraph_views(collaborative)
        else:
            generator = self.epoch_generator(-1 - self.current_epoch) if self.eval_gumbel_noise else None
            views = self.hypergraph_views(collaborative, generator, noise=self.eval_gumbel_noise)
        final = self.local_rows(collaborative, None) + self.alpha * F.normalize(self.global_embeddings(views), dim=1)
        return final[: self.n_users], final[self.n_users :]

    def training_losses(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor
                        ) -> dict[str, torch.Tensor]:
        collaborative = self.collaborative()
        views = self.hypergraph_views(collaborative)
        rows = torch.cat([users, positives + self.n_users, negatives + self.n_users])
        global_rows = gather_rows(self.global_embeddings(views), rows)
        final = self.local_rows(gather_rows(collaborative, rows), rows) + self.alpha * F.normalize(global_rows, dim=1)
        u, p, n = final.split(users.shape[0])
        losses = {"bpr": bpr_loss((u * p).sum(dim=1), (u * n).sum(dim=1))}
        if self.reg_weight > 0:
            losses["reg"] = self.reg_weight * (u.norm() + p.norm() + n.norm()) / users.shape[0]
        if self.cl_weight > 0 and len(self.modalities) > 1:
            batch = users.shape[0]
            cl = 0.0
            for a, first in enumerate(self.modalities):
                for second in self.modalities[a + 1 :]:
                    (users_a, items_a), (users_b, items_b) = views[first], views[second]
                    cl = cl + batch * (info_nce_against(gather_rows(users_a, users), users_b, users, self.tau)
                                       + info_nce_against(gather_rows(items_a, positives), items_b, positives,
                                                          self.tau))
            losses["cl"] = self.cl_weight * cl
        return losses
