"""MMGCN (Wei et al., ACM MM 2019, "MMGCN: Multi-modal Graph Convolution Network for Personalized
Recommendation of Micro-video"): one graph convolution network per modality over the user-item graph, each
layer mixing aggregated neighbours with the node's own projection and its ID embedding."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lit_mmrec.data.graphs import square_csr
from lit_mmrec.models.base import RecommenderModule
from lit_mmrec.models.components import (
    bpr_loss,
    entry_rows,
    gather_rows,
    mean_triplet_penalty,
    sparse_matmul,
    squared_norm,
)

Combination = Literal["concat", "add"]


def mean_aggregation(adjacency: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``D^-1 A`` and its transpose, both sparse CSR, from a graph with A's sparsity pattern (its values are
    ignored): row i of ``D^-1 A x`` is the mean of x over i's neighbours (zero for a node without any)."""
    rows, cols = entry_rows(adjacency), adjacency.col_indices().long()
    degree = adjacency.crow_indices().diff().to(adjacency.values().dtype)
    values = (1.0 / degree).index_select(0, rows)
    n = adjacency.shape[0]
    return square_csr(rows, cols, values, n), square_csr(cols, rows, values, n)


def xavier_normal_linear(in_features: int, out_features: int, xavier: bool = True) -> nn.Linear:
    """``nn.Linear``, its weight Xavier-normal when ``xavier`` (PyTorch's default initialisation otherwise)."""
    layer = nn.Linear(in_features, out_features)
    if xavier:
        nn.init.xavier_normal_(layer.weight)
    return layer


class ModalityGCN(nn.Module):
    """One modality's MMGCN branch over the users-then-items nodes (the paper's eq 1-5).

    Layer 0 is ``x = normalize([P_m; MLP(f^m)])`` (``P_m`` the users' learnable preference in this modality,
    the MLP only with a ``latent_dim``). Each layer l then computes
    ``h = leaky_relu(D^-1 A x W_l)`` (aggregation, eq 1-2), ``x_hat = leaky_relu(L_l x) + e_id`` (the node's
    own projection plus its ID embedding, eq 5) and combines them: ``x = leaky_relu(G_l [h; x_hat])``
    (``concat``) or ``leaky_relu(G_l h + x_hat)`` (``add``).

    Args:
        n_users: number of users.
        feature_dim: width of the modality's item features.
        embedding_dim: width of the ID embeddings and of every layer's output.
        n_layers: graph layers.
        latent_dim: width of the MLP applied to the features first (``None``: features enter raw).
        combination: ``concat`` or ``add``, how a layer joins ``h`` and ``x_hat``.
        learn_preference: whether the user preference table learns (MMRec's stays at its initialisation).
    """

    def __init__(self, n_users: int, feature_dim: int, embedding_dim: int, n_layers: int,
                 latent_dim: int | None, combination: Combination, learn_preference: bool) -> None:
        super().__init__()
        width = latent_dim or feature_dim
        self.combination = combination
        self.mlp = nn.Linear(feature_dim, latent_dim) if latent_dim else None
        self.preference = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users, width)),
                                       requires_grad=learn_preference)
        inputs = [width] + [embedding_dim] * (n_layers - 1)
        self.conv_weights = nn.ParameterList([nn.Parameter(nn.init.xavier_normal_(torch.empty(i, i))) for i in inputs])
        self.linears = nn.ModuleList([xavier_normal_linear(i, embedding_dim) for i in inputs])
        # MMRec gives only the first combination layer a Xavier-normal weight
        self.combiners = nn.ModuleList([
            xavier_normal_linear(i + embedding_dim if combination == "concat" else i, embedding_dim, xavier=(k == 0))
            for k, i in enumerate(inputs)])

    def forward(self, features: torch.Tensor, id_embedding: torch.Tensor, aggregation: torch.Tensor,
                aggregation_t: torch.Tensor) -> torch.Tensor:
        items = self.mlp(features) if self.mlp is not None else features
        x = F.normalize(torch.cat([self.preference, items]), dim=1)
        for weight, linear, combiner in zip(self.conv_weights, self.linears, self.combiners):
            h = F.leaky_relu(sparse_matmul(aggregation, x @ weight, aggregation_t))
            x_hat = F.leaky_relu(linear(x)) + id_embedding
            if self.combination == "concat":
                x = F.leaky_relu(combiner(torch.cat([h, x_hat], dim=1)))
            else:
                x = F.leaky_relu(combiner(h) + x_hat)
        return x


