"""What a trained DASRec's denoisers predict, and what its generated modality graphs hold at each threshold.

Loads a checkpoint written by ``lit_mmrec fit`` (with the run's saved ``config.yaml``, which names the data),
scores every user's candidates as graph generation does (``ModalityGraphGenerator.candidate_scores``: the
top-k denoised items per modality, scored by the cosine of fused preference and item features, or by the
prediction), and reports per modality:

* how many edges and users each ``similarity_threshold`` keeps, so one checkpoint shows how the graphs
  shrink as the threshold rises (the graphs the run trained with used its own threshold only);
* quantiles of the candidates' scores and the number of distinct candidate items;
* the denoiser diagnostics the model logs at every rebuild, over all users here: the median over users of
  each user's median rank of their training items in their denoised row (1 = first; around n_items / 2
  for a denoiser that predicts nothing) and the share of users whose denoised row has cosine > 0.9 with the mean row.

    LIT_MMREC_DATA=/path/to/shared/data python benchmarks/dasrec_generated_graphs.py \
        --config <run>/lightning_logs/version_0/config.yaml \
        --checkpoint <run>/lightning_logs/version_0/checkpoints/last.ckpt [--threshold-on prediction]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from lit_mmrec.lightning_cli import cli_for_saved_run
from lit_mmrec.models import DASRec
from lit_mmrec.models.components import csr_rows
from lit_mmrec.models.components.graph_generation import own_item_ranks, user_median_ranks


@torch.no_grad()
def generated_graph_report(model: DASRec, thresholds: list[float]) -> dict:
    quantiles = torch.tensor([0.1, 0.5, 0.9, 0.99, 1.0])
    scores: dict[str, list[torch.Tensor]] = {m: [] for m in model.modalities}
    candidates: dict[str, list[torch.Tensor]] = {m: [] for m in model.modalities}
    users_seen: dict[str, list[torch.Tensor]] = {m: [] for m in model.modalities}
    for users, block in model.generator.candidate_scores(model.generator_features()):
        for modality, (items, score) in block.items():
            scores[modality].append(score)
            candidates[modality].append(items.flatten())
            users_seen[modality].append(users)
    report = {}
    for modality in model.modalities:
        score, users = torch.cat(scores[modality]), torch.cat(users_seen[modality])
        ranks, row_sum = [], torch.zeros(model.n_items)
        for block in model.generator.user_blocks():
            denoised = model.generator.denoise_users(modality, block)
            rows = csr_rows(model.graphs.train_interactions, block)
            ranks.append(user_median_ranks(own_item_ranks(denoised, rows), rows))
            row_sum += denoised.sum(dim=0)
        mean_row = F.normalize(row_sum, dim=0)
        similar = sum(int((F.normalize(model.generator.denoise_users(modality, block), dim=1) @ mean_row > 0.9).sum())
                      for block in model.generator.user_blocks())
        report[modality] = {
            "score_quantiles": dict(zip(["p10", "p50", "p90", "p99", "max"],
                                        [round(float(v), 4) for v in score.flatten().float().quantile(quantiles)])),
            "kept_at_threshold": {str(t): {"edges": int((score >= t).sum()),
                                           "users": int(torch.unique(users[(score >= t).any(dim=1)]).numel())}
                                  for t in thresholds},
            "candidate_items": int(torch.unique(torch.cat(candidates[modality])).numel()),
            "own_item_rank_median": float(torch.cat(ranks).float().median()),
            "mean_row_share": round(similar / model.n_users, 4),
            "n_items": model.n_items,
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the run's saved config.yaml")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.3, 0.4, 0.5, 0.6, 0.7])
    parser.add_argument("--top-k", type=int, default=None, help="candidates per user (default: the model's)")
    parser.add_argument("--threshold-on", choices=["similarity", "prediction"], default=None,
                        help="what the thresholds compare (default: the model's)")
    args = parser.parse_args()
    cli = cli_for_saved_run(Path(args.config))
    model, datamodule = cli.model, cli.datamodule
    if not isinstance(model, DASRec):
        raise SystemExit(f"{args.config}: model is {type(model).__name__}, this report is for DASRec")
    datamodule.setup("fit")
    model.graphs = datamodule.graphs
    model.on_graphs_ready()
    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    model.on_load_checkpoint(checkpoint)  # as Lightning restores a model: older key names, the generated edges
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    if args.top_k is not None:
        model.generator.graph_top_k = min(args.top_k, model.n_items)
    if args.threshold_on is not None:
        model.generator.threshold_on = args.threshold_on
    generator = model.generator
    report = {"checkpoint": args.checkpoint, "epoch": checkpoint["epoch"], "graph_top_k": generator.graph_top_k,
              "threshold_on": generator.threshold_on, "modalities": generated_graph_report(model, args.thresholds)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
