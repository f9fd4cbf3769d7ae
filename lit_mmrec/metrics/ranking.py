"""Full-ranking top-K metrics (Recall, NDCG, Precision, Hit) with MMRec's definitions, vectorised."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torchmetrics import Metric

if TYPE_CHECKING:
    from lit_mmrec.data.sampling import RankingBatch

METRIC_NAMES = ("recall", "ndcg", "precision", "hit")


def mask_scores(scores: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Set ``scores[rows, cols] = -inf`` in place (items that must not be recommended)."""
    scores[rows, cols] = -torch.inf
    return scores


def top_k_items(scores: torch.Tensor, k: int, group_size: int = 10) -> torch.Tensor:
    """Column ids [B, k] of each row's ``k`` largest scores, best first (``scores.topk(k).indices``).

    On CPU, ``torch.topk`` spends most of a full-ranking pass walking every score of every row, so
    large rows are first cut down exactly: a row of ``n`` scores is split into ``G = ceil(n /
    group_size)`` strided groups ``{j, j + G, j + 2G, ...}`` (their maxima are an element-wise max of
    contiguous slices, which vectorises), and only the ``k`` groups with the largest maxima are
    ranked. They hold all of the row's ``k`` largest scores: every group that holds a score above
    the k-th largest value has its maximum above it too, and there are fewer than ``k`` such
    scores, so those groups are all picked; the k picked groups then hold at least ``k`` scores at
    or above the k-th largest value. The values returned are therefore exactly ``torch.topk``'s;
    among tied scores the ids may differ. On other devices, or for short rows, it is ``torch.topk``.
    """
    b, n = scores.shape
    n_groups = -(-n // group_size)
    if scores.device.type != "cpu" or n_groups < 4 * k:
        return scores.topk(k, dim=1).indices
    whole = n // n_groups  # complete strided slices of length n_groups
    body = scores[:, : whole * n_groups].reshape(b, whole, n_groups)  # a view for row-major scores
    group_max = body.amax(dim=1)  # [B, G]
    tail = n - whole * n_groups  # items whole * G + j of the first `tail` groups
    if tail:
        group_max[:, :tail] = torch.maximum(group_max[:, :tail], scores[:, whole * n_groups :])
    groups = group_max.topk(k, dim=1, sorted=False).indices  # [B, k]
    candidates = body.gather(2, groups.unsqueeze(1).expand(b, whole, k)).view(b, whole * k)
    if tail:
        tail_items = groups + whole * n_groups  # past the last item for groups j >= tail
        tail_scores = scores.gather(1, tail_items.clamp(max=n - 1)).masked_fill_(tail_items >= n, -torch.inf)
        candidates = torch.cat([candidates, tail_scores], dim=1)
    best = candidates.topk(k, dim=1).indices  # position slot * k + r is item slot * G + groups[r]
    items = best.div(k, rounding_mode="floor") * n_groups + groups.gather(1, best.remainder(k))
    past_end = (items >= n).any(dim=1)  # a filler won a tie at -inf: a row with fewer than k finite scores
    if past_end.any():
        items[past_end] = scores[past_end].topk(k, dim=1).indices
    return items


def hit_matrix(
    top_items: torch.Tensor, target_rows: torch.Tensor, target_cols: torch.Tensor, n_items: int
) -> torch.Tensor:
    """Bool [B, K]: whether the item at each ranked position is one of the user's held-out items."""
    relevant = torch.zeros(top_items.shape[0], n_items, dtype=torch.bool, device=top_items.device)
    relevant[target_rows, target_cols] = True  # [B, n_items], one batch only
    return relevant.gather(1, top_items)


def ranked_hits(scores: torch.Tensor, batch: RankingBatch, depth: int) -> torch.Tensor:
    """Bool [B, depth]: whether each of a batch's top-``depth`` items is held out, MMRec's full ranking.

    Masks the items the users already have in ``scores`` [B, n_items] (in place), ranks the rest and looks
    the held-out items up; positions past the end of a catalogue smaller than ``depth`` hold no hit.
    """
    mask_scores(scores, batch.exclude_rows, batch.exclude_cols)
    ranked = min(depth, scores.shape[1])
    hits = hit_matrix(top_k_items(scores, ranked), batch.target_rows, batch.target_cols, scores.shape[1])
    if ranked < depth:
        hits = torch.cat([hits, hits.new_zeros(hits.shape[0], depth - ranked)], dim=1)
    return hits


def ranking_metrics_at(hits: torch.Tensor, n_targets: torch.Tensor, ks: Sequence[int]) -> dict[str, torch.Tensor]:
    """Per-user metrics [B, len(ks)] at every cut-off in ``ks`` from a ranked hit matrix ``hits`` [B, >=max(ks)].

    * recall = hits in top-k / |held-out|
    * ndcg = DCG@k / IDCG@k, IDCG over min(|held-out|, k) perfect positions
    * precision = hits in top-k / k
    * hit = 1 if any held-out item is in the top-k

    One running sum over the ranked positions serves every cut-off: the hit count and DCG at k are
    the cumulative sums read at position k.
    """
    depth = max(ks)
    device = hits.device
    hits_f = hits[:, :depth].float()
    discount = 1.0 / torch.log2(torch.arange(2, depth + 2, device=device, dtype=torch.float32))  # [depth]
    cut = torch.tensor(ks, device=device) - 1  # [n_ks] position of each cut-off
    n_hits = hits_f.cumsum(dim=1)[:, cut]  # [B, n_ks]
    dcg = (hits_f * discount).cumsum(dim=1)[:, cut]
    ideal_length = torch.minimum(n_targets.clamp(min=1).unsqueeze(1), cut + 1) - 1  # [B, n_ks]
    idcg = discount.cumsum(0)[ideal_length]
    return {
        "recall": n_hits / n_targets.float().clamp(min=1.0).unsqueeze(1),
        "ndcg": dcg / idcg,
        "precision": n_hits / (cut + 1).float(),
        "hit": (n_hits > 0).float(),
    }


def ranking_metrics_per_user(hits: torch.Tensor, n_targets: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """Per-user metrics [B] at the single cut-off ``k`` (see :func:`ranking_metrics_at`)."""
    return {name: values[:, 0] for name, values in ranking_metrics_at(hits, n_targets, [k]).items()}


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
        per_user = ranking_metrics_at(hits, n_targets, self.ks)
        self.sums += torch.stack([per_user[name].double().sum(dim=0) for name in METRIC_NAMES])
        self.n_users += hits.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        averages = self.sums / self.n_users.clamp(min=1.0)
        return {
            f"{name}@{k}": averages[row, column].float()
            for row, name in enumerate(METRIC_NAMES)
            for column, k in enumerate(self.ks)
        }