class MMGCN(RecommenderModule):
    """MMGCN for any number (>= 1) of modalities, as MMRec runs it unless stated.

    Every modality has its own :class:`ModalityGCN` over the user-item graph, sharing one ID table ``e_id``
    [n_users + n_items, d]; the final representation of a node is the mean of the branches' last layers
    (eq 6 sums them; the mean ranks the same). Loss: BPR plus ``reg_weight`` times MMRec's penalty, the
    mean square of the batch's ID rows (each user row counted once per positive and once per negative) plus,
    per modality, the mean square of its user preference table.

    Choices:
        * Aggregation is the mean over neighbours, ``D^-1 A``, without self-loops (MMRec's ``aggr_mode: mean``);
          the paper also names sum and max.
        * ``combination: concat`` is what MMRec runs: it sets ``concate = 'False'``, a non-empty string, so its
          concatenation branch is always taken. ``add`` is the paper's element-wise alternative.
        * MMRec builds three layers whatever its ``n_layers`` says (its config lists 2); ``n_layers`` defaults to 3.
        * MMRec maps the features of its first modality (image) through a 256-d MLP and feeds the others raw;
          ``latent_dims`` (None) applies that rule, or names a width per modality (a missing one enters raw).
        * MMRec keeps the ID table and the preference tables as plain tensors, not parameters, so they stay at
          their Xavier-normal initialisation and only the layers learn; ``learn_embeddings: false`` reproduces
          that, the default (the paper's model) learns them. On TikTok the frozen tables validate higher, so
          the TikTok experiment freezes them (``docs/results.md``).
        * MMRec regularises the preference table of its first modality only; here every modality's (zero by
          default either way: MMRec's first-listed ``reg_weight`` is 0).
        * Convolution, projection and first combination weights are Xavier-normal, as in MMRec; MMRec ranks from
          the representations of the last training forward, here they are recomputed for evaluation.

    Args:
        n_users: number of users (linked from the data module).
        n_items: number of items (linked from the data module).
        feature_dims: widths of the item feature modalities (linked from the data module).
        embedding_dim: width of the ID embeddings and of every layer (MMRec: 64).
        n_layers: graph layers per modality (MMRec runs 3).
        latent_dims: MLP width per modality before the graph (None: 256 for the first modality, raw for the rest).
        combination: ``concat`` or ``add``, how each layer joins aggregated neighbours and the node's own row.
        learn_embeddings: whether the ID and preference tables learn (false reproduces MMRec).
        reg_weight: weight of the L2 penalty on the batch's ID rows and the preference tables (MMRec: 0 first).
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
        latent_dims: dict[str, int] | None = None,
        combination: Combination = "concat",
        learn_embeddings: bool = True,
        reg_weight: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(n_users, n_items, feature_dims=feature_dims, reg_weight=reg_weight, **kwargs)
        if combination not in ("concat", "add"):
            raise ValueError(f"combination must be 'concat' or 'add', got {combination!r}")
        if n_layers < 1:
            raise ValueError(f"MMGCN needs at least one graph layer, got n_layers={n_layers}")
        self.modalities = list(self.feature_dims)
        if latent_dims is None:
            latent_dims = {self.modalities[0]: 256}
        unknown = set(latent_dims) - set(self.modalities)
        if unknown:
            raise ValueError(f"latent_dims names modalities the data does not have: {sorted(unknown)} "
                             f"(the data has {self.modalities})")
        self.embedding = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users + n_items, embedding_dim)),
                                      requires_grad=learn_embeddings)
        self.branches = nn.ModuleDict({
            m: ModalityGCN(n_users, d, embedding_dim, n_layers, latent_dims.get(m) or None, combination,
                           learn_embeddings)
            for m, d in self.feature_dims.items()})

    def on_graphs_ready(self) -> None:
        self.aggregation, self.aggregation_t = mean_aggregation(self.graphs.norm_adjacency)

    def input_table(self) -> torch.Tensor:
        return self.embedding

    def nodes(self) -> torch.Tensor:
        """The mean of the modality branches' outputs [n_users + n_items, d]."""
        total = 0.0
        for m, branch in self.branches.items():
            total = total + branch(self.graphs.features[m], self.embedding, self.aggregation, self.aggregation_t)
        return total / len(self.branches)

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
            for branch in self.branches.values():
                penalty = penalty + squared_norm(branch.preference) / branch.preference.numel()
            losses["reg"] = self.reg_weight * penalty
        return losses
