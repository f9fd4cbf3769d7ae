"""A synthetic multimodal dataset with planted structure, for quick starts, tests and scale benchmarks."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from lit_mmrec.data.interactions import InteractionData, binary_csr
from lit_mmrec.data.readers import DatasetSource


class Synthetic(DatasetSource):
    """Interactions sampled from latent factors, with item features that are noisy views of those factors.

    Generative story:

    * users and items get latent factors ``P [n_users, n_factors]`` and ``Q [n_items, n_factors]``;
    * items get a power-law popularity ``pop_i ~ rank_i^-popularity_exponent``;
    * user u's number of interactions follows a log-normal law scaled so the total is about
      ``n_interactions`` (at least ``min_user_interactions``);
    * user u picks that many distinct items without replacement from
      ``softmax(affinity * P_u . Q_i + log pop_i)``;
    * each modality m has features ``tanh(Q W_m) + feature_noise * eps`` of width ``modalities[m]``,
      so the features carry the item factors that sparse interactions only hint at (computed in blocks of
      items, written into one float32 array);
    * each user's items are split at random into train / valid / test with the given ratios
      (valid and test get at least one item each).

    Two samplers draw the items (``sampler``):

    * ``exact``: Gumbel top-k over every item, in blocks of ``block_size`` users, so no users x items matrix
      is held but the cost is O(n_users * n_items): minutes at Amazon Electronics' size, hours at five times it;
    * ``pooled``: sampling-importance-resampling, O(n_interactions). Each user draws a pool of
      ``max(pool_factor * count, count + 16)`` items from the popularity law (with replacement; repeats
      dropped), then keeps the ``count`` with the highest ``affinity * P_u . Q_i + Gumbel`` noise. The
      popularity term is the proposal, the affinity the importance weight, so as the pool grows the draw
      tends to the exact law; with a finite pool, items outside every pool are never chosen and the affinity
      acts more weakly than under ``exact``. For benchmarks at scale, where the interaction count, the degree
      law and the features' structure matter and the exact item law does not. Its counts sum to
      ``n_interactions`` exactly (largest remainders) unless a user's pool holds fewer distinct items than
      the user's count (a small catalogue; the user then keeps them all); ``exact`` floors each user's share, as it always has,
      and falls short by up to one interaction per user.

    Args:
        n_users: number of users.
        n_items: number of items.
        n_interactions: total interactions to aim for (each user gets at least ``min_user_interactions``).
        n_factors: width of the latent factors P and Q.
        modalities: feature width of each modality, ``{name: width}``.
        feature_noise: standard deviation of the Gaussian noise added to each feature.
        affinity: weight of the factor affinity P_u . Q_i in the item law.
        popularity_exponent: exponent of the power-law popularity over item ranks.
        valid_ratio: share of each user's items held out for validation (at least one).
        test_ratio: share of each user's items held out for testing (at least one).
        min_user_interactions: the fewest interactions a user gets (3 or more).
        seed: seed of the generator; the same arguments and seed give the same dataset.
        block_size: users (``exact`` sampling; 32 times as many for ``pooled``) or items (features) per block.
        sampler: ``exact`` (Gumbel top-k over every item) or ``pooled`` (popularity pools, linear in interactions).
        pool_factor: with ``pooled``, pool draws per chosen item.
    """

    def __init__(
        self,
        n_users: int = 1000,
        n_items: int = 500,
        n_interactions: int = 20000,
        n_factors: int = 16,
        modalities: dict[str, int] | None = None,
        feature_noise: float = 0.3,
        affinity: float = 2.0,
        popularity_exponent: float = 0.7,
        valid_ratio: float = 0.1,
        test_ratio: float = 0.1,
        min_user_interactions: int = 5,
        seed: int = 0,
        block_size: int = 2048,
        sampler: Literal["exact", "pooled"] = "exact",
        pool_factor: int = 16,
    ) -> None:
        if min_user_interactions < 3:
            raise ValueError("min_user_interactions must be >= 3 so every user has train, valid and test items")
        if n_interactions < n_users * min_user_interactions:
            raise ValueError(
                f"n_interactions={n_interactions} is below n_users * min_user_interactions="
                f"{n_users * min_user_interactions}; raise n_interactions or lower min_user_interactions"
            )
        self.n_users = n_users
        self.n_items = n_items
        self.n_interactions = n_interactions
        self.n_factors = n_factors
        self.modalities = {"image": 64, "text": 32} if modalities is None else dict(modalities)
        self.feature_noise = feature_noise
        self.affinity = affinity
        self.popularity_exponent = popularity_exponent
        self.valid_ratio = valid_ratio
        self.test_ratio = test_ratio
        self.min_user_interactions = min_user_interactions
        self.seed = seed
        self.block_size = block_size
        if sampler not in ("exact", "pooled"):
            raise ValueError(f"sampler must be 'exact' or 'pooled', got {sampler!r}")
        if pool_factor < 1:
            raise ValueError(f"pool_factor must be >= 1, got {pool_factor}")
        self.sampler = sampler
        self.pool_factor = pool_factor

    def fingerprint(self) -> str:
        sampler = "" if self.sampler == "exact" else f"-pooled{self.pool_factor}"
        return f"synthetic-{self.n_users}x{self.n_items}x{self.n_interactions}-s{self.seed}{sampler}"

    def _interactions_per_user(self, generator: torch.Generator) -> torch.Tensor:
        raw = torch.exp(torch.randn(self.n_users, generator=generator) * 0.8)
        extra = self.n_interactions - self.min_user_interactions * self.n_users
        share = raw / raw.sum() * extra
        counts = self.min_user_interactions + torch.floor(share).long()
        if self.sampler == "pooled":  # largest remainders: the counts sum to n_interactions exactly
            short = min(max(self.n_interactions - int(counts.sum()), 0), self.n_users)
            counts[(share - share.floor()).topk(short).indices] += 1
        return counts.clamp(max=max(self.min_user_interactions, self.n_items // 2))

    def load(self) -> InteractionData:
        generator = torch.Generator().manual_seed(self.seed)
        user_factors = torch.randn(self.n_users, self.n_factors, generator=generator) / self.n_factors**0.5
        item_factors = torch.randn(self.n_items, self.n_factors, generator=generator)
        popularity_rank = torch.randperm(self.n_items, generator=generator).float() + 1.0
        log_popularity = -self.popularity_exponent * torch.log(popularity_rank)  # [n_items]
        counts = self._interactions_per_user(generator)
        sample = self._sample_exact if self.sampler == "exact" else self._sample_pooled
        user_ids, item_ids, split = sample(generator, user_factors, item_factors, log_popularity, counts)
        shape = (self.n_users, self.n_items)
        splits = [binary_csr(user_ids[split == k], item_ids[split == k], shape) for k in (0, 1, 2)]

        features = {}
        for name, width in self.modalities.items():
            projection = torch.randn(self.n_factors, width, generator=generator) / self.n_factors**0.5
            values = np.empty((self.n_items, width), dtype=np.float32)
            for start in range(0, self.n_items, self.block_size):  # blocks of items, vectorised inside
                stop = min(start + self.block_size, self.n_items)
                noise = torch.randn(stop - start, width, generator=generator)
                values[start:stop] = (torch.tanh(item_factors[start:stop] @ projection)
                                      + self.feature_noise * noise).numpy()
            features[name] = values
        return InteractionData(*splits, features=features, source=self.fingerprint())

    def _split_labels(self, position: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """0 / 1 / 2 (train / valid / test) for the item at ``position`` in a random order of ``count`` items."""
        n_test = torch.clamp(torch.round(count * self.test_ratio), min=1)
        n_valid = torch.clamp(torch.round(count * self.valid_ratio), min=1)
        return torch.where(position < n_test, 2, torch.where(position < n_test + n_valid, 1, 0))

    def _sample_exact(self, generator, user_factors, item_factors, log_popularity, counts):
        """Gumbel top-k over every item, ``block_size`` users at a time."""
        users, items, labels = [], [], []
        for start in range(0, self.n_users, self.block_size):  # blocks of users, vectorised inside
            block_counts = counts[start : start + self.block_size]
            logits = self.affinity * user_factors[start : start + self.block_size] @ item_factors.T + log_popularity
            uniform = torch.rand(logits.shape, generator=generator).clamp_(1e-12, 1.0)
            perturbed = logits - torch.log(-torch.log(uniform))  # Gumbel top-k = sampling w/o replacement
            width = int(block_counts.max())
            chosen = perturbed.topk(width, dim=1).indices  # [block, width]
            valid = torch.arange(width).unsqueeze(0) < block_counts.unsqueeze(1)
            # random order inside each user's sample decides the split
            order_keys = torch.rand(chosen.shape, generator=generator).masked_fill_(~valid, 2.0)
            position = order_keys.argsort(dim=1).argsort(dim=1)  # rank of each sampled item, [block, width]
            label = self._split_labels(position, block_counts.unsqueeze(1))
            rows = torch.arange(start, start + len(block_counts)).unsqueeze(1).expand_as(chosen)
            users.append(rows[valid])
            items.append(chosen[valid])
            labels.append(label[valid])
        return torch.cat(users).numpy(), torch.cat(items).numpy(), torch.cat(labels).numpy()

    def _sample_pooled(self, generator, user_factors, item_factors, log_popularity, counts):
        """Popularity pools re-ranked by affinity plus Gumbel noise (see the class docstring), flat per block."""
        popularity = torch.exp(log_popularity - log_popularity.max())
        users, items, labels = [], [], []
        block = 32 * self.block_size
        for start in range(0, self.n_users, block):  # blocks of users, vectorised inside
            count = counts[start : start + block]
            pool = torch.maximum(self.pool_factor * count, count + 16)
            owner = torch.repeat_interleave(torch.arange(len(count)), pool)  # [pool draws], block-local user
            item = torch.multinomial(popularity, int(pool.sum()), replacement=True, generator=generator)
            key, _ = (owner * self.n_items + item).sort()  # sorted by user, then item
            first = torch.ones_like(key, dtype=torch.bool)
            first[1:] = key[1:] != key[:-1]  # drop repeated draws of an item by the same user
            owner, item = key[first] // self.n_items, key[first] % self.n_items
            distinct = torch.bincount(owner, minlength=len(count))
            if bool((distinct < self.min_user_interactions).any()):
                raise ValueError(f"Synthetic(sampler='pooled'): a user's pool of {self.pool_factor} draws per "
                                 f"item holds fewer than min_user_interactions={self.min_user_interactions} "
                                 f"distinct items; raise pool_factor or use sampler='exact'")
            uniform = torch.rand(len(item), generator=generator).clamp_(1e-12, 1.0)
            score = (self.affinity * (user_factors[start + owner] * item_factors[item]).sum(1)
                     - torch.log(-torch.log(uniform)))
            rank = self._rank_within(owner, score, distinct)
            count = torch.minimum(count, distinct)
            keep = rank < count[owner]
            owner, item = owner[keep], item[keep]
            order_keys = torch.rand(len(item), generator=generator)  # random order inside each user's sample
            position = self._rank_within(owner, order_keys, count)
            labels.append(self._split_labels(position, count[owner]))
            users.append(owner + start)
            items.append(item)
        return torch.cat(users).numpy(), torch.cat(items).numpy(), torch.cat(labels).numpy()

    @staticmethod
    def _rank_within(owner: torch.Tensor, score: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        """Each entry's rank by descending ``score`` among the entries of its owner; ``owner`` is sorted."""
        order = score.argsort(descending=True)
        order = order[owner[order].argsort(stable=True)]  # by owner, then by descending score
        starts = torch.cumsum(sizes, 0) - sizes
        rank = torch.empty_like(owner)
        rank[order] = torch.arange(len(owner)) - starts[owner[order]]
        return rank
