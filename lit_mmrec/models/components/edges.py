"""Edge-level operations on the user-item graph, for models whose edges carry learned weights (GRCN's refined
graph, attention over neighbours): the interaction edges in user-major and item-major order, a softmax over
the edges that share a node, and weighted neighbour sums that pass gradients to the weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lit_mmrec.models.components.propagation import entry_rows


@dataclass
class InteractionEdges:
    """The training interactions as edge lists, each edge e = (``users[e]``, ``items[e]``) in user-major order
    (the CSR matrix's storage order), with the permutation to item-major order and both orders' offsets.

    * ``user_offsets`` [n_users + 1]: edges of user u are ``user_offsets[u]:user_offsets[u + 1]``;
    * ``by_item`` [E]: edge ids sorted by item (then user); ``item_offsets`` [n_items + 1] delimit each item's.
    """

    users: torch.Tensor
    items: torch.Tensor
    user_offsets: torch.Tensor
    by_item: torch.Tensor
    item_offsets: torch.Tensor
    n_users: int
    n_items: int

    @classmethod
    def from_csr(cls, interactions: torch.Tensor) -> InteractionEdges:
        """From a sparse CSR [n_users, n_items] training matrix (its values are ignored)."""
        n_users, n_items = interactions.shape
        users, items = entry_rows(interactions).long(), interactions.col_indices().long()
        by_item = torch.argsort(items * n_users + users)
        item_offsets = torch.zeros(n_items + 1, dtype=torch.long, device=items.device)
        torch.cumsum(torch.bincount(items, minlength=n_items), 0, out=item_offsets[1:])
        return cls(users, items, interactions.crow_indices().long(), by_item, item_offsets, n_users, n_items)

    def __len__(self) -> int:
        return self.users.shape[0]

    def to_users(self, item_rows: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """``out[u] = sum_{e of u} w_e item_rows[items[e]]`` [n_users, d] (``w`` per edge, user-major; 1 if None)."""
        return F.embedding_bag(self.items, item_rows, self.user_offsets, mode="sum", per_sample_weights=weights,
                               include_last_offset=True)

    def to_items(self, user_rows: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """``out[i] = sum_{e of i} w_e user_rows[users[e]]`` [n_items, d] (``w`` per edge, user-major; 1 if None)."""
        return F.embedding_bag(self.users.index_select(0, self.by_item), user_rows, self.item_offsets, mode="sum",
                               per_sample_weights=None if weights is None else weights.index_select(0, self.by_item),
                               include_last_offset=True)


def edge_softmax(scores: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Softmax of per-edge ``scores`` [E] over the edges of each group (``groups`` [E], e.g. each edge's target
    node): ``exp(s_e) / sum_{e' in g(e)} exp(s_e')``, shifted by each group's maximum for stability."""
    peak = scores.new_full((n_groups,), float("-inf")).scatter_reduce(0, groups, scores.detach(), "amax")
    exp = (scores - peak.index_select(0, groups)).exp()
    total = exp.new_zeros(n_groups).index_add_(0, groups, exp)
    return exp / total.index_select(0, groups)
