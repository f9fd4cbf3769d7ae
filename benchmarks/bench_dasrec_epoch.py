"""Benchmark: one DASRec training epoch split into its three parts, without Lightning.

Graph generation (every user's row denoised by each modality's denoiser, top-k + threshold), the
diffusion objective over every user's row, and the recommendation steps over the epoch's BPR batches,
exactly as ``DASRec`` runs them inside ``lit_mmrec fit``; also the peak resident memory.

    LIT_MMREC_DATA=/path/to/shared/data python benchmarks/bench_dasrec_epoch.py --dataset tiktok \
        embedding_dim=64 denoiser_hidden=128
    python benchmarks/bench_dasrec_epoch.py --config configs/experiment/dasrec_tiktok.yaml   # the committed config
    python benchmarks/bench_dasrec_epoch.py --sports-scale   # synthetic 35,598 x 18,357 x 296,337
    python benchmarks/bench_dasrec_epoch.py --sports-scale --epochs 1 --max-steps 30   # memory, partial epoch
    python benchmarks/bench_dasrec_epoch.py embedding_dim=128 denoiser_hidden=1000 denoiser_precision=bfloat16
    python benchmarks/bench_dasrec_epoch.py embedding_dim=128 denoiser_hidden=1000 diffusion_batch_size=1024
    python benchmarks/bench_dasrec_epoch.py embedding_dim=128 denoiser_hidden=1000 use_modality_anchor=false
    python benchmarks/bench_dasrec_epoch.py --device cuda embedding_dim=128 denoiser_hidden=1000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import torch
import yaml

from lit_mmrec.data import DiffMMPickles, RecDataModule, Synthetic
from lit_mmrec.models import DASRec
from lit_mmrec.models.components.graph_generation import diffusion_plan
from lit_mmrec.runtime import keep_freed_memory_for_reuse


def parse_options(items: list[str]) -> dict:
    """``key=value`` pairs, each value read as YAML reads it: 128, 0.5, false, null, bfloat16."""
    options = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator:
            raise SystemExit(f"option {item!r}: expected key=value, e.g. denoiser_hidden=1000")
        options[key] = yaml.safe_load(value)
    return options


def experiment_options(path: str) -> dict:
    """The DASRec init options of a ``lit_mmrec fit`` config (its ``model.init_args``, or those of the model
    file it names), without the optimizer and scheduler, which this benchmark sets itself."""
    with open(path) as handle:
        config = yaml.safe_load(handle) or {}
    model = config.get("model")
    if isinstance(model, str):  # a path to a model file, relative to the config
        with open(os.path.join(os.path.dirname(os.path.abspath(path)), model)) as handle:
            model = yaml.safe_load(handle)
    if not isinstance(model, dict) or not str(model.get("class_path", "")).endswith("DASRec"):
        raise SystemExit(f"{path}: model.class_path is not lit_mmrec.models.DASRec; pass a DASRec config")
    options = dict(model.get("init_args") or {})
    for key in ("optimizer", "scheduler"):
        options.pop(key, None)
    return options


def main() -> None:
    keep_freed_memory_for_reuse()  # as the lit_mmrec command does
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="tiktok", help="DiffMM-format folder under $LIT_MMREC_DATA")
    parser.add_argument("--sports-scale", action="store_true", help="synthetic data at Amazon Sports scale")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop each epoch after this many training steps (graph generation always runs in "
                             "full); for memory at scale without a whole epoch's wait")
    parser.add_argument("--device", default="cpu", help="torch device to train on, e.g. cuda")
    parser.add_argument("--config", default=None,
                        help="take DASRec's options from this lit_mmrec config (e.g. configs/experiment/"
                             "dasrec_tiktok.yaml); key=value options override them")
    parser.add_argument("options", nargs="*", help="DASRec init options as key=value, values read as YAML")
    args = parser.parse_args()
    if args.sports_scale:
        source = Synthetic(n_users=35598, n_items=18357, n_interactions=296337,
                           modalities={"image": 4096, "text": 384}, seed=0)
    else:
        source = DiffMMPickles(root=os.path.join(os.environ["LIT_MMREC_DATA"], args.dataset), name=args.dataset)
    options = {**(experiment_options(args.config) if args.config else {}), **parse_options(args.options)}
    datamodule = RecDataModule(source, train_batch_size=1024)
    datamodule.setup("fit")
    device = torch.device(args.device)
    model = DASRec(datamodule.n_users, datamodule.n_items, datamodule.feature_dims, **options).to(device)
    model.graphs = datamodule.graphs.to(device)
    model.on_graphs_ready()

    def now() -> float:  # wall clock after the device's queued work
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    epochs = []
    for epoch in range(args.epochs):
        datamodule.reseed_train_sampling(epoch, 0)
        batches = [batch.to(device) for batch in datamodule.train_dataloader()]
        plan = diffusion_plan(datamodule.n_users, len(batches), model.diffusion_batch_size, seed=0, epoch=epoch,
                              device=device)  # which users each step diffuses, as in training
        if args.max_steps is not None:
            batches = batches[: args.max_steps]
        start = now()
        model.generator.edges, model._graphs_eval = None, {}
        model._ensure_eval_graphs()  # generation, as at the start of every DASRec epoch
        model._graphs_train = model._build_graphs(model.graph_keep_rate, model.epoch_generator(epoch))
        generated = now()
        diffusion = recommendation = 0.0
        for index, batch in enumerate(batches):
            tick = now()
            users = plan.get(index)
            if users is not None:
                optimizer.zero_grad()
                diffusion_loss, signal_loss = model.diffusion_losses(users)
                (diffusion_loss + model.lambda_msi * signal_loss).backward()
                optimizer.step()
            tock = now()
            optimizer.zero_grad()
            sum(model.training_losses(*batch).values()).backward()
            optimizer.step()
            diffusion += tock - tick
            recommendation += now() - tock
        epochs.append({"graph_generation_s": round(generated - start, 2), "diffusion_s": round(diffusion, 2),
                       "recommendation_s": round(recommendation, 2),
                       "epoch_s": round(generated - start + diffusion + recommendation, 2)})
    report = {"options": options, "device": str(device), "threads": torch.get_num_threads(),
              "max_steps": args.max_steps, "epochs": epochs,
              "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)}
    if device.type == "cuda":
        report["peak_cuda_gb"] = round(torch.cuda.max_memory_allocated(device) / 1024**3, 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
