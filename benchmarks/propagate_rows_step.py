"""Same-process comparison of training steps with and without row-restricted propagation.

``propagate_rows`` (lit_mmrec/models/components/propagation.py) computes a propagation's combined layers
only at the rows a step's losses read. This script builds the model and data of a config exactly as
``lit_mmrec fit`` would, then times blocks of training steps (forward, backward, fused Adam) on the same
batches, alternating between the model's own path and a reference that propagates the full tables and
gathers the rows afterwards (what every step did before ``propagate_rows``). Machine load affects both alike.

    LIT_MMREC_DATA=/path/to/shared/data python benchmarks/propagate_rows_step.py \
        --config configs/experiment/diffcl_tiktok.yaml --pairs 9 --steps 12

For DiffCL and LightGCN configs (DASRec also trains through ``propagate_rows``, but its steps need its epoch
hooks: time it with ``bench_dasrec_epoch.py`` on each version of the code). Extra ``--key value`` arguments
after ``--`` go to the CLI parser.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import time

import torch

from lit_mmrec.lightning_cli import build_cli
from lit_mmrec.models.components import combine_layers, gather_rows, propagate
from lit_mmrec.runtime import keep_freed_memory_for_reuse


def full_then_gather(adjacency, embeddings, n_layers, rows, how, adjacency_t=None):
    """The reference: every row of every layer, then the requested rows."""
    layers = propagate(adjacency, embeddings, n_layers, adjacency_t)
    return gather_rows(layers[-1] if how == "last" else combine_layers(layers, how), rows)


def main() -> None:
    keep_freed_memory_for_reuse()  # as the lit_mmrec command does
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--pairs", type=int, default=9, help="alternating (reference, propagate_rows) blocks")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per block (after 2 warm-up steps)")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]

    cli = build_cli(["--config", args.config, "--trainer.logger", "false", *extra], run=False)
    datamodule, model = cli.datamodule, cli.model
    datamodule.setup("fit")
    model.graphs = datamodule.graphs
    model.on_graphs_ready()
    model.train()
    if type(model).__name__ == "DASRec":
        raise SystemExit("DASRec's steps need its epoch hooks (graph generation, diffusion chunks): "
                         "use benchmarks/bench_dasrec_epoch.py with each version of the code")
    module = importlib.import_module(type(model).__module__)
    own = module.propagate_rows

    batches = [batch for _, batch in zip(range(args.steps + 2), datamodule.train_dataloader())]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-6, fused=True)

    def step(batch) -> None:
        loss = torch.stack(list(model.training_losses(*batch).values())).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    times: dict[str, list[float]] = {"full_then_gather": [], "propagate_rows": []}
    for _ in range(args.pairs):
        for name, function in (("full_then_gather", full_then_gather), ("propagate_rows", own)):
            module.propagate_rows = function
            for batch in batches[:2]:
                step(batch)
            start = time.perf_counter()
            for batch in batches[2:]:
                step(batch)
            times[name].append((time.perf_counter() - start) / args.steps * 1000)
    module.propagate_rows = own
    report = {"config": args.config, "extra": extra, "threads": torch.get_num_threads(),
              **{f"{name}_ms_per_step": [round(t, 1) for t in values] for name, values in times.items()},
              **{f"{name}_median_ms": round(statistics.median(values), 1) for name, values in times.items()}}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
