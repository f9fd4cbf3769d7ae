"""End-to-end ``lit_mmrec fit`` / ``test`` / ``predict`` through the real CLI on tiny synthetic data."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import REPO_ROOT, base_args, require_dataset, run_cli


def test_fit_test_predict(tmp_path: Path):
    cli = run_cli("fit", *base_args(tmp_path), "--trainer.max_epochs", "3")
    checkpoint = cli.trainer.checkpoint_callback
    best = Path(checkpoint.best_model_path)
    assert best.is_file() and best.name.startswith("best-epoch")
    assert (best.parent / "last.ckpt").is_file()
    # fit ended by testing the best-validation checkpoint
    logged = cli.trainer.logged_metrics
    assert {"test/recall@20", "test/ndcg@10", "test/precision@20", "test/hit@10"} <= set(logged)
    metrics_csv = next(Path(cli.trainer.log_dir).glob("metrics.csv"))
    header = next(csv.reader(metrics_csv.open()))
    assert {"train/bpr_loss", "train/reg_loss", "val/recall@20", "val/recall@20_best", "val/best_epoch"} <= set(header)

    tested = run_cli("test", *base_args(tmp_path), "--ckpt_path", str(best))
    assert tested.trainer.logged_metrics["test/recall@20"] == pytest.approx(float(logged["test/recall@20"]))

    output = tmp_path / "recs.tsv"
    run_cli("predict", *base_args(tmp_path), "--ckpt_path", str(best),
            "--prediction_writer.output_path", str(output), "--data.predict_top_k", "5")
    lines = output.read_text().splitlines()
    assert lines[0].split("\t") == ["userID", "top1", "top2", "top3", "top4", "top5"]
    table = np.array([line.split("\t") for line in lines[1:]], dtype=np.int64)
    assert table.shape == (80, 6)
    assert table[:, 0].tolist() == list(range(80))
    train = tested.datamodule.data.train
    for user, *items in table:
        assert len(set(items)) == 5
        assert not set(items) & set(train[user].indices.tolist())  # training items excluded


def metric_rows(run_folder: Path) -> list[dict[str, str]]:
    """The run's metrics.csv without the wall-clock and memory columns (they measure the machine)."""
    with (run_folder / "metrics.csv").open() as handle:
        return [{key: value for key, value in row.items() if "seconds" not in key and "memory" not in key}
                for row in csv.DictReader(handle)]


