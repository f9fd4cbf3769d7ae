"""Benchmark: seconds per training epoch, seconds per full-ranking validation pass, and peak memory.

Builds the model, data and trainer from a lit_mmrec config exactly as ``lit_mmrec fit`` would,
then times a few training epochs (validation off) and a few ``trainer.validate`` passes.

    LIT_MMREC_DATA=/path/to/shared/data python benchmarks/bench_training.py \
        --config configs/experiment/lightgcn_baby.yaml --epochs 5 --val-passes 3

Extra ``--key value`` arguments after ``--`` are passed to the CLI parser (e.g. ``-- --trainer.accelerator gpu``).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from lit_mmrec.lightning_cli import build_cli
from lit_mmrec.runtime import keep_freed_memory_for_reuse


class EpochTimer(Callback):
    """Wall-clock seconds of each training epoch (sampling, forward, backward, optimizer; no validation)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._sync(pl_module)
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._sync(pl_module)
        self.seconds.append(time.perf_counter() - self._start)

    @staticmethod
    def _sync(pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


def main() -> None:
    keep_freed_memory_for_reuse()  # as the lit_mmrec command does
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--val-passes", type=int, default=3)
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]

    out_dir = tempfile.mkdtemp(prefix="lit_mmrec_bench_")
    cli = build_cli(
        ["--config", args.config, "--trainer.default_root_dir", out_dir, "--trainer.logger", "false",
         "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false", "--trainer.max_epochs", str(args.epochs),
         "--trainer.limit_val_batches", "0", *extra],
        run=False,
    )
    timer = EpochTimer()
    trainer: L.Trainer = cli.trainer
    trainer.callbacks = [cb for cb in trainer.callbacks if type(cb).__name__ in ("RankingEvaluator",)] + [timer]
    t0 = time.perf_counter()
    cli.datamodule.setup("fit")
    setup_seconds = time.perf_counter() - t0
    trainer.fit(cli.model, datamodule=cli.datamodule)

    validator = L.Trainer(accelerator=trainer.accelerator, devices=1, logger=False, enable_progress_bar=False,
                          enable_model_summary=False, callbacks=[cb for cb in trainer.callbacks
                                                                  if type(cb).__name__ == "RankingEvaluator"])
    val_seconds, metrics = [], {}
    for _ in range(args.val_passes + 1):
        start = time.perf_counter()
        metrics = validator.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0]
        val_seconds.append(time.perf_counter() - start)

    steady = timer.seconds[1:] or timer.seconds
    report = {
        "config": args.config,
        "extra": extra,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "device": str(cli.model.device),
        "setup_seconds": round(setup_seconds, 3),
        "epoch_seconds_all": [round(s, 3) for s in timer.seconds],
        "epoch_seconds_median_after_first": round(statistics.median(steady), 3),
        "val_pass_seconds_all": [round(s, 3) for s in val_seconds],
        "val_pass_seconds_median_after_first": round(statistics.median(val_seconds[1:] or val_seconds), 3),
        "peak_rss_gb": round(peak_rss_gb(), 3),
        "val_recall@20_after_training": round(float(metrics.get("val/recall@20", float("nan"))), 4),
    }
    if torch.cuda.is_available():
        report["peak_cuda_gb"] = round(torch.cuda.max_memory_allocated() / 1024**3, 3)
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
