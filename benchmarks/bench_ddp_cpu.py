"""Benchmark: training epoch time of one process against a 2-process DDP run (gloo) on the same CPU.

Runs ``python -m lit_mmrec fit`` twice for the given config, validation off, and reads the
per-epoch ``train/epoch_seconds`` (DDP: the mean over processes) from the CSV log:

* 1 process, ``--threads`` torch threads (default: every core);
* ``--processes`` DDP processes (strategy ``ddp``, gloo), ``threads / processes`` threads each,
  so both runs use the same cores.

    LIT_MMREC_DATA=/path/to/shared/data python benchmarks/bench_ddp_cpu.py \
        --config configs/experiment/lightgcn_baby.yaml --epochs 4

Extra arguments after ``--`` go to ``lit_mmrec fit``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run(config: str, epochs: int, processes: int, threads: int, extra: list[str], root: Path) -> list[float]:
    out = root / f"p{processes}"
    strategy = ["--trainer.strategy=ddp", f"--trainer.devices={processes}"] if processes > 1 else \
        ["--trainer.strategy=auto", "--trainer.devices=1"]
    command = [sys.executable, "-m", "lit_mmrec", "fit", "--config", config, "--trainer.accelerator=cpu", *strategy,
               f"--trainer.max_epochs={epochs}", "--trainer.limit_val_batches=0", "--test_after_fit=false",
               "--checkpoint.monitor=null", "--early_stopping.strict=false", "--early_stopping.patience=100000",
               "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={out}",
               "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.init_args.save_dir={out}",
               *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "WANDB_MODE": "disabled"}
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with (out / "lightning_logs" / "version_0" / "metrics.csv").open() as handle:
        return [float(row["train/epoch_seconds"]) for row in csv.DictReader(handle) if row.get("train/epoch_seconds")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="cores to use in both runs")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    root = Path(tempfile.mkdtemp(prefix="lit_mmrec_ddp_bench_"))
    report = {"config": args.config, "cores": args.threads, "extra": extra}
    for processes in (1, args.processes):
        seconds = run(args.config, args.epochs, processes, max(1, args.threads // processes), extra, root)
        report[f"{processes}_process_epoch_seconds"] = [round(s, 3) for s in seconds]
        report[f"{processes}_process_median_after_first"] = round(statistics.median(seconds[1:] or seconds), 3)
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
