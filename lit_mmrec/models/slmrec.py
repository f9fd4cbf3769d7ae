"""SLMRec (Tao et al., IEEE TMM 2022, "Self-supervised Learning for Multimedia Recommendation"): one graph
propagation per modality, fused, trained by in-batch InfoNCE plus fine-and-coarse cross-modal alignment."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lit_mmrec.models.base import RecommenderModule, user_item_table
from lit_mmrec.models.components import combine_layers, info_nce, l2_regularisation, propagate, propagate_rows


def xavier_linear(in_features: int, out_features: int) -> nn.Linear:
    """``nn.Linear`` with a Xavier-uniform weight (PyTorch's default bias), as SLMRec initialises its layers."""
    layer = nn.Linear(in_features, out_features)
    nn.init.xavier_uniform_(layer.weight)
    return layer


def dot_info_nce(anchors: torch.Tensor, positives: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE on raw inner products: ``mean_i -log softmax_j(a_i . b_j / t)[i]`` (SLMRec's alignment loss,
    which does not normalise its projections)."""
    logits = anchors @ positives.T / temperature
    return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))


class SLMRec(RecommenderModule):
    """SLMRec with its fine-and-coarse (FAC) self-supervised task, for any number (>= 1) of modalities, as
    MMRec runs it.

    * Views: the user ID table ``U`` beside, in turn, the item ID table and each modality's item features
      ``W_m normalize(f_i^m) + b_m``; each ``[U; I]`` is propagated by LightGCN over ``D^-1/2 A D^-1/2``, the
      mean of layers ``0..n_layers`` (``z^id``, ``z^m``).
    * Fusion: ``concat`` joins ``[z^id, z^1, ..., z^M]`` (``mean`` averages them); a user head and an item
      head (one Linear each) map the result to the final representations. Scores are inner products (MMRec
      ranks their sigmoid, the same order).
    * Main task: InfoNCE between the batch's final user and positive-item representations (cosine,
      temperature ``temperature``, the batch's other positives as negatives); no BPR, no negative items.
    * FAC task over the batch's positive items, a hierarchy of spaces: ``x_1 = g_1(z^id_i)``, aligned with
      ``h_1(z^1_i)``; ``x_k = g_k(x_{k-1})``, aligned with ``h_k(z^k_i)``; each alignment an InfoNCE on raw
      inner products at temperature ``ssl_temperature``; the sum weighted by ``ssl_weight``.

    Choices, as MMRec's SLMRec unless stated:
        * FAC is the self-supervised task MMRec runs (its feature-dropout and feature-masking tasks read
          config keys MMRec does not define, and expect four modalities).
        * The spaces are ``embedding_dim`` wide but the last of two or more, which is half as wide (MMRec's
          image space 64-d, its text space 32-d). MMRec reaches its second space through two Linear layers with
          nothing between them (a third, audio level, commented out); one Linear spans the same affine maps.
        * Regularisation is Adam's weight decay 1e-4 (MMRec's ``weight_decay``, in configs/model/slmrec.yaml);
          MMRec's ``reg`` is searched but never read, so ``reg_weight`` defaults to 0 here (when set, the
          L2 of the batch's ID rows).
        * The raw features are frozen and L2-normalised per item; every Linear is Xavier-uniform, as are the ID
          tables. The adjacency has no self-loops (MMRec's ``adj_type: pre``).
        * ``fusion: mean`` heads take ``embedding_dim`` inputs (MMRec sizes them for ``concat`` either way,
          so its mean mode does not run).

    Args:
        n_users: number of users (linked from the data module).
        n_items: number of items (linked from the data module).
        feature_dims: widths of the item feature modalities (linked from the data module).
        embedding_dim: width of the ID embeddings, the projected features and the final representations (MMRec: 64).
        n_layers: LightGCN layers of every view (MMRec: 3).
        temperature: temperature of the main InfoNCE (MMRec: 0.2).
        ssl_temperature: temperature of the FAC alignments (MMRec searches 0.1, 0.2, 0.5, 1.0).
        ssl_weight: weight of the FAC task (MMRec's ssl_alpha, searched over 0.01, 0.05, 0.1, 0.5, 1.0).
        fusion: ``concat`` or ``mean``, how the views are joined before the heads (MMRec: concat).
        reg_weight: weight of an L2 penalty on the batch's ID rows (0: MMRec regularises by weight decay).
        **kwargs: see :class:`RecommenderModule` (``optimizer``, ``scheduler``).
    """

    requires_features = True

    def __init__(
        self,
        n_users: int,
        n_items: int,
        feature_dims: dict[str, int] | None = None,
        embedding_dim: int = 64,
        n_layers: int = 3,
        temperature: float = 0.2,
        ssl_temperature: float = 0.1,
        ssl_weight: float = 0.01,
        fusion: Literal["concat", "mean"] = "concat",
        reg_weight: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(n_users, n_items, feature_dims=feature_dims, reg_weight=reg_weight, **kwargs)
        if fusion not in ("concat", "mean"):
            raise ValueError(f"fusion must be 'concat' or 'mean', got {fusion!r}")
        if temperature <= 0 or ssl_temperature <= 0:
            raise ValueError(f"temperatures must be positive, got {temperature} and {ssl_temperature}")
        self.modalities = list(self.feature_dims)
        self.n_layers, self.fusion = n_layers, fusion
        self.temperature, self.ssl_temperature, self.ssl_weight = temperature, ssl_temperature, ssl_weight
        d = embedding_dim
        self.embedding = user_item_table(n_users, n_items, d)
        self.projections = nn.ModuleDict({m: xavier_linear(dim, d) for m, dim in self.feature_dims.items()})
        fused = d * (len(self.modalities) + 1) if fusion == "concat" else d
        self.user_head, self.item_head = xavier_linear(fused, d), xavier_linear(fused, d)
        widths = [d] * len(self.modalities)
        if len(widths) > 1:
            widths[-1] = d // 2
        inputs = [d, *widths[:-1]]
        self.id_maps = nn.ModuleList([xavier_linear(i, w) for i, w in zip(inputs, widths)])  # g_k
        self.modality_maps = nn.ModuleDict({m: xavier_linear(d, w) for m, w in zip(self.modalities, widths)})  # h_k

    def on_graphs_ready(self) -> None:
        self.normalised_features = {m: F.normalize(f, dim=1) for m, f in self.graphs.features.items()}

    def input_table(self) -> torch.Tensor:
        return self.embedding

    def view_inputs(self) -> list[torch.Tensor]:
        """Layer 0 of every view, ``[U; I_id]`` then ``[U; W_m f^m + b_m]`` per modality."""
        users = self.embedding[: self.n_users]
        return [self.embedding] + [torch.cat([users, self.projections[m](self.normalised_features[m])])
                                   for m in self.modalities]

    def views(self, rows: torch.Tensor | None = None) -> list[torch.Tensor]:
        """``z^id, z^1, ..., z^M`` at ``rows`` of the users-then-items nodes (every node when ``None``)."""
        adjacency = self.graphs.norm_adjacency
        if rows is None:
            return [combine_layers(propagate(adjacency, start, self.n_layers), "mean") for start in self.view_inputs()]
        return [propagate_rows(adjacency, start, self.n_layers, rows, "mean") for start in self.view_inputs()]

    def fuse(self, views: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(views, dim=1) if self.fusion == "concat" else torch.stack(views).mean(dim=0)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        fused = self.fuse(self.views())
        return self.user_head(fused[: self.n_users]), self.item_head(fused[self.n_users :])

    def fac_loss(self, item_views: list[torch.Tensor]) -> torch.Tensor:
        """The FAC alignments' sum over the hierarchy, given the positives' rows of ``z^id, z^1, ..., z^M``."""
        x, total = item_views[0], 0.0
        for g, m, view in zip(self.id_maps, self.modalities, item_views[1:]):
            x = g(x)
            total = total + dot_info_nce(x, self.modality_maps[m](view), self.ssl_temperature)
        return total

    def training_losses(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor
                        ) -> dict[str, torch.Tensor]:
        batch = users.shape[0]
        views = self.views(torch.cat([users, positives + self.n_users]))
        fused = self.fuse(views)
        u, p = self.user_head(fused[:batch]), self.item_head(fused[batch:])
        losses = {"infonce": info_nce(u, p, self.temperature)}
        if self.ssl_weight > 0:
            losses["fac"] = self.ssl_weight * self.fac_loss([view[batch:] for view in views])
        if self.reg_weight > 0:
            losses["reg"] = self.reg_weight * l2_regularisation(*self.input_rows(users, positives, negatives))
        return losses
