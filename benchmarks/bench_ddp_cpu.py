"""Benchmark: training epoch time and memory of one process against a 2-process DDP run (gloo) on one CPU.

Runs ``python -m lit_mmrec fit`` twice for the given config, validation off, and reads the
per-epoch ``train/epoch_seconds`` (DDP: the mean over processes) and ``train/peak_memory_mb`` (DDP: the
largest process's peak) from the CSV log:

* 1 process, ``--threads`` torch threads (default: every core);
* ``--processes`` DDP processes (strategy ``ddp``, gloo), ``threads / processes`` threads each,
  so both runs use the same cores.

    LIT_MMREC_DATA=/path/to/shared/data python benchmarks/bench_ddp_cpu.py \
        --config configs/experiment/lightgcn_baby.yaml --epochs 4

Extra arguments after ``--`` go to ``lit_mmrec fit``. ``--allreduce USERS ITEMS DIM`` instead times the
gradient all-reduce that DDP does every step for full ID tables of that size (one float32 [USERS + ITEMS, DIM]
tensor, ``--processes`` gloo processes, median of 10 after 2 warm-up calls):

    python benchmarks/bench_ddp_cpu.py --allreduce 192403 63001 64
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


def run(config: str, epochs: int, processes: int, threads: int, extra: list[str], root: Path
        ) -> tuple[list[float], float]:
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
        rows = list(csv.DictReader(handle))
    return ([float(row["train/epoch_seconds"]) for row in rows if row.get("train/epoch_seconds")],
            max(float(row["train/peak_memory_mb"]) for row in rows if row.get("train/peak_memory_mb")))


def _allreduce_worker(rank: int, processes: int, shape: tuple[int, int], port: int, results) -> None:
    import time

    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=processes)
    torch.set_num_threads(1)
    grad = torch.randn(shape)
    seconds = []
    for _ in range(12):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(grad)
        seconds.append(time.perf_counter() - start)
    if rank == 0:
        results.put(seconds[2:])
    dist.destroy_process_group()


def time_allreduce(users: int, items: int, dim: int, processes: int) -> dict:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.start_processes(_allreduce_worker, args=(processes, (users + items, dim), port, results), nprocs=processes,
                       start_method="spawn")
    seconds = results.get()
    return {"tables": [users, items, dim], "megabytes": round((users + items) * dim * 4 / 1e6, 1),
            "processes": processes, "allreduce_seconds_median": round(statistics.median(seconds), 4),
            "allreduce_seconds_all": [round(s, 4) for s in seconds]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="cores to use in both runs")
    parser.add_argument("--allreduce", type=int, nargs=3, metavar=("USERS", "ITEMS", "DIM"), default=None,
                        help="time the all-reduce of ID tables of this size instead")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    if args.allreduce:
        json.dump(time_allreduce(*args.allreduce, args.processes), sys.stdout, indent=2)
        print()
        return
    if args.config is None:
        parser.error("--config is required (or --allreduce)")
    root = Path(tempfile.mkdtemp(prefix="lit_mmrec_ddp_bench_"))
    report = {"config": args.config, "cores": args.threads, "extra": extra}
    for processes in (1, args.processes):
        seconds, peak = run(args.config, args.epochs, processes, max(1, args.threads // processes), extra, root)
        report[f"{processes}_process_epoch_seconds"] = [round(s, 3) for s in seconds]
        report[f"{processes}_process_peak_memory_mb"] = round(peak)
        report[f"{processes}_process_median_after_first"] = round(statistics.median(seconds[1:] or seconds), 3)
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
