"""Two-process DDP on CPU (gloo) through the real ``lit_mmrec`` command, for every model.

Lightning's ``ddp`` strategy starts the other ranks by re-running the command line, so each run is
its own ``python -m lit_mmrec`` subprocess (the process group lives and dies with it). For each model:
a few DDP training steps with validation, then the resulting checkpoint is tested once by two
processes and once by one, and the metrics must agree: every test user is scored by exactly one
process and the metric sums are reduced across processes; the per-user metrics, gathered from the
processes, must be those of the one-process test.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT, TINY_DATA

pytestmark = pytest.mark.slow


def lit_mmrec(tmp_path: Path, *args: str, processes: int, strategy: str = "ddp") -> Path:
    """Runs ``python -m lit_mmrec`` with a CSV logger; returns the directory of its metrics.csv."""
    name = f"{args[0]}-{processes}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled",
           "LIT_MMREC_OUTPUT": str(tmp_path), "PYTHONPATH": str(REPO_ROOT)}
    env.pop("MASTER_PORT", None)
    placement = [f"--trainer.strategy={strategy}", f"--trainer.devices={processes}"] if processes > 1 else \
        ["--trainer.strategy=auto", "--trainer.devices=1"]
    command = [sys.executable, "-m", "lit_mmrec", *args, "--trainer.accelerator=cpu", *placement,
               "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path / name}",
               "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
               f"--trainer.logger.init_args.save_dir={tmp_path / name}",
               f"--data.cache_dir={tmp_path / 'cache'}", *TINY_DATA]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    if processes > 1:  # rank 0 destroyed its gloo group before exiting (an abort at shutdown otherwise)
        assert "released the gloo process group" in result.stderr
    return tmp_path / name / "lightning_logs" / "version_0"


def logged(run_dir: Path, prefix: str) -> dict[str, float]:
    values: dict[str, float] = {}
    with (run_dir / "metrics.csv").open() as handle:
        for row in csv.DictReader(handle):
            values.update({key: float(value) for key, value in row.items() if key.startswith(prefix) and value})
    return values


@pytest.mark.parametrize("experiment", ["lightgcn_synthetic.yaml", "freedom_synthetic.yaml", "diffcl_synthetic.yaml",
                                        "dasrec_synthetic.yaml"])
def test_two_process_ddp_matches_one_process(tmp_path: Path, experiment: str):
    config = ["--config", str(REPO_ROOT / "configs" / "experiment" / experiment)]
    # train: 80 users, ~960 training interactions, batch 256 -> 2 steps per process per epoch
    fit_dir = lit_mmrec(tmp_path, "fit", *config, "--trainer.max_epochs=2", "--test_after_fit=false", processes=2)
    assert logged(fit_dir, "val/recall@20"), "validation ran under DDP"
    checkpoint = fit_dir / "checkpoints" / "last.ckpt"
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert state["global_step"] == 4  # 2 epochs x 2 steps: each process took half of every epoch
    if experiment.startswith("dasrec"):
        assert "dasrec_generated_edges" in state  # the generated modality graphs travel with the checkpoint

    # the same checkpoint tested by two processes and by one (test users: 3 batches of 32 -> 2 + 1 + padding),
    # each also writing every test user's metrics (PerUserMetrics gathers the processes' shares)
    ckpt = f"--ckpt_path={checkpoint}"

    def per_user(processes: int) -> list[str]:
        return ["--trainer.callbacks+=lit_mmrec.metrics.PerUserMetrics",
                f"--trainer.callbacks.output_dir={tmp_path / f'per_user-{processes}'}"]
    two = logged(lit_mmrec(tmp_path, "test", *config, ckpt, *per_user(2), processes=2), "test/")
    one = logged(lit_mmrec(tmp_path, "test", *config, ckpt, *per_user(1), processes=1), "test/")
    assert set(one) >= {"test/recall@20", "test/ndcg@20", "test/precision@20", "test/recall@10"}
    assert one.keys() == two.keys()
    for name in one:
        assert two[name] == pytest.approx(one[name], abs=1e-6), name
    assert one["test/recall@20"] > 0
    rows = {n: list(csv.DictReader((tmp_path / f"per_user-{n}" / "per_user_test@20.csv").open())) for n in (1, 2)}
    assert rows[2] == rows[1]  # every user once, in user order, with the same values
    assert len(rows[1]) == len({row["userID"] for row in rows[1]}) > 64  # more than one process's batches
    mean_recall = sum(float(row["recall"]) for row in rows[2]) / len(rows[2])
    assert mean_recall == pytest.approx(one["test/recall@20"], abs=1e-6)


def test_dasrec_diffusion_batches_train_under_ddp(tmp_path: Path):
    """DiffMM-style diffusion batches leave the denoisers without gradients on some steps, which DDP
    accepts with the unused-parameter search: 40 users per process in batches of 64 diffuse on the first
    of each epoch's two steps only."""
    config = ["--config", str(REPO_ROOT / "configs" / "experiment" / "dasrec_synthetic.yaml")]
    fit_dir = lit_mmrec(tmp_path, "fit", *config, "--model.init_args.diffusion_batch_size=64",
                        "--trainer.max_epochs=2", "--test_after_fit=false", processes=2,
                        strategy="ddp_find_unused_parameters_true")
    state = torch.load(fit_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 4
    losses = logged(fit_dir, "train/")
    assert {"train/diffusion_loss", "train/bpr_loss"} <= set(losses)
