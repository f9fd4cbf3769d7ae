"""What a trained DASRec's denoisers predict, and what its generated modality graphs therefore hold.

Loads a checkpoint written by ``lit_mmrec fit`` (with the run's saved ``config.yaml``, which names the data),
denoises every user's training row as graph generation does (``DASRec.denoised_row_blocks``; by default the
reverse process from the clean row), and reports per modality:

* the distribution of each user's largest prediction (the candidate the default ``graph_top_k: 1`` keeps);
* how many users and edges each ``similarity_threshold`` would keep among the top-k candidates;
* how well the denoiser reconstructs: the median rank of a user's training items in their denoised row
  (1 = first; a denoiser that predicts nothing ranks them at random, around n_items / 2), and the share of
  top-k candidates that are training items.

    LIT_MMREC_DATA=/path/to/shared/data python benchmarks/dasrec_generated_graphs.py \
        --config <run>/lightning_logs/version_0/config.yaml \
        --checkpoint <run>/lightning_logs/version_0/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lit_mmrec.cli import cli_for_saved_run
from lit_mmrec.models import DASRec


@torch.no_grad()
def denoised_row_report(model: DASRec, thresholds: list[float], top_k: int) -> dict:
    quantiles = torch.tensor([0.1, 0.5, 0.9, 0.99, 1.0])
    report = {}
    for modality in model.modalities:
        top_values, top_observed, observed_ranks = [], [], []
        for users, x0_hat in model.denoised_row_blocks(modality):  # as graph generation denoises them
            observed = model.user_rows(users) > 0
            values, items = x0_hat.topk(top_k, dim=1)
            top_values.append(values)
            top_observed.append(observed.gather(1, items))
            ranks = x0_hat.argsort(dim=1, descending=True).argsort(dim=1) + 1  # 1 = the largest prediction
            observed_ranks.append(ranks[observed])
        values, observed, ranks = torch.cat(top_values), torch.cat(top_observed), torch.cat(observed_ranks)
        report[modality] = {
            "top1_prediction_quantiles": dict(zip(["p10", "p50", "p90", "p99", "max"],
                                                  [round(float(v), 4) for v in values[:, 0].quantile(quantiles)])),
            "kept_at_threshold": {str(t): {"users": int((values[:, 0] >= t).sum()), "edges": int((values >= t).sum())}
                                  for t in thresholds},
            "training_items_median_rank": int(ranks.float().median()),
            "n_items": model.n_items,
            "top_k_share_of_training_items": round(float(observed.float().mean()), 4),
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the run's saved config.yaml")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.3, 0.4, 0.5, 0.6, 0.7])
    parser.add_argument("--top-k", type=int, default=5, help="candidates per user counted at each threshold")
    args = parser.parse_args()
    cli = cli_for_saved_run(Path(args.config))
    model, datamodule = cli.model, cli.datamodule
    if not isinstance(model, DASRec):
        raise SystemExit(f"{args.config}: model is {type(model).__name__}, this report is for DASRec")
    datamodule.setup("fit")
    model.graphs = datamodule.graphs
    model.on_graphs_ready()
    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    model.load_state_dict(checkpoint["state_dict"])
    report = {"checkpoint": args.checkpoint, "epoch": checkpoint["epoch"],
              "modalities": denoised_row_report(model, args.thresholds, args.top_k)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