def test_resume_continues_the_run_folder_and_tests_the_true_best(tmp_path: Path):
    """Resuming from last.ckpt keeps the run folder, its best checkpoint and score, and its metrics: the
    resumed run logs, picks and tests exactly what the uninterrupted run does."""
    whole = run_cli("fit", *base_args(tmp_path / "whole"), "--trainer.max_epochs", "6")
    first = run_cli("fit", *base_args(tmp_path / "split"), "--trainer.max_epochs", "3", "--test_after_fit", "false")
    last = Path(first.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    resumed = run_cli("fit", *base_args(tmp_path / "split"), "--trainer.max_epochs", "6", "--ckpt_path", str(last))
    assert resumed.trainer.log_dir == first.trainer.log_dir
    assert [p.name for p in (tmp_path / "split" / "lightning_logs").iterdir()] == ["version_0"]
    assert resumed.trainer.global_step == whole.trainer.global_step
    best = [Path(cli.trainer.checkpoint_callback.best_model_path).name for cli in (whole, resumed)]
    assert best[0] == best[1]
    assert resumed.trainer.checkpoint_callback.best_model_score == whole.trainer.checkpoint_callback.best_model_score
    assert metric_rows(Path(resumed.trainer.log_dir)) == metric_rows(Path(whole.trainer.log_dir))


@pytest.mark.slow
def test_run_killed_and_resumed_ends_as_the_uninterrupted_run(tmp_path: Path):
    """``kill -9`` in the middle of a DASRec run (dropout and diffusion noise draw from the global random
    state), then ``fit --ckpt_path last.ckpt``: same best epoch, same test metrics as the run never killed."""
    import os
    import signal
    import time

    def command(root: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "lit_mmrec", "fit",
                "--config", str(REPO_ROOT / "configs" / "experiment" / "dasrec_synthetic.yaml"),
                "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
                "--trainer.enable_model_summary", "false", "--data.cache_dir", str(tmp_path / "cache"),
                "--trainer.max_epochs", "4", *extra]

    env = {**os.environ, "LIT_MMREC_LOG_LEVEL": "WARNING"}
    subprocess.run(command(tmp_path / "whole"), check=True, env=env, capture_output=True)
    killed = subprocess.Popen(command(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    run_folder = tmp_path / "killed" / "lightning_logs" / "version_0"
    last = run_folder / "checkpoints" / "last.ckpt"
    writes, seen = 0, None
    while killed.poll() is None and writes < 2:  # kill once last.ckpt holds epoch 1, during epoch 2
        stamp = last.stat().st_mtime_ns if last.is_file() else None
        if stamp is not None and stamp != seen:
            writes, seen = writes + 1, stamp
        time.sleep(0.02)
    time.sleep(0.3)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    subprocess.run(command(tmp_path / "killed", "--ckpt_path", str(last)), check=True, env=env, capture_output=True)
    rows = {name: metric_rows(tmp_path / name / "lightning_logs" / "version_0") for name in ("whole", "killed")}
    test = {name: next(row for row in rows[name] if row.get("test/recall@20")) for name in rows}
    assert test["killed"] == test["whole"]
    assert rows["killed"] == rows["whole"]


def test_runs_into_one_output_folder_keep_their_own_folders(tmp_path: Path):
    clis = [run_cli("fit", *base_args(tmp_path), "--trainer.max_epochs", str(epochs), "--test_after_fit", "false")
            for epochs in (1, 2)]
    folders = [Path(cli.trainer.log_dir) for cli in clis]
    assert folders[0] != folders[1]
    for folder, epochs in zip(folders, (1, 2)):
        assert yaml.safe_load((folder / "config.yaml").read_text())["trainer"]["max_epochs"] == epochs
        assert (folder / "checkpoints" / "last.ckpt").is_file() and (folder / "metrics.csv").is_file()
    best = clis[1].trainer.checkpoint_callback.best_model_path
    run_cli("predict", *base_args(tmp_path), "--ckpt_path", best,
            "--prediction_writer.output_path", str(tmp_path / "top.tsv"))
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0", "version_1"]
    assert not (tmp_path / "config.yaml").exists() and (tmp_path / "top.tsv").is_file()


def test_help_lists_every_subcommand():
    result = subprocess.run([sys.executable, "-m", "lit_mmrec", "--help"], capture_output=True, text=True,
                            check=True)
    for name in ("fit", "validate", "test", "predict", "sweep", "compare", "report", "prepare", "features"):
        assert f"\n  {name} " in result.stdout, name


def test_unknown_option_gets_a_suggestion_not_the_usage(tmp_path: Path, capsys):
    from lit_mmrec.cli import main

    for typo, hint in (("--model.init_args.lamda_cl=0.1", "did you mean `lambda_cl` (an option of DiffCL)?"),
                       ("--trainer.max_epochz=3", "did you mean `--trainer.max_epochs`?")):
        with pytest.raises(SystemExit) as stopped:
            main(["fit", "--config", str(REPO_ROOT / "configs" / "experiment" / "diffcl_synthetic.yaml"),
                  "--trainer.default_root_dir", str(tmp_path), typo])
        assert stopped.value.code == 2
        err = capsys.readouterr().err
        assert hint in err, err
        assert "Traceback" not in err and "usage:" not in err and len(err.splitlines()) < 20
    with pytest.raises(SystemExit):
        main(["fitt"])
    assert "did you mean `fit`?" in capsys.readouterr().err


@pytest.mark.parametrize("experiment", ["bpr_synthetic.yaml", "vbpr_synthetic.yaml", "freedom_synthetic.yaml",
                                        "diffmm_synthetic.yaml"])
def test_baseline_experiments_run(tmp_path: Path, experiment: str):
    cli = run_cli("fit", *base_args(tmp_path, experiment), "--trainer.max_epochs", "1")
    assert "test/recall@20" in cli.trainer.logged_metrics


def test_console_script_help_lists_model_options():
    result = subprocess.run([sys.executable, "-m", "lit_mmrec", "fit", "--model.help", "lit_mmrec.models.LightGCN"],
                            capture_output=True, text=True, check=True)
    assert "--model.n_layers" in result.stdout
    assert "--model.layer_combination" in result.stdout
    assert "mean" in result.stdout and "sum" in result.stdout


def test_bad_input_data_is_a_message_not_a_traceback(tmp_path: Path, monkeypatch, capsys):
    """A data error ends the command with its message (file, field, fix) and exit status 2; the traceback
    only with LIT_MMREC_DEBUG=1."""
    from lit_mmrec.cli import main
    from lit_mmrec.data.interactions import DataFormatError

    monkeypatch.setenv("LIT_MMREC_DATA", str(tmp_path / "absent"))
    monkeypatch.delenv("LIT_MMREC_DEBUG", raising=False)
    args = ["fit", "--config", str(REPO_ROOT / "configs" / "experiment" / "lightgcn_baby.yaml"),
            "--trainer.default_root_dir", str(tmp_path), "--data.cache_dir", str(tmp_path / "cache")]
    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"lit_mmrec: error: dataset root {tmp_path / 'absent' / 'baby'} does not exist" in err
    assert "set LIT_MMREC_DATA" in err and "Traceback" not in err
    monkeypatch.setenv("LIT_MMREC_DEBUG", "1")
    with pytest.raises(DataFormatError, match="does not exist"):
        main(args)


def test_bad_monitor_is_reported(tmp_path: Path):
    with pytest.raises(ValueError, match="not computed"):
        run_cli("fit", *base_args(tmp_path), "--evaluation.ks", "[5]")


def short_tiktok_run(tmp_path: Path, monkeypatch, experiment: str, *args: str):
    """``lit_mmrec fit`` of ``configs/experiment/<experiment>`` on the real TikTok data (skips without it)."""
    monkeypatch.setenv("LIT_MMREC_DATA", str(require_dataset("tiktok").parent))
    cli = run_cli("fit", "--config", str(REPO_ROOT / "configs" / "experiment" / experiment),
                  "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
                  "--data.cache_dir", str(tmp_path / "cache"), *args)
    assert cli.datamodule.n_users == 9308
    assert 0.0 < float(cli.trainer.logged_metrics["test/recall@20"]) < 1.0
    return cli


def logged_epoch(cli, metric: str) -> dict[str, str]:
    """The first row of the run's metrics.csv that holds ``metric``."""
    rows = csv.DictReader(next(Path(cli.trainer.log_dir).glob("metrics.csv")).open())
    return next(row for row in rows if row.get(metric))


@pytest.mark.real_data
@pytest.mark.parametrize("experiment", ["lightgcn_tiktok.yaml", "vbpr_tiktok.yaml", "freedom_tiktok.yaml"])
def test_short_real_data_run(tmp_path: Path, monkeypatch, experiment: str):
    short_tiktok_run(tmp_path, monkeypatch, experiment, "--trainer.max_epochs", "2")


@pytest.mark.real_data
@pytest.mark.parametrize(("experiment", "losses"), [
    ("diffcl_tiktok.yaml", {"bpr", "reg", "emb", "cl", "diffusion", "align"}),
    ("dasrec_tiktok.yaml", {"bpr", "reg", "cl", "diffusion", "msi"}),
])
def test_paper_models_committed_configs_short_real_data_run(tmp_path: Path, monkeypatch, experiment: str,
                                                            losses: set[str]):
    """The committed TikTok configs of DiffCL (its bfloat16 denoisers included) and DASRec train 8 steps on the
    real data with every loss term of the model logged and positive, then validate and test."""
    cli = short_tiktok_run(tmp_path, monkeypatch, experiment,
                           "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "8")
    committed = yaml.safe_load((REPO_ROOT / "configs" / "experiment" / experiment).read_text())["model"]["init_args"]
    assert all(cli.model.hparams[key] == value for key, value in committed.items() if key != "optimizer")
    epoch = logged_epoch(cli, "train/bpr_loss")
    logged = {key[len("train/"):-len("_loss")] for key, value in epoch.items()
              if key.startswith("train/") and key.endswith("_loss") and value}
    assert logged == losses
    assert all(float(epoch[f"train/{name}_loss"]) > 0 for name in losses)


@pytest.mark.real_data
def test_diffmm_short_real_data_run(tmp_path: Path, monkeypatch):
    """DiffMM's TikTok config for 12 steps: ten 1,024-user diffusion batches (every user's row once), a
    generated graph with every user's top-5 edges per modality (rebuild_k), and a tested checkpoint."""
    cli = short_tiktok_run(tmp_path, monkeypatch, "diffmm_tiktok.yaml",
                           "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "12")
    epoch = logged_epoch(cli, "train/diffusion_loss")
    assert {float(epoch[f"train/graph_edges_{m}"]) for m in ("image", "audio")} == {5 * 9308.0}
    assert float(epoch["train/diffusion_loss"]) > 0 and float(epoch["train/msi_loss"]) > 0


@pytest.mark.parametrize("name", ["BPRMF", "VBPR", "LightGCN", "FREEDOM", "DiffCL", "DASRec", "DiffMM"])
def test_every_model_option_has_a_description(name: str):
    """``--model.help`` shows each option's line from the ``Args:`` of the class's docstring or of a base
    class's (jsonargparse reads them with docstring_parser)."""
    import inspect

    import docstring_parser

    import lit_mmrec.models as models

    cls = getattr(models, name)
    documented = {param.arg_name for klass in cls.__mro__ if klass.__doc__
                  for param in docstring_parser.parse(klass.__doc__).params if param.description}
    options = [key for key in inspect.signature(cls.__init__).parameters if key not in ("self", "kwargs")]
    assert not set(options) - documented, f"{name}: no description for {sorted(set(options) - documented)}"


_GOOD = "userID\titemID\tx_label\n0\t0\t0\n0\t1\t0\n0\t2\t1\n1\t1\t0\n1\t2\t2\n2\t0\t0\n2\t2\t0\n2\t1\t1\n0\t3\t2\n"


@pytest.mark.parametrize(("inter", "features", "message"), [
    ("userID\titemID\n0\t0\n", None, "lacks column(s) ['x_label']"),
    (_GOOD + "1\tx\t0\n", None, "itemID 'x' on line 11 is not an integer"),
    (_GOOD + "-1\t0\t0\n", None, "negative userID -1 on line 11"),
    (_GOOD + "1\t0\t7\n", None, "x_label 7 on line 11"),
    (_GOOD.replace("1\t2\t2\n", "").replace("0\t3\t2\n", ""), None, "the test split is empty"),
    (_GOOD, np.full((4, 2), np.nan, dtype=np.float32), "image_feat.npy"),
    (_GOOD, np.ones((3, 2), dtype=np.float32), "image_feat.npy"),
], ids=["missing-column", "non-integer", "negative-id", "bad-label", "empty-split", "nan-features", "row-count"])
def test_each_bad_input_is_one_message_and_exit_status_2(tmp_path: Path, monkeypatch, capsys, inter, features,
                                                         message):
    from lit_mmrec.cli import main

    monkeypatch.delenv("LIT_MMREC_DEBUG", raising=False)
    (tmp_path / "toy.inter").write_text(inter)
    if features is not None:
        np.save(tmp_path / "image_feat.npy", features)
    with pytest.raises(SystemExit) as stopped:
        main(["fit", "--config", str(REPO_ROOT / "configs" / "experiment" / "lightgcn_synthetic.yaml"),
              "--trainer.default_root_dir", str(tmp_path / "runs"), "--data.cache_dir", str(tmp_path / "cache"),
              "--data.dataset.class_path", "lit_mmrec.data.MMRecAtomic",
              "--data.dataset.init_args.root", str(tmp_path), "--data.dataset.init_args.name", "toy"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lit_mmrec: error: ") and message in err, err
    assert "Traceback" not in err and len(err.splitlines()) <= 3
