"""A synthetic multimodal dataset with planted structure, for quick starts, tests and scale benchmarks."""

from __future__ import annotations

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
      ``softmax(affinity * P_u . Q_i + log pop_i)`` (Gumbel top-k, in blocks of users so no
      users x items matrix is ever held);
    * each modality m has features ``tanh(Q W_m) + feature_noise * eps`` of width ``modalities[m]``,
      so the features carry the item factors that sparse interactions only hint at;
    * each user's items are split at random into train / valid / test with the given ratios
      (valid and test get at least one item each).
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

    def fingerprint(self) -> str:
        return f"synthetic-{self.n_users}x{self.n_items}x{self.n_interactions}-s{self.seed}"

    def _interactions_per_user(self, generator: torch.Generator) -> torch.Tensor:
        raw = torch.exp(torch.randn(self.n_users, generator=generator) * 0.8)
        extra = self.n_interactions - self.min_user_interactions * self.n_users
        counts = self.min_user_interactions + torch.floor(raw / raw.sum() * extra).long()
        return counts.clamp(max=max(self.min_user_interactions, self.n_items // 2))

    def load(self) -> InteractionData:
        generator = torch.Generator().manual_seed(self.seed)
        user_factors = torch.randn(self.n_users, self.n_factors, generator=generator) / self.n_factors**0.5
        item_factors = torch.randn(self.n_items, self.n_factors, generator=generator)
        popularity_rank = torch.randperm(self.n_items, generator=generator).float() + 1.0
        log_popularity = -self.popularity_exponent * torch.log(popularity_rank)  # [n_items]
        counts = self._interactions_per_user(generator)

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
            n_test = torch.clamp(torch.round(block_counts * self.test_ratio), min=1).unsqueeze(1)
            n_valid = torch.clamp(torch.round(block_counts * self.valid_ratio), min=1).unsqueeze(1)
            label = torch.where(position < n_test, 2, torch.where(position < n_test + n_valid, 1, 0))
            rows = torch.arange(start, start + len(block_counts)).unsqueeze(1).expand_as(chosen)
            users.append(rows[valid])
            items.append(chosen[valid])
            labels.append(label[valid])

        user_ids = torch.cat(users).numpy()
        item_ids = torch.cat(items).numpy()
        split = torch.cat(labels).numpy()
        shape = (self.n_users, self.n_items)
        splits = [binary_csr(user_ids[split == k], item_ids[split == k], shape) for k in (0, 1, 2)]

        features = {}
        for name, width in self.modalities.items():
            projection = torch.randn(self.n_factors, width, generator=generator) / self.n_factors**0.5
            noise = torch.randn(self.n_items, width, generator=generator)
            features[name] = (torch.tanh(item_factors @ projection) + self.feature_noise * noise).numpy()
        return InteractionData(*splits, features=features, source=self.fingerprint())
