"""Batches for training (BPR triplets with vectorised negative sampling) and for full-ranking evaluation."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import Dataset, DistributedSampler


def interaction_keys(matrix: sp.csr_matrix) -> torch.Tensor:
    """Sorted int64 keys ``user * n_items + item`` of a matrix's non-zeros, for membership tests."""
    coo = matrix.tocoo()
    keys = torch.from_numpy(coo.row.astype(np.int64) * matrix.shape[1] + coo.col.astype(np.int64))
    return keys.sort().values


def contains(sorted_keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Boolean mask of which ``queries`` occur in ``sorted_keys`` (binary search, vectorised)."""
    if sorted_keys.numel() == 0:
        return torch.zeros_like(queries, dtype=torch.bool)
    position = torch.searchsorted(sorted_keys, queries).clamp_(max=sorted_keys.numel() - 1)
    return sorted_keys[position] == queries


def sample_negatives(
    users: torch.Tensor, n_items: int, positive_keys: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Uniform items that are none of each user's positives; rejection rounds redraw only the clashes."""
    negatives = torch.randint(n_items, users.shape, generator=generator)
    clash = contains(positive_keys, users * n_items + negatives)
    while clash.any():
        redraw = torch.randint(n_items, (int(clash.sum()),), generator=generator)
        negatives[clash] = redraw
        clash[clash.clone()] = contains(positive_keys, users[clash] * n_items + redraw)
    return negatives


class BPRTriplets(Dataset):
    """One epoch of BPR batches: every training interaction once, in a fresh order, each with a fresh
    uniform negative.

    One element is a whole batch ``[3, B]`` of (user, positive, negative) rows, so the loader runs with
    ``batch_size=None``: the epoch's order is one ``randperm``, a batch is a slice of it, and its
    negatives are drawn for the batch at once (no per-interaction Python work, which torch's
    ``RandomSampler`` + ``BatchSampler`` would do). Under DDP Lightning deals the batch indices to the
    processes with a ``DistributedSampler``; the order depends on (seed, epoch) only, so the processes'
    shares are disjoint, while negatives depend on the rank too.
    """

    def __init__(self, train: sp.csr_matrix, batch_size: int, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"train batch size must be positive, got {batch_size}")
        coo = train.tocoo()
        self.users = torch.from_numpy(coo.row.astype(np.int64))
        self.items = torch.from_numpy(coo.col.astype(np.int64))
        self.n_items = train.shape[1]
        self.batch_size = batch_size
        self.positive_keys = interaction_keys(train)
        self.seed = seed
        self.generator = torch.Generator()
        self.reseed(0)

    def reseed(self, epoch: int, rank: int = 0) -> None:
        """Make an epoch's order a function of (seed, epoch) and its negatives of (seed, epoch, rank), so
        resumed runs repeat them."""
        order_generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        self.order = torch.randperm(self.users.numel(), generator=order_generator)
        self.generator.manual_seed(self.seed * 1_000_003 + epoch * 1009 + rank)

    def __len__(self) -> int:
        return -(-self.users.numel() // self.batch_size)

    def __getitem__(self, batch: int) -> torch.Tensor:
        if not 0 <= batch < len(self):
            raise IndexError(f"batch {batch} out of range for an epoch of {len(self)} batches")
        index = self.order[batch * self.batch_size : (batch + 1) * self.batch_size]
        users = self.users[index]
        negatives = sample_negatives(users, self.n_items, self.positive_keys, self.generator)
        return torch.stack([users, self.items[index], negatives])  # [3, B]


class RankingBatch(NamedTuple):
    """A batch of users for full ranking.

    ``exclude_rows/exclude_cols`` are (row in batch, item) pairs to mask with -inf before ranking
    (items already known to the user); ``target_rows/target_cols`` are the held-out items;
    ``n_targets`` counts held-out items per user.
    """

    users: torch.Tensor
    exclude_rows: torch.Tensor
    exclude_cols: torch.Tensor
    target_rows: torch.Tensor
    target_cols: torch.Tensor
    n_targets: torch.Tensor


def _rows_as_pairs(matrix: sp.csr_matrix, users: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(row in batch, item) pairs of the non-zeros of ``matrix[users]``."""
    sub = matrix[users]
    rows = np.repeat(np.arange(len(users), dtype=np.int64), np.diff(sub.indptr))
    return torch.from_numpy(rows), torch.from_numpy(sub.indices.astype(np.int64))


class RankingBatches(Dataset):
    """Precomputed full-ranking batches (one dataset element = one batch of users).

    Users with no held-out item are skipped; ``exclude`` is the union of splits whose items must not
    be recommended (train for validation; train + valid for test; train for predict).
    """

    def __init__(
        self,
        users: np.ndarray,
        exclude: sp.csr_matrix,
        targets: sp.csr_matrix | None,
        batch_size: int,
    ) -> None:
        self.batches: list[RankingBatch] = []
        for start in range(0, len(users), batch_size):  # batches, not users
            block = users[start : start + batch_size]
            exclude_rows, exclude_cols = _rows_as_pairs(exclude, block)
            if targets is None:
                empty = torch.empty(0, dtype=torch.long)
                target_rows, target_cols, n_targets = empty, empty, torch.zeros(len(block), dtype=torch.long)
            else:
                target_rows, target_cols = _rows_as_pairs(targets, block)
                n_targets = torch.from_numpy(np.diff(targets[block].indptr).astype(np.int64))
            self.batches.append(
                RankingBatch(torch.from_numpy(block), exclude_rows, exclude_cols, target_rows, target_cols, n_targets)
            )

    @classmethod
    def for_split(cls, exclude: sp.csr_matrix, targets: sp.csr_matrix, batch_size: int) -> RankingBatches:
        users = np.flatnonzero(np.diff(targets.indptr) > 0).astype(np.int64)
        return cls(users, exclude, targets, batch_size)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> RankingBatch:
        """Batch ``index``; ``len(self)`` is a batch of no users (what :class:`ShardedBatches` pads with)."""
        if index == len(self.batches):
            empty = torch.empty(0, dtype=torch.long)
            return RankingBatch(empty, empty, empty, empty, empty, empty)
        return self.batches[index]


class ShardedBatches(DistributedSampler):
    """Deals the ranking batches round-robin to the processes, each batch to exactly one of them.

    torch's ``DistributedSampler`` evens the shards out by repeating batches, which would score those
    users twice and bias summed metrics; here the short shards are padded with the empty batch
    (index ``len(dataset)``) instead, so every process runs the same number of steps and every user
    is counted once. Being a ``DistributedSampler``, Lightning leaves it in place.
    """

    def __init__(self, dataset: RankingBatches, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)

    def __iter__(self):
        own = list(range(self.rank, len(self.dataset), self.num_replicas))
        return iter(own + [len(self.dataset)] * (self.num_samples - len(own)))
