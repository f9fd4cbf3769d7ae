"""Benchmark: how each model's time and memory grow with the data, from Amazon Sports' size to 5x Electronics'.

For each model at each scale, one child process (so that its peak memory is its own) builds the model, data
and trainer as ``lit_mmrec fit`` would, from the model's experiment config with the scale's data config in
place of the experiment's, and measures three stages in order:

* ``setup``: the data module's setup (generating the data, the normalised adjacency, the KNN graphs; the
  first model at a scale builds the KNN graphs into ``<output>/cache``, the later ones read them, which the
  table's ``KNN cached`` column says);
* ``epoch``: one training epoch with the model's epoch hooks (graph generation and rebuilds), no validation;
  with ``--train-steps N`` only its first N steps, and the row gives the full epoch's projected seconds:
  the time before the first step (the epoch-start hooks, such as graph generation) plus the mean step time
  times the epoch's number of steps. The epoch is stopped after step N rather than shortened, so that each
  step does a full epoch's step of work (DASRec and DiffMM spread every user's diffusion over the epoch's
  steps: in an epoch cut to 40 steps each step would diffuse 16 times the users);
* ``validation``: one full-ranking validation pass over every validation user.

Each stage reports its seconds and the process's peak RSS so far (``ru_maxrss``: it includes the stages
before). The parent polls the child's RSS and stops it above ``--memory-cap-gb`` or after ``--timeout``
seconds; the row then names the stage that did not finish and why. Rows are appended to
``<output>/scaling.jsonl`` (a (model, scale) already there is skipped, so a run can be continued; a row that
failed with an error is measured again), and every
call rewrites from all rows ``scaling.md`` (the table, and per model the growth exponent: the slope of
log(cost) against log(training interactions) and against log(items), least squares over the scales it
finished) and ``scaling.png`` (log-log, time and memory against interactions and items).

    python benchmarks/scaling.py --models lightgcn dasrec --scales sports electronics --output scaling

Scales are ``configs/data/synthetic_<scale>_scale.yaml`` (``sports``, ``electronics``, ``electronics_5x``) or
any data config path; models are ``configs/experiment/<model>_<experiment>.yaml`` (``--experiment tiktok``,
the committed settings, by default). Extra ``--key value`` arguments after ``--`` go to the CLI parser.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
STAGES = ("setup", "epoch", "validation")
DEFAULT_MODELS = ("bpr", "vbpr", "lightgcn", "freedom", "diffmm", "diffcl", "dasrec", "bm3", "mgcn", "lattice",
                  "lgmrec", "slmrec", "mmgcn", "grcn", "dualgnn", "dragon")


def scale_config(scale: str) -> Path:
    """A data config: a path, or the name of ``configs/data/synthetic_<scale>_scale.yaml``."""
    path = Path(scale)
    if path.suffix in (".yaml", ".yml"):
        return path.resolve()
    return REPO_ROOT / "configs" / "data" / f"synthetic_{scale}_scale.yaml"


def model_config(model: str, experiment: str) -> Path:
    path = Path(model)
    if path.suffix in (".yaml", ".yml"):
        return path.resolve()
    return REPO_ROOT / "configs" / "experiment" / f"{model}_{experiment}.yaml"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


def child(config: Path, data: Path, extra: list[str], train_steps: int = 0) -> None:
    """Runs the three stages, printing one JSON line per finished stage; with ``train_steps`` the epoch stops
    after that many steps."""
    import lightning as L
    import torch

    class StepClock(L.Callback):
        """When the first training step starts and when the last one ended."""

        first: float | None = None
        last: float | None = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if self.first is None:
                self.first = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.last = time.perf_counter()
            if train_steps and batch_idx + 1 >= train_steps:
                trainer.should_stop = True

    from lit_mmrec.lightning_cli import build_cli
    from lit_mmrec.runtime import keep_freed_memory_for_reuse

    def report(stage: str, seconds: float, **more) -> None:
        print(json.dumps({"stage": stage, "seconds": round(seconds, 3), "peak_rss_gb": round(peak_rss_gb(), 3),
                          **more}), flush=True)

    keep_freed_memory_for_reuse()  # as the lit_mmrec command does
    out_dir = tempfile.mkdtemp(prefix="lit_mmrec_scaling_")
    cli = build_cli(["--config", str(config), "--data", str(data), "--trainer.default_root_dir", out_dir,
                     "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                     "--trainer.enable_model_summary", "false", "--trainer.max_epochs", "1",
                     "--trainer.limit_val_batches", "0", *extra], run=False)
    trainer: L.Trainer = cli.trainer
    evaluators = [cb for cb in trainer.callbacks if type(cb).__name__ == "RankingEvaluator"]
    clock = StepClock()
    trainer.callbacks = [*evaluators, clock]
    start = time.perf_counter()
    cli.datamodule.setup("fit")
    graphs = cli.datamodule.graphs
    report("setup", time.perf_counter() - start, users=graphs.n_users, items=graphs.n_items,
           interactions=int(graphs.train_interactions._nnz()), threads=torch.get_num_threads())
    epoch_steps = len(cli.datamodule.train_dataloader())
    start = time.perf_counter()
    trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds, steps = time.perf_counter() - start, int(trainer.global_step)
    more = {}
    if steps < epoch_steps and clock.first is not None and clock.last is not None:
        per_step = (clock.last - clock.first) / steps
        more = {"epoch_seconds_projected": round(clock.first - start + per_step * epoch_steps, 3)}
    report("epoch", seconds, steps=steps, epoch_steps=epoch_steps, **more)
    validator = L.Trainer(accelerator=trainer.accelerator, devices=1, logger=False, enable_progress_bar=False,
                          enable_model_summary=False, callbacks=evaluators)
    start = time.perf_counter()
    metrics = validator.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    report("validation", time.perf_counter() - start, recall20=round(float(metrics.get("val/recall@20", math.nan)), 4))


def rss_gb(pid: int) -> float:
    """Resident memory of a live process and its children, from /proc (0 when it has gone)."""
    try:
        pids = [pid, *map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
    except OSError:
        return 0.0
    total = 0
    for one in pids:
        try:
            total += int(next(line for line in Path(f"/proc/{one}/status").read_text().splitlines()
                              if line.startswith("VmRSS:")).split()[1])
        except (OSError, StopIteration):
            pass
    return total / 1024**2


def measure(model: str, scale: str, args: argparse.Namespace, extra: list[str]) -> dict:
    """One (model, scale) row from a child process, with the stage it stopped at if it did not finish."""
    config, data = model_config(model, args.experiment), scale_config(scale)
    for path, what in ((config, "--models / --experiment"), (data, "--scales")):
        if not path.is_file():
            raise SystemExit(f"scaling: {path} does not exist; check {what}")
    cache = args.output / "cache" / data.stem  # the first model at a scale builds the KNN graphs, later ones read them
    cached = cache.is_dir() and any(cache.iterdir())
    steps = str(getattr(args, "train_steps", None) or 0)
    command = [sys.executable, __file__, "--child", str(config), str(data), steps, "--", f"--data.cache_dir={cache}",
               *extra]
    row: dict = {"model": model, "scale": scale, "config": str(config.relative_to(REPO_ROOT)
                 if config.is_relative_to(REPO_ROOT) else config), "status": "finished", "knn_cached": cached}
    start, rss_seen = time.monotonic(), 0.0
    with tempfile.TemporaryFile("w+") as log:
        # the experiment's own data config is replaced by the scale's, so the folder it names is never read
        env = {"LIT_MMREC_DATA": str(args.output), **os.environ}
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
        reader.start()
        while process.poll() is None:
            rss_seen = max(rss_seen, rss_gb(process.pid))
            if rss_seen > args.memory_cap_gb:
                process.kill()
                row["status"] = f"stopped: resident memory above {args.memory_cap_gb} GB"
            elif time.monotonic() - start > args.timeout:
                process.kill()
                row["status"] = f"stopped: over {args.timeout:.0f} s"
            time.sleep(0.2)
        reader.join()
        for line in lines:
            if line.startswith("{"):
                stage = json.loads(line)
                name = stage.pop("stage")
                row[f"{name}_seconds"], row[f"{name}_peak_gb"] = stage.pop("seconds"), stage.pop("peak_rss_gb")
                row.update(stage)
        if row["status"] == "finished" and process.returncode != 0:
            log.seek(0)
            tail = log.read().strip().splitlines()[-3:]
            row["status"] = f"failed (exit {process.returncode}): {' | '.join(tail)}"
    done = [stage for stage in STAGES if f"{stage}_seconds" in row]
    if len(done) < len(STAGES):
        row["stopped_in"] = STAGES[len(done)]
        row["status"] = row["status"] if row["status"] != "finished" else "failed"
    row["polled_peak_gb"] = round(rss_seen, 3)
    row["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    return row


def growth_exponent(x: list[float], y: list[float]) -> float:
    """The least-squares slope of log(y) against log(x); NaN with fewer than two distinct x."""
    if len(set(x)) < 2:
        return math.nan
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


COLUMNS = (("setup_seconds", "setup s"), ("setup_peak_gb", "setup peak GB"), ("epoch_seconds", "epoch s"),
           ("steps", "steps"), ("full_epoch_seconds", "full epoch s"), ("epoch_peak_gb", "epoch peak GB"),
           ("validation_seconds", "validation s"), ("validation_peak_gb", "validation peak GB"))


def with_full_epoch(row: dict) -> dict:
    """The row with ``full_epoch_seconds``: the measured epoch, or its projection where only part of it ran."""
    if "epoch_seconds" not in row:
        return row
    steps, of = row.get("steps"), row.get("epoch_steps")
    full = row.get("epoch_seconds_projected", row["epoch_seconds"])
    return {**row, "full_epoch_seconds": full, "steps": f"{steps:,} of {of:,}" if steps and of and steps < of else steps}


def write_outputs(rows: list[dict], output: Path) -> None:
    """``scaling.md`` (table and growth exponents) and ``scaling.png`` from every row so far."""
    def cell(value) -> str:
        if value is None or isinstance(value, str):
            return value or ""
        return f"{value:,}" if isinstance(value, int) else f"{value:.2f}"

    rows = [with_full_epoch(row) for row in rows]

    lines = ["| model | scale | users | items | training interactions | KNN cached | "
             + " | ".join(n for _, n in COLUMNS) + " | status |", "|" + "---|" * (7 + len(COLUMNS))]
    for row in rows:
        lines.append("| " + " | ".join([row["model"], row["scale"], *[cell(row.get(k)) for k in
                                        ("users", "items", "interactions")], "yes" if row.get("knn_cached") else "no",
                                        *[cell(row.get(k)) for k, _ in COLUMNS], row["status"]]) + " |")
    lines += ["", "Growth exponents (slope of log cost against log training interactions / log items, over the "
              "scales each model finished; a partial epoch counts by its projection):", "",
              "| model | full epoch s | epoch peak GB | validation s | setup s |",
              "|---|---|---|---|---|"]
    by_model: dict[str, list[dict]] = {}
    for row in rows:
        if "items" in row:
            by_model.setdefault(row["model"], []).append(row)
    for model, runs in by_model.items():
        cells = []
        for key in ("full_epoch_seconds", "epoch_peak_gb", "validation_seconds", "setup_seconds"):
            done = [r for r in runs if key in r]
            slopes = [growth_exponent([r[axis] for r in done], [r[key] for r in done])
                      for axis in ("interactions", "items")]
            cells.append(" / ".join("" if math.isnan(s) else f"{s:.2f}" for s in slopes))
        lines.append("| " + " | ".join([model, *cells]) + " |")
    (output / "scaling.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("scaling: matplotlib is not installed (pip install matplotlib); no plot written")
        return
    figure, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    for model, runs in by_model.items():
        for i, key in enumerate(("full_epoch_seconds", "epoch_peak_gb")):
            for j, axis in enumerate(("interactions", "items")):
                done = sorted((r[axis], r[key]) for r in runs if key in r)
                if done:
                    axes[i, j].loglog(*zip(*done), marker="o", label=model)
    for i, label in enumerate(("seconds per training epoch", "peak RSS after the epoch (GB)")):
        for j, axis in enumerate(("training interactions", "items")):
            axes[i, j].set(xlabel=axis, ylabel=label)
    axes[0, 0].legend(fontsize="x-small", ncol=2)
    figure.tight_layout()
    figure.savefig(output / "scaling.png", dpi=120)
    plt.close(figure)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        config, data, steps, *rest = sys.argv[2:]
        child(Path(config), Path(data), [a for a in rest if a != "--"], int(steps))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                        help="model names (configs/experiment/<name>_<experiment>.yaml) or experiment configs")
    parser.add_argument("--experiment", default="tiktok", help="the experiment whose model settings are used")
    parser.add_argument("--scales", nargs="+", default=["sports", "electronics", "electronics_5x"],
                        help="scale names (configs/data/synthetic_<scale>_scale.yaml) or data configs")
    parser.add_argument("--output", type=Path, required=True, help="folder of scaling.jsonl, .md and .png")
    parser.add_argument("--memory-cap-gb", type=float, default=20.0, help="stop a child above this RSS")
    parser.add_argument("--timeout", type=float, default=3600.0, help="stop a child after this many seconds")
    parser.add_argument("--train-steps", type=int, default=None,
                        help="time only the epoch's first N steps and project the full epoch from them")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    args.output.mkdir(parents=True, exist_ok=True)
    store = args.output / "scaling.jsonl"
    rows = [json.loads(line) for line in store.read_text().splitlines()] if store.is_file() else []
    for scale in args.scales:
        for model in args.models:
            earlier = [r for r in rows if r["model"] == model and r["scale"] == scale]
            if earlier and not earlier[-1]["status"].startswith("failed"):
                continue  # finished, or stopped by the memory cap or the timeout; a failed row is measured again
            row = measure(model, scale, args, extra)
            print(json.dumps(row), flush=True)
            rows = [r for r in rows if not (r["model"] == model and r["scale"] == scale)] + [row]
            store.write_text("".join(json.dumps(r) + "\n" for r in rows))
            write_outputs(rows, args.output)
    write_outputs(rows, args.output)


if __name__ == "__main__":
    main()
