"""The base LightningModule of every recommender: BPR training, full-ranking scoring, injected optimizer."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from lit_mmrec.data.graphs import RecGraphs
from lit_mmrec.data.sampling import RankingBatch
from lit_mmrec.metrics.ranking import mask_scores, top_k_items
from lit_mmrec.models.components import bpr_loss, gather_rows, inner_product_scores, l2_regularisation


def user_item_table(n_users: int, n_items: int, dim: int) -> torch.nn.Parameter:
    """One learnable [n_users + n_items, dim] table (users first), each half Xavier-uniform as in MMRec."""
    table = torch.empty(n_users + n_items, dim)
    torch.nn.init.xavier_uniform_(table[:n_users])
    torch.nn.init.xavier_uniform_(table[n_users:])
    return torch.nn.Parameter(table)


def gather_batch(table: torch.Tensor, n_users: int, users: torch.Tensor, positives: torch.Tensor,
                 negatives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows ``(users, positives, negatives)`` of a users-then-items ``table``, gathered at once.

    One gather instead of three (and none through the table's user/item slices) means one full-table
    gradient buffer in backward instead of three plus the slices' own.
    """
    rows = torch.cat([users, positives + n_users, negatives + n_users])
    u, p, n = gather_rows(table, rows).split(users.shape[0])
    return u, p, n


def default_adam(parameters) -> torch.optim.Optimizer:
    """Adam(lr=1e-3), fused into one kernel per step (CPU and CUDA)."""
    return torch.optim.Adam(parameters, lr=1e-3, fused=True)


