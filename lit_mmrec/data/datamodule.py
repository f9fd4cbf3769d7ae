"""The LightningDataModule: reads a dataset once, builds its graphs, and serves training and ranking batches."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from lit_mmrec.data.graphs import (
    KnnSearch,
    KnnWeighting,
    RecGraphs,
    cached_item_item_knn_graph,
    default_cache_dir,
    scipy_to_torch_csr,
    sym_norm_adjacency,
)
from lit_mmrec.data.interactions import InteractionData, user_degree_summary
from lit_mmrec.data.readers import DatasetSource
from lit_mmrec.data.sampling import BPRTriplets, RankingBatches, ShardedBatches
from lit_mmrec.data.synthetic import Synthetic
from lit_mmrec.runtime import available_memory_bytes

log = logging.getLogger(__name__)

AUTO_EVAL_SHARE = 0.25  # with eval_batch_size auto, the share of the available memory one score block may take
AUTO_EVAL_COPIES = 3  # float32 users x items blocks alive at once while a batch is ranked (scores, mask, top-k)
AUTO_EVAL_MAX_USERS = 8192  # larger blocks rank no faster


class RecDataModule(L.LightningDataModule):
    """Serves one recommendation dataset to every model.

    Args:
        dataset: where the data comes from (``MMRecAtomic``, ``DiffMMPickles`` or ``Synthetic``).
        modalities: feature modalities to use, in order; ``None`` uses every one found.
        knn_k: neighbours per item in the item-item KNN graphs.
        knn_weighting: ``binary`` edges (DiffCL eq 19) or cosine-``similarity`` weights.
        knn_include_self: whether an item may be its own neighbour (MMRec's FREEDOM/LATTICE: yes).
        knn_search: ``exact`` (every pair, block-wise) or ``ivf`` (faiss's inverted-file index, approximate).
        knn_lists: with ``ivf``, the index's cells (default ``4 sqrt(n_items)``).
        knn_probe: with ``ivf``, the cells searched per item (more: slower, closer to exact).
        cache_dir: where KNN graphs are cached (default ``$LIT_MMREC_CACHE`` or ``~/.cache/lit_mmrec``);
            set ``use_cache: false`` to always rebuild.
        train_batch_size: BPR triplets per training step.
        eval_batch_size: users per full-ranking batch; ``auto`` fits the batch to the memory available on the
            evaluating device at setup (a quarter of it for three float32 rows of n_items per user, at most 8,192).
        predict_top_k: how many items ``lit_mmrec predict`` writes per user.
        seed: seed of the negative sampler.
    """

    def __init__(
        self,
        dataset: DatasetSource | None = None,
        modalities: list[str] | None = None,
        knn_k: int = 10,
        knn_weighting: KnnWeighting = "binary",
        knn_include_self: bool = True,
        knn_search: KnnSearch = "exact",
        knn_lists: int | None = None,
        knn_probe: int = 32,
        cache_dir: str | None = None,
        use_cache: bool = True,
        train_batch_size: int = 2048,
        eval_batch_size: int | Literal["auto"] = 1024,
        predict_top_k: int = 20,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.source = dataset if dataset is not None else Synthetic()
        self.modalities = modalities
        self.knn_k = knn_k
        self.knn_weighting = knn_weighting
        self.knn_include_self = knn_include_self
        self.knn_search, self.knn_lists, self.knn_probe = knn_search, knn_lists, knn_probe
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.use_cache = use_cache
        self.train_batch_size = train_batch_size
        self.eval_batch_size = eval_batch_size
        self.predict_top_k = predict_top_k
        self.seed = seed
        self._data: InteractionData | None = None
        self.graphs: RecGraphs | None = None
        self.train_set: BPRTriplets | None = None
        self._ranking: dict[str, RankingBatches] = {}

    # ---- facts about the data, read lazily so the CLI can link them into the model ----
    @property
    def data(self) -> InteractionData:
        if self._data is None:
            self._data = self.source.load().select_modalities(self.modalities)
            log.info(
                "loaded %s: %d users, %d items, %d/%d/%d interactions, modalities %s",
                self._data.source, self._data.n_users, self._data.n_items, self._data.train.nnz,
                self._data.valid.nnz, self._data.test.nnz, self._data.feature_dims,
            )
            log.info("training split: %s", user_degree_summary(self._data.train).describe())
        return self._data

    @property
    def n_users(self) -> int:
        return self.data.n_users

    @property
    def n_items(self) -> int:
        return self.data.n_items

    @property
    def feature_dims(self) -> dict[str, int]:
        return self.data.feature_dims

    @property
    def name(self) -> str:
        return self.source.fingerprint()

    # ---- building ----
    def setup(self, stage: str | None = None) -> None:
        if self.graphs is not None:
            return
        data = self.data
        item_item = {
            name: scipy_to_torch_csr(
                cached_item_item_knn_graph(
                    features, self.knn_k, self.knn_weighting, self.knn_include_self,
                    self.cache_dir if self.use_cache else None, self.knn_search, self.knn_lists, self.knn_probe,
                )
            )
            for name, features in data.features.items()
        }
        self.graphs = RecGraphs(
            n_users=data.n_users,
            n_items=data.n_items,
            norm_adjacency=scipy_to_torch_csr(sym_norm_adjacency(data.train)),
            train_interactions=scipy_to_torch_csr(data.train),
            item_item=item_item,
            features={name: torch.from_numpy(features) for name, features in data.features.items()},
        )
        self.train_set = BPRTriplets(data.train, self.train_batch_size, seed=self.seed)
        users = self.eval_users_per_batch()
        self._ranking = {
            "valid": RankingBatches.for_split(data.train, data.valid, users),
            "test": RankingBatches.for_split(data.train + data.valid, data.test, users),
        }

    def eval_users_per_batch(self) -> int:
        """Users per full-ranking batch: ``eval_batch_size``, or with ``auto`` as many as fit
        ``AUTO_EVAL_COPIES`` float32 rows of n_items per user into ``AUTO_EVAL_SHARE`` of the memory available
        now on the device the trainer evaluates on (the host without a trainer); under several processes the
        smallest of their sizes, so that all of them cut the users into the same batches."""
        if self.eval_batch_size != "auto":
            return int(self.eval_batch_size)
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        free = available_memory_bytes(device)
        users = int(min(AUTO_EVAL_MAX_USERS, max(1, AUTO_EVAL_SHARE * free // (AUTO_EVAL_COPIES * 4 * self.n_items))))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # every process must cut the users into the same batches (ShardedBatches deals them out by index)
            agreed = torch.tensor(users, device=device)
            torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN)
            users = int(agreed)
        log.info("eval_batch_size auto: %d users per ranking batch (%.1f GB available on %s, %d items)",
                 users, free / 1e9, device, self.n_items)
        return users

    def reseed_train_sampling(self, epoch: int, rank: int) -> None:
        """Called at each epoch start: negatives become a function of (seed, epoch, rank)."""
        if self.train_set is not None:
            self.train_set.reseed(epoch, rank)

    # ---- loaders ----
    def train_dataloader(self) -> DataLoader:
        # each element is already a batch (shuffled by the dataset, see BPRTriplets)
        return DataLoader(self.train_set, batch_size=None, shuffle=False, generator=self._loader_generator())

    def _ranking_loader(self, batches: RankingBatches) -> DataLoader:
        """Full-ranking batches in order; under several processes each batch goes to one process only
        (:class:`ShardedBatches`), so the summed metrics equal a single process's."""
        trainer = self.trainer
        sampler = None
        if trainer is not None and trainer.world_size > 1:
            sampler = ShardedBatches(batches, num_replicas=trainer.world_size, rank=trainer.global_rank)
        return DataLoader(batches, batch_size=None, shuffle=False, sampler=sampler, generator=self._loader_generator())

    def _loader_generator(self) -> torch.Generator:
        """Each loader's own generator: a loader's iterator draws its base seed from it instead of from the
        global random state, which the models' dropout and noise use, so a run resumed from a checkpoint
        draws the same model randomness as the uninterrupted run."""
        return torch.Generator().manual_seed(self.seed)

    def val_dataloader(self) -> DataLoader:
        return self._ranking_loader(self._ranking["valid"])

    def test_dataloader(self) -> DataLoader:
        return self._ranking_loader(self._ranking["test"])

    def predict_dataloader(self) -> DataLoader:
        users = np.arange(self.data.n_users, dtype=np.int64)
        return self._ranking_loader(RankingBatches(users, self.data.train, None, self.eval_users_per_batch()))
