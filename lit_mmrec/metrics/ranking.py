"""Full-ranking top-K metrics (Recall, NDCG, Precision, Hit) with MMRec's definitions, vectorised."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

METRIC_NAMES = ("recall", "ndcg", "precision", "hit")


def mask_scores(scores: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Set ``scores[rows, cols] = -inf`` in place (items that must not be recommended)."""
    scores[rows, cols] = -torch.inf
    return scores


def hit_matrix(
    top_items: torch.Tensor, target_rows: torch.Tensor, target_cols: torch.Tensor, n_items: int
) -> torch.Tensor:
    """Bool [B, K]: whether the item at each ranked position is one of the user's held-out items."""
    relevant = torch.zeros(top_items.shape[0], n_items, dtype=torch.bool, device=top_items.device)
    relevant[target_rows, target_cols] = True  # [B, n_items], one batch only
    return relevant.gather(1, top_items)


def ranking_metrics_per_user(hits: torch.Tensor, n_targets: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """Per-user metrics at cut-off ``k`` from a ranked hit matrix ``hits`` [B, >=k].

    * recall = hits in top-k / |held-out|
    * ndcg = DCG@k / IDCG@k, IDCG over min(|held-out|, k) perfect positions
    * precision = hits in top-k / k
    * hit = 1 if any held-out item is in the top-k
    """
    hits_k = hits[:, :k].float()
    discount = 1.0 / torch.log2(torch.arange(2, k + 2, device=hits.device, dtype=torch.float32))  # [k]
    n_hits = hits_k.sum(dim=1)
    dcg = (hits_k * discount).sum(dim=1)
    ideal_length = n_targets.clamp(max=k, min=1) - 1
    idcg = discount.cumsum(0)[ideal_length]
    n_targets_f = n_targets.float().clamp(min=1.0)
    return {
        "recall": n_hits / n_targets_f,
        "ndcg": dcg / idcg,
        "precision": n_hits / k,
        "hit": (n_hits > 0).float(),
    }


class TopKRankingMetrics(Metric):
    """Sums of per-user Recall/NDCG/Precision/Hit at each K and the user count; averages on ``compute``.

    States are sums reduced with ``sum`` across processes, so a DDP run that scores each user once
    gives exactly the single-process figures.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, ks: Sequence[int] = (10, 20), **kwargs) -> None:
        super().__init__(**kwargs)
        if not ks or min(ks) < 1:
            raise ValueError(f"ks must be a non-empty list of positive cut-offs, got {ks}")
        self.ks = sorted(set(int(k) for k in ks))
        self.add_state("sums", default=torch.zeros(len(METRIC_NAMES), len(self.ks), dtype=torch.float64),
                       dist_reduce_fx="sum")
        self.add_state("n_users", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    @property
    def max_k(self) -> int:
        return self.ks[-1]

    def update(self, hits: torch.Tensor, n_targets: torch.Tensor) -> None:
        """``hits`` [B, max_k] ranked hit matrix; ``n_targets`` [B] held-out counts (all > 0)."""
        for column, k in enumerate(self.ks):
            per_user = ranking_metrics_per_user(hits, n_targets, k)
            for row, name in enumerate(METRIC_NAMES):
                self.sums[row, column] += per_user[name].sum().double()
        self.n_users += hits.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        averages = self.sums / self.n_users.clamp(min=1.0)
        return {
            f"{name}@{k}": averages[row, column].float()
            for row, name in enumerate(METRIC_NAMES)
            for column, k in enumerate(self.ks)
        }
