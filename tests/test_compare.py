"""``lit_mmrec compare``: two checkpoints of a real (tiny synthetic) run, paired user by user."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from lit_mmrec.cli import main as cli_main
from lit_mmrec.compare import compare_runs
from lit_mmrec.compare import main as compare_main
from tests.conftest import base_args, run_cli


def test_compare_checkpoints_of_one_run(tmp_path: Path, capsys):
    cli = run_cli("fit", *base_args(tmp_path), "--trainer.max_epochs", "3", "--checkpoint.save_top_k", "-1")
    best = Path(cli.trainer.checkpoint_callback.best_model_path)
    first = best.parent / "best-epoch000.ckpt"  # every epoch is kept (save_top_k -1)
    log_dir = Path(cli.trainer.log_dir)
    config = log_dir / "config.yaml"
    rows = list(csv.DictReader((log_dir / "metrics.csv").read_text().splitlines()))
    val_recall = {int(r["epoch"]): float(r["val/recall@20"]) for r in rows if r.get("val/recall@20")}
    last = best.parent / "best-epoch002.ckpt"
    assert val_recall[0] != val_recall[2]
    capsys.readouterr()

    # the per-user means are the metrics the run logged: validation per epoch, test for the best checkpoint
    results = compare_main(["--a", str(config), str(first), "--b", str(config), str(last), "--split", "val",
                            "--bootstrap", "200"])
    assert results["recall"].n_users == cli.datamodule.data.valid.getnnz(axis=1).astype(bool).sum()
    assert results["recall"].mean_a == pytest.approx(val_recall[0], abs=1e-6)
    assert results["recall"].mean_b == pytest.approx(val_recall[2], abs=1e-6)
    assert results["recall"].difference == pytest.approx(val_recall[2] - val_recall[0], abs=1e-6)
    table = capsys.readouterr().out
    assert table.startswith("val split,") and "recall" in table and "ndcg" in table

    same = compare_main(["--a", str(config), str(best), "--b", str(config), str(best), "--split", "test",
                         "--metrics", "ndcg", "--bootstrap", "50", "--json"])
    assert same["ndcg"].mean_a == pytest.approx(float(cli.trainer.logged_metrics["test/ndcg@20"]), abs=1e-6)
    assert (same["ndcg"].difference, same["ndcg"].p_value) == (0.0, 1.0)
    assert '"ndcg"' in capsys.readouterr().out
    assert not (Path.cwd() / "config.yaml").exists()  # evaluation saves no config

    # the console script routes `compare`; a wrong path names the file
    with pytest.raises(SystemExit, match="missing.ckpt: no such file"):
        cli_main(["compare", "--a", str(config), str(tmp_path / "missing.ckpt"), "--b", str(config), str(best)])


def test_compare_refuses_runs_on_different_users():
    a = {"users": torch.tensor([0, 1, 2]), "recall": torch.tensor([0.0, 1.0, 0.0])}
    b = {"users": torch.tensor([0, 1, 3]), "recall": torch.tensor([1.0, 1.0, 0.0])}
    with pytest.raises(ValueError, match="different users"):
        compare_runs(a, b, ["recall"])
    same = compare_runs(a, {**b, "users": a["users"]}, ["recall"], n_bootstrap=10)
    assert same["recall"].difference == pytest.approx(1 / 3)


def test_saved_run_configs_are_checked(tmp_path: Path):
    from lit_mmrec.lightning_cli import cli_for_saved_run

    run = run_cli("fit", *base_args(tmp_path), "--trainer.max_epochs", "1", "--test_after_fit", "false")
    config = Path(run.trainer.log_dir) / "config.yaml"
    saved = cli_for_saved_run(config)  # rooted at the run's folder, beside its checkpoints, not the cwd
    assert saved.trainer.default_root_dir == str(config.parent)
    saved.trainer.validate(saved.model, datamodule=saved.datamodule, verbose=False,
                           ckpt_path=str(config.parent / "checkpoints" / "last.ckpt"))
    assert Path(saved.trainer.checkpoint_callback.dirpath) == Path(run.trainer.checkpoint_callback.dirpath)

    with pytest.raises(SystemExit, match="nothing.yaml: no such file"):
        cli_for_saved_run(tmp_path / "nothing.yaml")
    partial = tmp_path / "config.yaml"
    partial.write_text("trainer:\n  max_epochs: 1\ndata:\n  batch_size: 8\n")
    with pytest.raises(SystemExit, match=r"config.yaml: has no \['model'\] section"):
        cli_for_saved_run(partial)
