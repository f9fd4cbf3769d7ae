"""Ranking metrics against hand-computed values (MMRec definitions)."""

import math

import pytest
import torch

from lit_mmrec.metrics import (
    TopKRankingMetrics,
    hit_matrix,
    mask_scores,
    ranking_metrics_at,
    ranking_metrics_per_user,
    top_k_items,
)


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


def test_all_cutoffs_at_once_match_hand_computed_values():
    # one user with 3 held-out items, hits at ranks 2, 3 and 5
    hits = torch.tensor([[False, True, True, False, True]])
    per_user = ranking_metrics_at(hits, torch.tensor([3]), ks=[1, 3, 5])
    assert per_user["recall"][0].tolist() == pytest.approx([0.0, 2 / 3, 1.0])
    assert per_user["precision"][0].tolist() == pytest.approx([0.0, 2 / 3, 3 / 5])
    assert per_user["hit"][0].tolist() == [0.0, 1.0, 1.0]
    ideal_3 = log2_discount(1) + log2_discount(2) + log2_discount(3)  # min(3 held-out, k) = 3 for k = 3 and 5
    assert per_user["ndcg"][0].tolist() == pytest.approx([
        0.0,
        (log2_discount(2) + log2_discount(3)) / ideal_3,
        (log2_discount(2) + log2_discount(3) + log2_discount(5)) / ideal_3,
    ])


def test_all_cutoffs_at_once_equal_one_cutoff_at_a_time():
    hits = torch.rand(50, 20) > 0.7
    n_targets = torch.randint(1, 12, (50,))
    together = ranking_metrics_at(hits, n_targets, ks=[3, 7, 20])
    for column, k in enumerate([3, 7, 20]):
        alone = ranking_metrics_per_user(hits[:, :k], n_targets, k)
        for name, values in alone.items():
            torch.testing.assert_close(together[name][:, column], values)


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


@pytest.mark.parametrize("n_items", [2000, 2003, 7050, 7057])  # divisible by the group count or with a partial slice
@pytest.mark.parametrize("k", [1, 20, 50])
def test_top_k_items_ranks_exactly_like_torch_topk(n_items, k):
    generator = torch.Generator().manual_seed(n_items + k)
    scores = torch.randn(64, n_items, generator=generator)
    rows = torch.arange(64).repeat_interleave(30)
    mask_scores(scores, rows, torch.randint(0, n_items, (rows.numel(),), generator=generator))
    reference = scores.topk(k, dim=1)
    items = top_k_items(scores, k)
    assert torch.equal(items, reference.indices)  # no ties among random scores, so the same ids
    assert torch.equal(scores.gather(1, items), reference.values)


def test_top_k_items_of_a_column_major_score_matrix():
    scores = torch.randn(2003, 6, generator=torch.Generator().manual_seed(1)).T  # a transposed view
    assert torch.equal(top_k_items(scores, 20), scores.topk(20, dim=1).indices)


def test_top_k_items_finds_the_best_items_when_they_share_a_group():
    # the 5 best items are all in one strided group (ids j, j + G, j + 2G, ... with G = 400)
    scores = torch.zeros(2, 4000)
    scores[0, [3, 403, 803, 1203, 1603]] = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    scores[1, [3999, 0, 17]] = torch.tensor([3.0, 2.0, 1.0])  # last item, first item, one more
    assert top_k_items(scores, 5)[0].tolist() == [3, 403, 803, 1203, 1603]
    assert top_k_items(scores, 5)[1, :3].tolist() == [3999, 0, 17]


def test_top_k_items_with_fewer_unmasked_items_than_k():
    scores = torch.full((3, 2003), -torch.inf)
    scores[0, [5, 2002]] = torch.tensor([1.0, 2.0])  # two rankable items, k = 50
    scores[1] = torch.linspace(0, 1, 2003)
    items = top_k_items(scores, 50)
    assert items[0, :2].tolist() == [2002, 5]
    assert bool((items < 2003).all())
    assert all(len(set(row)) == 50 for row in items.tolist())  # the rest are masked items, each once
    assert items[1].tolist() == list(range(2002, 1952, -1))
