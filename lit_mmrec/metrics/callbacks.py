"""Callbacks that turn a model's full-ranking scores into logged metrics and written recommendations."""

from __future__ import annotations

import logging
import random
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, ModelCheckpoint
from torchmetrics.utilities.distributed import gather_all_tensors

from lit_mmrec.compat import save_last_checkpoint
from lit_mmrec.data.sampling import RankingBatch
from lit_mmrec.metrics.ranking import (
    METRIC_NAMES,
    TopKRankingMetrics,
    ranked_hits,
    ranking_metrics_per_user,
)

log = logging.getLogger(__name__)


class RankingEvaluator(Callback):
    """Full-ranking evaluation on validation and test: logs ``val/recall@20``, ``test/ndcg@10``, ...

    The model's ``validation_step``/``test_step`` returns raw scores [B, n_items] for a
    :class:`RankingBatch`; this callback masks the items the user already has, takes the top
    ``max(ks)``, looks the held-out items up with ``gather`` and accumulates
    :class:`TopKRankingMetrics`. It also logs the best validation value of ``monitor`` so far
    (``val/recall@20_best``) and the epoch it came from (``val/best_epoch``). ``ks`` defaults to
    MMRec's cut-offs 5, 10, 20 and 50.
    """

    def __init__(self, ks: list[int] | None = None, monitor: str = "recall@20") -> None:
        self.ks = sorted(set(ks or [5, 10, 20, 50]))
        available = [f"{name}@{k}" for name in METRIC_NAMES for k in self.ks]
        if monitor not in available:
            raise ValueError(f"evaluation monitor {monitor!r} is not computed; choose one of {available} "
                             f"or add its cut-off to `ks`")
        self.monitor = monitor
        self.metrics = {stage: TopKRankingMetrics(self.ks) for stage in ("val", "test")}
        self.best_value = -float("inf")
        self.best_epoch = -1

    def _start(self, stage: str, pl_module: L.LightningModule) -> None:
        self.metrics[stage] = self.metrics[stage].to(pl_module.device)
        self.metrics[stage].reset()

    def _update(self, stage: str, scores: torch.Tensor, batch: RankingBatch) -> None:
        metric = self.metrics[stage]
        metric.update(ranked_hits(scores, batch, metric.max_k), batch.n_targets)

    def _finish(self, stage: str, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        results = {f"{stage}/{name}": value for name, value in self.metrics[stage].compute().items()}
        # already reduced across processes by the metric, so identical everywhere: the mean over
        # processes (sync_dist) returns them bit for bit and keeps every process's callbacks in step
        pl_module.log_dict(results, sync_dist=True)
        return {name: float(value) for name, value in results.items()}

    # validation
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start("val", pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update("val", outputs, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        results = self._finish("val", trainer, pl_module)
        if trainer.sanity_checking:
            return
        current = results[f"val/{self.monitor}"]
        if current > self.best_value:
            self.best_value, self.best_epoch = current, trainer.current_epoch
        pl_module.log(f"val/{self.monitor}_best", self.best_value, prog_bar=True, sync_dist=True)
        pl_module.log("val/best_epoch", float(self.best_epoch), sync_dist=True)

    # test
    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start("test", pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update("test", outputs, batch)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish("test", trainer, pl_module)

    def state_dict(self) -> dict:
        return {"best_value": self.best_value, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best_value = state_dict["best_value"]
        self.best_epoch = state_dict["best_epoch"]


class PerUserMetrics(Callback):
    """Each user's Recall/NDCG/Precision/Hit at ``k`` in the latest validation and test pass.

    ``results["val"]`` (or ``"test"``) maps ``users`` and every metric name to a tensor [n_evaluated],
    sorted by user id, so that two runs on the same split pair up user by user (``lit_mmrec compare``).
    The per-user values are the ones :class:`RankingEvaluator` averages. Under DDP every process scores
    its own share of the users; at the end of a pass the shares are gathered, so every process holds
    the results of all users. With ``output_dir`` set, rank 0 also writes them to
    ``<output_dir>/per_user_<stage>@<k>.csv`` (``userID`` then one column per metric), overwritten by
    every pass, e.g. ``--trainer.callbacks+=lit_mmrec.metrics.PerUserMetrics
    --trainer.callbacks.output_dir=/abs/path``.
    """

    def __init__(self, k: int = 20, output_dir: str | None = None) -> None:
        if k < 1:
            raise ValueError(f"k must be a positive cut-off, got {k}")
        self.k = k
        self.output_dir = Path(output_dir).expanduser() if output_dir is not None else None
        self.results: dict[str, dict[str, torch.Tensor]] = {}
        self._parts: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _start(self, *_) -> None:
        self._parts = []

    def _update(self, scores: torch.Tensor, batch: RankingBatch) -> None:
        per_user = ranking_metrics_per_user(ranked_hits(scores, batch, self.k), batch.n_targets, self.k)
        self._parts.append((batch.users, torch.stack([per_user[name] for name in METRIC_NAMES], dim=1)))

    def _finish(self, stage: str, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        device = pl_module.device
        users = torch.cat([u.to(device) for u, _ in self._parts]) if self._parts else \
            torch.zeros(0, dtype=torch.long, device=device)
        values = torch.cat([v.to(device) for _, v in self._parts]) if self._parts else \
            torch.zeros(0, len(METRIC_NAMES), device=device)
        self._parts = []
        if trainer.world_size > 1:  # shares differ in size: gathered padded, then trimmed
            users = torch.cat(gather_all_tensors(users.contiguous()))
            values = torch.cat(gather_all_tensors(values.float().contiguous()))
        order = users.argsort()
        users, values = users[order].cpu(), values[order].cpu()
        self.results[stage] = {"users": users} | {name: values[:, j] for j, name in enumerate(METRIC_NAMES)}
        if self.output_dir is not None and trainer.is_global_zero:
            self._write(self.output_dir / f"per_user_{stage}@{self.k}.csv", self.results[stage])

    @staticmethod
    def _write(path: Path, results: dict[str, torch.Tensor]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        table = np.column_stack([results["users"].numpy()] + [results[name].double().numpy() for name in METRIC_NAMES])
        np.savetxt(path, table, fmt=["%d"] + ["%.8g"] * len(METRIC_NAMES), delimiter=",",
                   header=",".join(["userID", *METRIC_NAMES]), comments="")

    on_validation_epoch_start = on_test_epoch_start = _start

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(outputs, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(outputs, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish("val", trainer, pl_module)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish("test", trainer, pl_module)


class BestAndLastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` is the state at the end of the latest training epoch.

    Lightning >= 2.6 rewrites ``last.ckpt`` only when a new top-k checkpoint is saved, so after a few
    epochs without improvement ``last.ckpt`` lags behind and a resumed run would repeat them. Here,
    with ``save_last``, every training epoch's end also writes ``last.ckpt`` (all processes call this;
    only rank 0 writes). It is written there, after the epoch's validation, and not at validation end:
    a checkpoint from inside the epoch makes a resumed run re-enter that epoch's end without its
    validation metrics, which early stopping then cannot find. Everything else (best-k selection,
    ``ckpt_path="best"``) is unchanged.
    """

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        # Lightning's own saving rules (fit only, no sanity check or fast_dev_run) and its writer; the
        # skip also covers an epoch whose new best Lightning has just saved, last.ckpt included
        if self.save_last:
            save_last_checkpoint(self, trainer)


class RandomStateCheckpoint(Callback):
    """Saves the random number generators' states (Python, NumPy, torch CPU and CUDA) in every checkpoint
    and restores them when a run resumes, at the start of its first epoch, so that a resumed run draws the
    same dropout masks and diffusion noise as the uninterrupted run would have (the negative sampler is
    already a function of seed and epoch). Under DDP the states of rank 0 are saved and restored on every
    rank: ranks seeded alike stay alike."""

    def __init__(self) -> None:
        self._pending: dict | None = None

    def state_dict(self) -> dict:
        # plain tensors, numbers and tuples only, so checkpoints still load with ``weights_only=True``
        name, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
        state = {"python": random.getstate(), "torch": torch.get_rng_state(),
                 "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss),
                           float(cached))}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = state_dict

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        random.setstate(state["python"])
        name, keys, position, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])


def peak_memory_mb(device: torch.device) -> float:
    """The peak memory so far, in MiB: allocated tensor memory on a CUDA device, else this process's peak
    resident set size (which includes everything the process ran before; NaN where the platform has no
    ``resource`` module)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # Windows
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


class TrainingTelemetry(Callback):
    """Logs each epoch's wall-clock time (``train/epoch_seconds``), learning rate (``train/lr``) and peak
    memory so far (``train/peak_memory_mb``, :func:`peak_memory_mb`).

    A run resumed from a checkpoint written after an epoch's last batch re-enters that epoch at its end
    without starting it; no time is logged for it then.
    """

    def __init__(self) -> None:
        self._start: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is not None:
            pl_module.log("train/epoch_seconds", time.perf_counter() - self._start, sync_dist=True)
            self._start = None
        if trainer.optimizers:
            pl_module.log("train/lr", float(trainer.optimizers[0].param_groups[0]["lr"]), sync_dist=True)
        pl_module.log("train/peak_memory_mb", peak_memory_mb(pl_module.device), reduce_fx="max", sync_dist=True)


class TopKPredictionWriter(BasePredictionWriter):
    """Writes ``lit_mmrec predict`` output: one line per user, ``userID`` then its top-K item ids by rank.

    ``output_path`` defaults to ``<trainer.default_root_dir>/predictions.tsv``; under several
    processes each writes ``<stem>.rank<N><suffix>``.
    """

    def __init__(self, output_path: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_path = output_path
        self._handle = None

    def _path(self, trainer: L.Trainer) -> Path:
        path = Path(self.output_path).expanduser() if self.output_path else Path(trainer.default_root_dir) / "predictions.tsv"
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        return path

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = self._path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = path.open("w", encoding="utf-8")
        self._written_to = path

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        users, items = prediction
        if self._handle.tell() == 0:
            header = "\t".join(["userID"] + [f"top{rank + 1}" for rank in range(items.shape[1])])
            self._handle.write(header + "\n")
        table = torch.cat([users.unsqueeze(1), items], dim=1).cpu().numpy()  # [B, 1 + K]
        np.savetxt(self._handle, table, fmt="%d", delimiter="\t")

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
            log.info("wrote top-k recommendations to %s", self._written_to)
