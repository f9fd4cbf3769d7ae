"""Ranking metrics against hand-computed values (MMRec definitions)."""

import math

import pytest
import torch

from lit_mmrec.metrics import TopKRankingMetrics, hit_matrix, mask_scores, ranking_metrics_per_user


def log2_discount(rank: int) -> float:  # rank is 1-based
    return 1.0 / math.log2(rank + 1)


def test_hit_at_rank_one_with_single_target():
    hits = torch.tensor([[True, False, False]])
    per_user = ranking_metrics_per_user(hits, torch.tensor([1]), k=3)
    assert per_user["recall"].item() == pytest.approx(1.0)
    assert per_user["ndcg"].item() == pytest.approx(1.0)
    assert per_user["precision"].item() == pytest.approx(1 / 3)
    assert per_user["hit"].item() == 1.0


def test_no_hit_gives_zeros():
    hits = torch.zeros(1, 5, dtype=torch.bool)
    per_user = ranking_metrics_per_user(hits, torch.tensor([2]), k=5)
    assert all(value.item() == 0.0 for value in per_user.values())


def test_hit_at_rank_three_of_two_targets():
    hits = torch.tensor([[False, False, True, False]])
    per_user = ranking_metrics_per_user(hits, torch.tensor([2]), k=4)
    assert per_user["recall"].item() == pytest.approx(0.5)
    ideal = log2_discount(1) + log2_discount(2)
    assert per_user["ndcg"].item() == pytest.approx(log2_discount(3) / ideal)
    assert per_user["precision"].item() == pytest.approx(0.25)


def test_more_held_out_items_than_k():
    # 5 held-out items, K = 2, both top positions hit: recall 2/5, NDCG 1 (ideal over min(5, 2) = 2)
    hits = torch.tensor([[True, True, False]])
    per_user = ranking_metrics_per_user(hits, torch.tensor([5]), k=2)
    assert per_user["recall"].item() == pytest.approx(2 / 5)
    assert per_user["ndcg"].item() == pytest.approx(1.0)
    assert per_user["precision"].item() == pytest.approx(1.0)


def test_metric_averages_over_users_and_cutoffs():
    metric = TopKRankingMetrics(ks=[1, 2])
    hits = torch.tensor([[True, False], [False, True], [False, False]])
    metric.update(hits, torch.tensor([1, 1, 3]))
    results = metric.compute()
    assert results["recall@1"].item() == pytest.approx((1 + 0 + 0) / 3)
    assert results["recall@2"].item() == pytest.approx((1 + 1 + 0) / 3)
    assert results["ndcg@2"].item() == pytest.approx((1 + log2_discount(2) / 1.0 + 0) / 3)
    assert results["hit@2"].item() == pytest.approx(2 / 3)
    assert results["precision@2"].item() == pytest.approx((0.5 + 0.5 + 0) / 3)


def test_metric_accumulates_across_batches_like_one_batch():
    hits = torch.rand(10, 5) > 0.6
    n_targets = torch.randint(1, 6, (10,))
    whole, split = TopKRankingMetrics([3, 5]), TopKRankingMetrics([3, 5])
    whole.update(hits, n_targets)
    split.update(hits[:4], n_targets[:4])
    split.update(hits[4:], n_targets[4:])
    for name, value in whole.compute().items():
        assert split.compute()[name].item() == pytest.approx(value.item())


def test_mask_and_gather_pipeline():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.5], [0.1, 0.2, 0.3, 0.4]])
    # user 0 already has item 0; user 1 already has item 3
    mask_scores(scores, torch.tensor([0, 1]), torch.tensor([0, 3]))
    top = scores.topk(2, dim=1).indices
    assert top.tolist() == [[1, 3], [2, 1]]
    hits = hit_matrix(top, torch.tensor([0, 1]), torch.tensor([3, 0]), n_items=4)
    assert hits.tolist() == [[False, True], [False, False]]


def test_rejects_bad_cutoffs():
    with pytest.raises(ValueError):
        TopKRankingMetrics(ks=[])
    with pytest.raises(ValueError):
        TopKRankingMetrics(ks=[0, 10])
