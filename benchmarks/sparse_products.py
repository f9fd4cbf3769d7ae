"""Same-process comparison of the two CPU kernels for ``adjacency @ dense``: torch's CSR product and the
weighted ``embedding_bag`` sum that ``lit_mmrec.models.components.propagation`` uses on CPU.

Builds a config's data exactly as ``lit_mmrec fit`` would and times, alternating between the kernels:
the product of its normalised user-item adjacency with random tables of several widths, and blocks of
whole training steps of its model (forward, backward, fused Adam on the same batches). Machine load
affects both alike; the medians and the per-round figures are printed as JSON.

    LIT_MMREC_DATA=/path/to/shared/data python benchmarks/sparse_products.py \
        --config configs/experiment/diffcl_tiktok.yaml --rounds 5 --steps 12

Steps are timed for models whose training runs without epoch hooks (DiffCL, LightGCN, BPR-MF, VBPR);
``--steps 0`` times the products alone. Extra ``--key value`` arguments after ``--`` go to the CLI parser.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from lit_mmrec.lightning_cli import build_cli
from lit_mmrec.models.components import propagation
from lit_mmrec.runtime import keep_freed_memory_for_reuse

WIDTHS = [64, 128, 384]


# torch's CSR kernel as lit_mmrec ran every product before the embedding_bag path (and still runs off CPU)
csr_product = propagation._addmm_product
KERNELS = {"csr_addmm": csr_product, "embedding_bag": propagation._spmm}


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    keep_freed_memory_for_reuse()  # as the lit_mmrec command does
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--rounds", type=int, default=5, help="alternations of the two kernels")
    parser.add_argument("--repeats", type=int, default=20, help="products per kernel, width and round")
    parser.add_argument("--steps", type=int, default=12, help="training steps per kernel and round (0: none)")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    cli = build_cli(["--config", args.config, "--trainer.logger", "false", *extra], run=False)
    datamodule, model = cli.datamodule, cli.model
    datamodule.setup("fit")
    adjacency = datamodule.graphs.norm_adjacency
    tables = {width: torch.randn(adjacency.shape[0], width) for width in WIDTHS}
    for table in tables.values():  # the two kernels agree before anything is timed
        torch.testing.assert_close(propagation._spmm(adjacency, table), csr_product(adjacency, table),
                                   rtol=1e-5, atol=1e-5)

    step = None
    if args.steps:
        model.graphs = datamodule.graphs
        model.on_graphs_ready()
        model.train()
        batches = [batch for _, batch in zip(range(args.steps + 2), datamodule.train_dataloader())]
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)

        def step() -> None:
            for batch in batches[2:]:
                loss = sum(model.training_losses(*batch).values())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

        for batch in batches[:2]:  # warm-up
            sum(model.training_losses(*batch).values()).backward()

    rounds = {name: {"product_ms": {w: [] for w in WIDTHS}, "step_ms": []} for name in KERNELS}
    original = propagation._spmm
    try:
        for _ in range(args.rounds):
            for name, kernel in KERNELS.items():
                propagation._spmm = kernel
                for width, table in tables.items():
                    rounds[name]["product_ms"][width].append(median_ms(lambda: kernel(adjacency, table), args.repeats))
                if step is not None:
                    start = time.perf_counter()
                    step()
                    rounds[name]["step_ms"].append((time.perf_counter() - start) / args.steps * 1e3)
    finally:
        propagation._spmm = original

    report = {"config": args.config, "threads": torch.get_num_threads(), "nodes": adjacency.shape[0],
              "entries": adjacency.values().numel(), "kernels": {}}
    for name, result in rounds.items():
        report["kernels"][name] = {
            "product_ms_median": {w: round(statistics.median(v), 2) for w, v in result["product_ms"].items()},
            "product_ms_rounds": {w: [round(x, 2) for x in v] for w, v in result["product_ms"].items()},
        }
        if result["step_ms"]:
            report["kernels"][name]["step_ms_median"] = round(statistics.median(result["step_ms"]), 1)
            report["kernels"][name]["step_ms_rounds"] = [round(x, 1) for x in result["step_ms"]]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
