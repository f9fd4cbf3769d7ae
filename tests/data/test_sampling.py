"""Negative sampling and ranking batches."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from lit_mmrec.data.sampling import (
    BPRTriplets,
    RankingBatches,
    ShardedBatches,
    contains,
    interaction_keys,
    sample_negatives,
)


def test_negatives_are_never_training_items():
    # user 0 has all items but one: rejection must keep redrawing until it finds item 7
    dense = np.zeros((3, 8), dtype=np.float32)
    dense[0, :7] = 1
    dense[1, [1, 2]] = 1
    dense[2, 5] = 1
    train = sp.csr_matrix(dense)
    keys = interaction_keys(train)
    users = torch.tensor([0] * 500 + [1] * 500 + [2] * 500)
    negatives = sample_negatives(users, 8, keys, torch.Generator().manual_seed(0))
    assert not contains(keys, users * 8 + negatives).any()
    assert set(negatives[:500].tolist()) == {7}


def test_triplet_batches_cover_every_interaction_once():
    train = sp.random(20, 30, density=0.2, format="csr", dtype=np.float32, random_state=0)
    train.data[:] = 1
    dataset = BPRTriplets(train, batch_size=16, seed=1)
    assert len(dataset) == -(-train.nnz // 16)
    batches = [dataset[index] for index in range(len(dataset))]
    assert [b.shape[1] for b in batches[:-1]] == [16] * (len(dataset) - 1)
    batch = torch.cat(batches, dim=1)
    assert batch.shape == (3, train.nnz)
    pairs = list(zip(batch[0].tolist(), batch[1].tolist()))
    assert sorted(pairs) == sorted(zip(*train.nonzero()))  # each interaction exactly once
    keys = interaction_keys(train)
    assert not contains(keys, batch[0] * 30 + batch[2]).any()


def epoch_of(dataset: BPRTriplets) -> torch.Tensor:
    return torch.cat([dataset[index] for index in range(len(dataset))], dim=1)


def test_reseed_repeats_an_epoch_and_shares_its_order_across_ranks():
    train = sp.random(10, 50, density=0.1, format="csr", dtype=np.float32, random_state=0)
    dataset = BPRTriplets(train, batch_size=8, seed=5)
    dataset.reseed(epoch=3)
    first = epoch_of(dataset)
    dataset.reseed(epoch=3)
    torch.testing.assert_close(epoch_of(dataset), first)
    dataset.reseed(epoch=3, rank=1)  # another process: same order (disjoint shares), own negatives
    other_rank = epoch_of(dataset)
    torch.testing.assert_close(other_rank[:2], first[:2])
    assert not torch.equal(other_rank[2], first[2])
    dataset.reseed(epoch=4)
    assert not torch.equal(epoch_of(dataset)[:2], first[:2])
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_ranking_batches_skip_users_without_targets_and_mask_known_items():
    train = sp.csr_matrix(np.array([[1, 0, 0, 1], [0, 1, 0, 0], [1, 1, 0, 0]], dtype=np.float32))
    valid = sp.csr_matrix(np.array([[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1]], dtype=np.float32))
    batches = RankingBatches.for_split(train, valid, batch_size=10)
    assert len(batches) == 1
    batch = batches[0]
    assert batch.users.tolist() == [0, 2]  # user 1 has no validation item
    assert list(zip(batch.exclude_rows.tolist(), batch.exclude_cols.tolist())) == [(0, 0), (0, 3), (1, 0), (1, 1)]
    assert list(zip(batch.target_rows.tolist(), batch.target_cols.tolist())) == [(0, 1), (1, 2), (1, 3)]
    assert batch.n_targets.tolist() == [1, 2]


def test_sharded_ranking_batches_score_every_user_once():
    targets = sp.random(11, 6, density=0.5, format="csr", dtype=np.float32, random_state=2)
    targets.data[:] = 1
    batches = RankingBatches(np.arange(11), sp.csr_matrix((11, 6), dtype=np.float32), targets, batch_size=2)
    assert len(batches) == 6
    shards = [list(ShardedBatches(batches, num_replicas=4, rank=rank)) for rank in range(4)]
    assert shards == [[0, 4], [1, 5], [2, 6], [3, 6]]  # equal lengths; 6 is the empty batch, not a repeat
    users = torch.cat([batches[index].users for shard in shards for index in shard])
    assert sorted(users.tolist()) == list(range(11))
    empty = batches[6]
    assert empty.users.numel() == 0 and empty.n_targets.numel() == 0
