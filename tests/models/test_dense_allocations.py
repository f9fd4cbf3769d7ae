"""No model and no step of the data module holds a dense users x items or items x items matrix.

Every model's synthetic experiment runs one short fit (data setup with its KNN graphs, three training
batches, the epoch hooks that rebuild graphs, a validation and a test batch of full ranking) on a generated
dataset large enough that either dense matrix would be far above every legitimate block; the largest
strided tensor any torch op produces (recorded by a dispatch mode) stays below half of the smaller dense
matrix, in elements, and the peak of numpy / scipy allocations (recorded by tracemalloc, in the data module's
setup and the models that build graphs with scipy) below what that half would take in float32.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from lit_mmrec.lightning_cli import build_cli
from tests.conftest import REPO_ROOT

N_USERS, N_ITEMS = 5000, 5000
# half of the smaller of users x items and items x items, in elements
BOUND = N_ITEMS * min(N_USERS, N_ITEMS) // 2
DATA = [
    "--data.dataset.class_path", "lit_mmrec.data.Synthetic",
    "--data.dataset.init_args.n_users", str(N_USERS),
    "--data.dataset.init_args.n_items", str(N_ITEMS),
    "--data.dataset.init_args.n_interactions", str(6 * N_USERS),
    "--data.dataset.init_args.modalities", "{image: 32, text: 16}",
    "--data.train_batch_size", "1024",
    "--data.eval_batch_size", "512",
]
TRAINER = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
           "--trainer.limit_test_batches", "1", "--trainer.num_sanity_val_steps", "0", "--trainer.logger", "false",
           "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
# narrower denoisers than the configs' (their layers are [n_items, width] at any width), for speed only
NARROW = {model: ["--model.init_args.denoiser_hidden", "64"] for model in ("dasrec", "diffcl", "diffmm")}
# models whose setup builds a graph with scipy (the user co-occurrence graph), traced by tracemalloc too
SCIPY_SETUP = {"dualgnn", "dragon"}
MODELS = sorted(path.stem.removesuffix("_synthetic")
                for path in (REPO_ROOT / "configs" / "experiment").glob("*_synthetic.yaml"))


class LargestTensor(TorchDispatchMode):
    """Records the op that produced the largest strided (dense) tensor while the mode is active."""

    def __init__(self) -> None:
        super().__init__()
        self.numel, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor) and leaf.layout == torch.strided and leaf.numel() > self.numel:
                self.numel, self.op = leaf.numel(), str(func)
        return out


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory) -> Path:
    """One data cache for the models' fits (the first to run builds it)."""
    return tmp_path_factory.mktemp("dense-cache")


def test_data_module_setup_holds_no_dense_matrix(tmp_path: Path):
    tracemalloc.start()
    try:
        with LargestTensor() as largest:
            cli = build_cli(["--config", str(REPO_ROOT / "configs" / "experiment" / "lightgcn_synthetic.yaml"),
                             "--trainer.default_root_dir", str(tmp_path), "--data.use_cache", "false",
                             *DATA], run=False)
            cli.datamodule.setup("fit")
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert set(cli.datamodule.graphs.item_item) == {"image", "text"}  # both KNN graphs were built
    with LargestTensor() as densified:  # the recorder sees what a dense interaction matrix would be
        cli.datamodule.graphs.train_interactions.to_dense()
    assert densified.numel == N_USERS * N_ITEMS > BOUND
    assert largest.numel < BOUND, f"{largest.op} made a tensor of {largest.numel} elements"
    assert peak_bytes < 4 * BOUND, f"numpy / scipy peak {peak_bytes} bytes during setup"


@pytest.mark.parametrize("model", MODELS)
def test_training_and_ranking_hold_no_dense_matrix(model: str, data_cache: Path, tmp_path: Path):
    config = REPO_ROOT / "configs" / "experiment" / f"{model}_synthetic.yaml"
    traced = model in SCIPY_SETUP
    if traced:
        tracemalloc.start()
    try:
        with LargestTensor() as largest:
            cli = build_cli(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path),
                             "--data.cache_dir", str(data_cache), *DATA, *TRAINER, *NARROW.get(model, [])])
        peak_bytes = tracemalloc.get_traced_memory()[1] if traced else 0
    finally:
        tracemalloc.stop()
    assert cli.trainer.global_step >= 1 and "test/recall@20" in cli.trainer.logged_metrics
    assert largest.numel < BOUND, f"{model}: {largest.op} made a tensor of {largest.numel} elements"
    assert peak_bytes < 4 * BOUND, f"{model}: numpy / scipy peak {peak_bytes} bytes"
