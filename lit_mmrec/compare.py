"""``lit_mmrec compare``: two trained runs, user by user, on the validation or test split.

Each run is named by the ``config.yaml`` that ``lit_mmrec fit`` saved beside its logs and a checkpoint.
Both are evaluated with the full-ranking path of ``validate`` / ``test`` (one device), their per-user
metrics at ``--k`` are paired by user id, and the difference B - A of each metric's mean is reported with
its standard error, a normal-approximation interval and p-value, and a paired bootstrap interval
(:mod:`lit_mmrec.metrics.significance`)::

    lit_mmrec compare --a <run A>/config.yaml <run A>/checkpoints/best.ckpt \\
                      --b <run B>/config.yaml <run B>/checkpoints/best.ckpt --split val
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch

from lit_mmrec.lightning_cli import cli_for_saved_run
from lit_mmrec.metrics.callbacks import PerUserMetrics
from lit_mmrec.metrics.ranking import METRIC_NAMES
from lit_mmrec.metrics.significance import PairedComparison, paired_comparison


def per_user_metrics(config: Path, checkpoint: Path, split: str, k: int) -> dict[str, torch.Tensor]:
    """Per-user metrics at ``k`` of the run ``config`` with the weights of ``checkpoint`` on ``split``."""
    if not checkpoint.is_file():
        raise SystemExit(f"{checkpoint}: no such file; pass a checkpoint of the run whose config.yaml precedes it")
    collector = PerUserMetrics(k)
    cli = cli_for_saved_run(config, ["--trainer.devices=1", "--trainer.enable_progress_bar=false",
                                     "--trainer.enable_model_summary=false"], extra_callbacks=[collector])
    run = cli.trainer.validate if split == "val" else cli.trainer.test
    run(cli.model, datamodule=cli.datamodule, ckpt_path=str(checkpoint), verbose=False)
    return collector.results[split]


def compare_runs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], metrics: list[str],
                 n_bootstrap: int = 2000, seed: int = 0) -> dict[str, PairedComparison]:
    """Paired comparisons of ``metrics`` between two runs' per-user results on the same users."""
    if not torch.equal(a["users"], b["users"]):
        raise ValueError(f"the runs evaluated different users ({len(a['users'])} and {len(b['users'])}); "
                         f"compare runs trained on the same data and split")
    return {name: paired_comparison(a[name], b[name], n_bootstrap=n_bootstrap, seed=seed) for name in metrics}


def format_table(results: dict[str, PairedComparison], split: str, k: int) -> str:
    first = next(iter(results.values()))
    level = f"{100 * first.confidence:g}%"
    lines = [f"{split} split, {first.n_users} users, @{k}: difference B - A with {level} intervals",
             f"{'metric':<10} {'A':>8} {'B':>8} {'B - A':>8} {'s.e.':>7}  {'normal':<19} {'bootstrap':<19} {'p':>6}"]
    for name, r in results.items():
        lines.append(f"{name:<10} {r.mean_a:8.4f} {r.mean_b:8.4f} {r.difference:+8.4f} {r.standard_error:7.4f}  "
                     f"[{r.normal_low:+.4f}, {r.normal_high:+.4f}] [{r.bootstrap_low:+.4f}, {r.bootstrap_high:+.4f}] "
                     f"{r.p_value:6.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, PairedComparison]:
    parser = argparse.ArgumentParser(prog="lit_mmrec compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", nargs=2, required=True, metavar=("CONFIG", "CHECKPOINT"), type=Path)
    parser.add_argument("--b", nargs=2, required=True, metavar=("CONFIG", "CHECKPOINT"), type=Path)
    parser.add_argument("--split", choices=["val", "test"], default="val")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--metrics", nargs="+", choices=METRIC_NAMES, default=["recall", "ndcg", "precision"])
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the users")
    parser.add_argument("--seed", type=int, default=0, help="the bootstrap's seed")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    a = per_user_metrics(*args.a, args.split, args.k)
    b = per_user_metrics(*args.b, args.split, args.k)
    results = compare_runs(a, b, args.metrics, args.bootstrap, args.seed)
    if args.json:
        print(json.dumps({"split": args.split, "k": args.k, "a": [str(p) for p in args.a],
                          "b": [str(p) for p in args.b]} | {name: asdict(r) for name, r in results.items()}, indent=2))
    else:
        print(format_table(results, args.split, args.k))
    return results
