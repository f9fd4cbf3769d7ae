"""Benchmark: the approximate item-item KNN search (``knn_search: ivf``) against the exact one, time and recall.

For each modality of a data config's dataset: the seconds of the whole IVF search (index training, adding,
searching every item) at each ``--probe``, and its recall against the exact search (the share of each
item's exact k neighbours that it finds), measured on ``--sample`` random items. The exact search runs on
those items only; its whole-catalogue time is that block's time scaled by n / sample (it is the same
block-wise product for every block; ``benchmarks/scaling.py`` measures it whole inside the setup).

    python benchmarks/knn_search.py --data configs/data/synthetic_electronics_scale.yaml --probe 8 32 128
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from lit_mmrec.data.graphs import ivf_knn_neighbours


def load_dataset(config: Path):
    """The dataset of a data config: its ``dataset`` class, built with its ``init_args``, loaded."""
    node = OmegaConf.to_container(OmegaConf.load(config), resolve=True)["dataset"]  # ${oc.env:...} resolved
    module, _, name = node["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**node.get("init_args", {})).load()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a data config (configs/data/*.yaml)")
    parser.add_argument("--k", type=int, default=10, help="neighbours per item (the data module's knn_k)")
    parser.add_argument("--probe", type=int, nargs="+", default=[8, 32, 128], help="cells probed per item")
    parser.add_argument("--lists", type=int, default=None, help="index cells (default 4 sqrt(n))")
    parser.add_argument("--sample", type=int, default=2000, help="items whose exact neighbours are computed")
    args = parser.parse_args()
    data = load_dataset(args.data)
    if not data.features:
        raise SystemExit(f"knn_search: the dataset of {args.data} has no item features (no <modality>_feat.npy); "
                         "give a data config with features")
    results = {"data": str(args.data), "items": data.n_items, "threads": torch.get_num_threads(), "modalities": {}}
    for name, features in data.features.items():
        x = torch.nn.functional.normalize(torch.from_numpy(features).float(), dim=1)
        rows = torch.from_numpy(np.sort(np.random.default_rng(0).choice(len(x), args.sample, replace=False)))
        start = time.perf_counter()
        exact = (x[rows] @ x.T).topk(args.k, dim=1).indices  # [sample, k]
        exact_seconds = time.perf_counter() - start
        entry = {"width": x.shape[1], "exact_projected_seconds": round(exact_seconds * len(x) / args.sample, 1)}
        for probe in args.probe:
            start = time.perf_counter()
            try:
                _, found = ivf_knn_neighbours(x, args.k, True, args.lists, probe)
            except ValueError as error:  # too few neighbours in the probed cells: recorded, not fatal
                entry[f"probe_{probe}"] = {"error": str(error)}
                continue
            seconds = time.perf_counter() - start
            recall = (found[rows].unsqueeze(2) == exact.unsqueeze(1)).any(2).float().mean()
            entry[f"probe_{probe}"] = {"seconds": round(seconds, 1), "recall": round(float(recall), 4)}
        results["modalities"][name] = entry
        print(json.dumps({name: entry}), file=sys.stderr, flush=True)
    json.dump(results, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