class RecommenderModule(L.LightningModule):
    """Shared training and evaluation logic; subclasses define ``forward`` and, if needed, extra losses.

    ``forward()`` returns the final user and item representations ``([n_users, d], [n_items, d])``;
    a score is their inner product. Training minimises ``training_losses`` (by default BPR plus
    ``reg_weight`` times the L2 norm of the batch's input embeddings); every entry of that dict is
    logged separately as ``train/<name>_loss``.

    Graphs, features and the training matrix come from the data module at ``setup`` (as
    ``self.graphs``, a :class:`RecGraphs` on the training device); they are not part of checkpoints.

    Args:
        n_users: number of users (linked from the data module).
        n_items: number of items (linked from the data module).
        n_users, n_items: linked from the data module by the CLI.
        feature_dims: widths of the item feature modalities (linked from the data module);
            ID-only models ignore it.
        reg_weight: weight of the L2 regulariser on the batch's input embeddings.
        optimizer: optimizer factory (``class_path``/``init_args`` in YAML); Adam(lr=1e-3) by default.
        scheduler: optional learning-rate scheduler factory, stepped per epoch.

    Models that read item features set ``requires_features = True``: they refuse to be built without a
    modality, and to be set up on data whose modalities differ from those they were built for.
    """

    requires_features: bool = False

    def __init__(
        self,
        n_users: int,
        n_items: int,
        feature_dims: dict[str, int] | None = None,
        reg_weight: float = 1e-4,
        optimizer: OptimizerCallable = default_adam,
        scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.n_users = n_users
        self.n_items = n_items
        self.feature_dims = dict(feature_dims or {})
        if self.requires_features and not self.feature_dims:
            raise ValueError(f"{type(self).__name__} needs at least one item feature modality; the data module "
                             f"provided none (put <modality>_feat.npy files beside the interactions)")
        self.reg_weight = reg_weight
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.graphs: RecGraphs | None = None
        self._ranking_cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self._epoch_losses: dict[str, tuple[torch.Tensor, int]] = {}  # name -> (sum over examples, examples)

    # ---- data ----
    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if datamodule is None or getattr(datamodule, "graphs", None) is None:
            raise RuntimeError(
                f"{type(self).__name__} needs a RecDataModule (its graphs) to train or evaluate; "
                f"pass one to the Trainer or run through `lit_mmrec`"
            )
        graphs: RecGraphs = datamodule.graphs
        if (graphs.n_users, graphs.n_items) != (self.n_users, self.n_items):
            raise ValueError(
                f"model was built for {self.n_users} users x {self.n_items} items but the data has "
                f"{graphs.n_users} x {graphs.n_items}; use the checkpoint with the dataset it was trained on"
            )
        self.check_data_modalities(graphs)
        self.graphs = graphs.to(self.trainer.strategy.root_device)
        self.on_graphs_ready()

    def check_data_modalities(self, graphs: RecGraphs) -> None:
        """For models that read item features: the data's modalities and widths, in order, must be the
        ones the model was built for."""
        data_dims = {m: int(f.shape[1]) for m, f in graphs.features.items()}
        if self.requires_features and list(data_dims.items()) != list(self.feature_dims.items()):
            raise ValueError(f"{type(self).__name__} was built for modalities {self.feature_dims} but the data has "
                             f"{data_dims}; select the same ones with --data.modalities")

    def on_graphs_ready(self) -> None:
        """Hook for subclasses that derive tensors from ``self.graphs`` once per setup."""

    # ---- raw item features as trainable tables (MMRec loads them as unfrozen embeddings) ----
    def init_feature_tables(self, finetune: bool) -> None:
        """With ``finetune``, the raw item features become trainable tables ``features[m]`` [n_items, d_m]
        (part of the checkpoints), filled from the data at the first setup by :meth:`fill_feature_tables`;
        without it :meth:`feature_table` reads the data's fixed features."""
        self.finetune_features = finetune
        if finetune:
            self.features = torch.nn.ParameterDict({m: torch.nn.Parameter(torch.zeros(self.n_items, d))
                                                    for m, d in self.feature_dims.items()})
            self.register_buffer("features_filled", torch.tensor(False))

    def fill_feature_tables(self) -> None:
        """Copies the data's features into the trainable tables, once: restored weights hold fine-tuned ones."""
        if self.finetune_features and not bool(self.features_filled):
            with torch.no_grad():
                for m, table in self.features.items():
                    table.copy_(self.graphs.features[m])
                self.features_filled.fill_(True)

    def feature_table(self, modality: str) -> torch.Tensor:
        """Modality ``modality``'s item features [n_items, d_m]: the trainable table, or the data's fixed ones."""
        return self.features[modality] if self.finetune_features else self.graphs.features[modality]

    # ---- model ----
    @abstractmethod
    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user [n_users, d] and item [n_items, d] representations."""

    def input_table(self) -> torch.Tensor | None:
        """The learnable input embeddings as one users-then-items table [n_users + n_items, d], for
        models that keep them so (graph models propagate such a table); ``None`` otherwise."""
        return None

    def input_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The learnable user and item embedding tables that L2 regularisation applies to; by default
        the two parts of :meth:`input_table`. Models without a joint table override this."""
        table = self.input_table()
        if table is None:
            raise NotImplementedError(f"{type(self).__name__} must define input_table or input_embeddings")
        return table[: self.n_users], table[self.n_users :]

    def training_losses(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor
                        ) -> dict[str, torch.Tensor]:
        """Named, already weighted loss terms for one BPR batch; their sum is minimised."""
        user_repr, item_repr = self()
        return self.bpr_and_reg(gather_rows(user_repr, users), gather_rows(item_repr, positives),
                                gather_rows(item_repr, negatives), users, positives, negatives)

    def bpr_and_reg(self, u: torch.Tensor, p: torch.Tensor, n: torch.Tensor, users: torch.Tensor,
                    positives: torch.Tensor, negatives: torch.Tensor) -> dict[str, torch.Tensor]:
        """BPR on the batch's final representations ``u, p, n`` [B, d] and, with ``reg_weight`` > 0,
        L2 on the rows of the input embedding tables they came from (:meth:`input_rows`)."""
        losses = {"bpr": bpr_loss((u * p).sum(dim=1), (u * n).sum(dim=1))}
        if self.reg_weight > 0:
            losses["reg"] = self.reg_weight * l2_regularisation(*self.input_rows(users, positives, negatives))
        return losses

    def input_rows(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch's rows of the input embedding tables (what L2 regularisation applies to); from a
        joint :meth:`input_table` in one gather (:func:`gather_batch`: one full-table gradient instead of
        three)."""
        table = self.input_table()
        if table is not None:
            return gather_batch(table, self.n_users, users, positives, negatives)
        user_table, item_table = self.input_embeddings()
        return gather_rows(user_table, users), gather_rows(item_table, positives), gather_rows(item_table, negatives)

    # ---- training ----
    def on_train_epoch_start(self) -> None:
        self.trainer.datamodule.reseed_train_sampling(self.current_epoch, self.global_rank)
        self._epoch_losses = {}

    def epoch_generator(self, epoch: int) -> torch.Generator:
        """A generator on the model's device seeded by the data module's seed and ``epoch`` only, so every
        DDP process draws the same per-epoch graph (DASRec's edge dropout, FREEDOM's edge pruning)."""
        seed = getattr(self.trainer.datamodule, "seed", 0) if self._trainer is not None else 0
        generator = torch.Generator(device=self.device)
        generator.manual_seed(int(seed) * 1_000_003 + epoch)
        return generator

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        users, positives, negatives = batch  # [3, B]
        losses = self.training_losses(users, positives, negatives)
        total = torch.stack(list(losses.values())).sum()
        batch_size = users.shape[0]
        # Epoch means are accumulated here and logged once per epoch: each `self.log` call costs Lightning
        # about a millisecond of bookkeeping, several per step were a tenth of a LightGCN epoch on Baby.
        for name, value in (("loss", total), *((f"{n}_loss", v) for n, v in losses.items())):
            weighted = value.detach() * batch_size
            previous, examples = self._epoch_losses.get(name, (0.0, 0))
            self._epoch_losses[name] = (previous + weighted, examples + batch_size)
        self.log("train/loss_step", total.detach(), on_step=True, on_epoch=False, prog_bar=True,
                 batch_size=batch_size)
        return total

    def on_train_epoch_end(self) -> None:
        """Logs ``train/loss_epoch`` and each ``train/<term>_loss``: the mean over the epoch's examples
        (of the batches that had the term), averaged over the processes under DDP. Nothing when the
        epoch ran no step here (a run resumed from a checkpoint written after the epoch's last batch)."""
        self.log_dict({("train/loss_epoch" if name == "loss" else f"train/{name}"): total / examples
                       for name, (total, examples) in self._epoch_losses.items()}, sync_dist=True)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups; a group's ``lr_scale`` multiplies the optimizer's learning rate
        for it. One group of every parameter here; models whose parts learn at their own rate override this."""
        return [{"params": list(self.parameters())}]

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameter_groups())
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer),
                                                         "interval": "epoch"}}

    # ---- full ranking ----
    @torch.no_grad()
    def ranking_representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        """User and item representations [n_users, d], [n_items, d], computed once per evaluation pass."""
        user_repr, item_repr = self()
        return user_repr, item_repr.contiguous()

    def _cache_ranking(self) -> None:
        self._ranking_cache = self.ranking_representations()

    def _drop_ranking(self) -> None:
        self._ranking_cache = None

    def score(self, users: torch.Tensor) -> torch.Tensor:
        """Scores [B, n_items] of every item for a batch of users (inside an evaluation pass)."""
        if self._ranking_cache is None:
            self._cache_ranking()
        user_repr, item_repr = self._ranking_cache
        return inner_product_scores(user_repr[users], item_repr)

    on_validation_epoch_start = _cache_ranking
    on_test_epoch_start = _cache_ranking
    on_predict_epoch_start = _cache_ranking
    on_validation_epoch_end = _drop_ranking
    on_test_epoch_end = _drop_ranking
    on_predict_epoch_end = _drop_ranking

    def validation_step(self, batch: RankingBatch, batch_idx: int) -> torch.Tensor:
        return self.score(batch.users)

    def test_step(self, batch: RankingBatch, batch_idx: int) -> torch.Tensor:
        return self.score(batch.users)

    def predict_step(self, batch: RankingBatch, batch_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k item ids [B, k] per user, training items excluded; k is the data module's ``predict_top_k``."""
        scores = mask_scores(self.score(batch.users), batch.exclude_rows, batch.exclude_cols)
        k = min(self.trainer.datamodule.predict_top_k, self.n_items)
        return batch.users, top_k_items(scores, k)
