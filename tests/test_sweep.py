"""``lit_mmrec sweep``: the translation of W&B sweep files to Optuna, and real sweeps of ``lit_mmrec fit``
runs on tiny synthetic data (one worker, two workers on one study, a killed worker, pruning)."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from lit_mmrec.cli import main
from lit_mmrec.lightning_cli import build_cli
from lit_mmrec.sweep import Sweep, SweepConfigError, open_study, run_sweep
from tests.conftest import REPO_ROOT, TINY_DATA

SWEEPS = sorted((REPO_ROOT / "sweeps").glob("*.yaml"))
LR = "model.init_args.optimizer.init_args.lr"


def sweep_of(parameters: dict, method: str = "random", **extra) -> Sweep:
    return Sweep({"method": method, "metric": {"name": "val/recall@20", "goal": "maximize"},
                  "parameters": parameters, "command": ["lit_mmrec", "fit", "${args}"], **extra}, "test.yaml")


def test_parameters_map_to_optuna_distributions():
    space = sweep_of({
        "c": {"value": 3}, "v": {"values": ["x", "y"]}, "i": {"min": 1, "max": 4}, "u": {"min": 0.0, "max": 1.0},
        "q": {"distribution": "q_uniform", "min": 0, "max": 10, "q": 5},
        "lu": {"distribution": "log_uniform", "min": -2.0, "max": 0.0},
        "luv": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
        "qlv": {"distribution": "q_log_uniform_values", "min": 0.001, "max": 1.0, "q": 0.01},
        "qli": {"distribution": "q_log_uniform_values", "min": 2, "max": 64},
        "n": {"distribution": "normal", "mu": 1.0, "sigma": 2.0},
        "ln": {"distribution": "log_normal", "mu": 0.0, "sigma": 1.0},
    }).space
    assert space["c"] == (CategoricalDistribution([3]), None)
    assert space["v"] == (CategoricalDistribution(["x", "y"]), None)
    assert space["i"] == (IntDistribution(1, 4), None)
    assert space["u"] == (FloatDistribution(0.0, 1.0), None)
    assert space["q"] == (IntDistribution(0, 10, step=5), None)
    distribution, _ = space["lu"]
    assert distribution.log and distribution.low == pytest.approx(math.exp(-2)) and distribution.high == 1.0
    assert space["luv"] == (FloatDistribution(1e-4, 1e-2, log=True), None)
    assert space["qlv"] == (FloatDistribution(0.001, 1.0, log=True), 0.01)  # rounded to q after sampling
    assert space["qli"] == (IntDistribution(2, 64, log=True), None)
    assert space["n"] == (FloatDistribution(-5.0, 7.0), None)  # mu +- 3 sigma
    assert space["ln"][0].low == pytest.approx(math.exp(-3)) and space["ln"][0].high == pytest.approx(math.exp(3))


def test_samples_are_the_values_fit_receives():
    sweep = sweep_of({"qlv": {"distribution": "q_log_uniform_values", "min": 0.001, "max": 1.0, "q": 0.01},
                      "v": {"values": [1, 2]}})
    study = optuna.create_study(sampler=sweep.sampler())
    for _ in range(20):
        values = sweep.suggest(study.ask())
        assert values["v"] in (1, 2)
        assert round(values["qlv"] / 0.01) == pytest.approx(values["qlv"] / 0.01)
        assert 0.0 <= values["qlv"] <= 1.0


def test_the_translation_agrees_with_wandbs_own_optuna_mapping():
    """W&B's Optuna scheduler maps sweep parameters to Optuna too; where both define a mapping they agree."""
    wandb_optuna = pytest.importorskip("wandb.sdk.sweeps.scheduler.optuna")
    specs = [{"values": [1, 2]}, {"value": "a"}, {"min": 1, "max": 9}, {"min": 0.5, "max": 2.5},
             {"distribution": "q_uniform", "min": 0, "max": 12, "q": 3},
             {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-1},
             {"distribution": "q_log_uniform_values", "min": 1, "max": 256}]
    for source in SWEEPS:
        specs += yaml.safe_load(source.read_text())["parameters"].values()
    for spec in specs:
        ours, _ = sweep_of({"p": spec}).space["p"]
        assert ours == wandb_optuna.sweep_parameter_to_distribution(spec), spec


def test_bad_sweep_files_name_the_field():
    with pytest.raises(SweepConfigError, match=r"test.yaml: parameters\.lr: distribution 'int_uniform' needs min below"):
        sweep_of({"lr": {"min": 1, "max": 1}})
    with pytest.raises(SweepConfigError, match=r"parameters\.x: distribution 'beta' has no Optuna counterpart"):
        sweep_of({"x": {"distribution": "beta", "a": 1, "b": 1}})
    with pytest.raises(SweepConfigError, match=r"parameters\.x: probabilities has no Optuna counterpart"):
        sweep_of({"x": {"values": [1, 2], "probabilities": [0.9, 0.1]}})
    with pytest.raises(SweepConfigError, match="grid search needs a finite set"):
        sweep_of({"x": {"min": 0.0, "max": 1.0}}, method="grid").sampler()
    with pytest.raises(SweepConfigError, match="method must be grid, random or bayes"):
        sweep_of({"a": {"value": 1}}, method="hyperopt")
    with pytest.raises(SweepConfigError, match="eta: an integer >= 2"):
        sweep_of({"a": {"value": 1}}, early_terminate={"type": "hyperband", "min_iter": 2, "eta": 1.5})
    with pytest.raises(SweepConfigError, match=r"must contain \$\{args\}"):
        Sweep({"method": "grid", "metric": {"name": "m"}, "parameters": {"a": {"value": 1}},
               "command": ["lit_mmrec", "fit"]}, "f")


def test_hyperband_bands_become_the_pruners_resources():
    pruner = sweep_of({"a": {"value": 1}}, early_terminate={"type": "hyperband", "max_iter": 27, "s": 2,
                                                            "eta": 3}).pruner()
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    assert (pruner._min_resource, pruner._max_resource, pruner._reduction_factor) == (3, 27, 3)
    pruner = sweep_of({"a": {"value": 1}}, early_terminate={"type": "hyperband", "min_iter": 3, "eta": 2}).pruner()
    assert (pruner._min_resource, pruner._max_resource, pruner._reduction_factor) == (3, "auto", 2)
    assert isinstance(sweep_of({"a": {"value": 1}}).pruner(), optuna.pruners.NopPruner)


def test_grid_runs_every_combination_once():
    sweep = sweep_of({"a": {"values": [1, 2]}, "b": {"values": ["x", "y", "z"]}, "n": {"min": 0, "max": 1}},
                     method="grid")
    study = optuna.create_study(sampler=sweep.sampler())
    study.optimize(lambda trial: float(sweep.suggest(trial)["a"]), n_trials=50)
    seen = [tuple(trial.params[k] for k in ("a", "b", "n")) for trial in study.trials]
    assert sorted(seen) == sorted(itertools.product([1, 2], ["x", "y", "z"], [0, 1]))


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_every_sweep_file_translates_to_a_study(path: Path):
    raw = yaml.safe_load(path.read_text())
    sweep = Sweep.load(path, seed=0)
    sampler = {"grid": optuna.samplers.GridSampler, "random": optuna.samplers.RandomSampler,
               "bayes": optuna.samplers.TPESampler}[raw["method"]]
    assert isinstance(sweep.sampler(), sampler)
    assert isinstance(sweep.pruner(), optuna.pruners.HyperbandPruner) == ("early_terminate" in raw)
    study = optuna.create_study(direction=sweep.direction, sampler=sweep.sampler(), pruner=sweep.pruner())
    values = sweep.suggest(study.ask())
    for name, spec in raw["parameters"].items():
        if "values" in spec:
            assert values[name] in spec["values"]
        else:
            assert spec["min"] <= values[name] <= spec["max"]
    arguments = sweep.fit_arguments(values, REPO_ROOT)
    assert arguments[0] == "fit" and all(f"--{name}=" in " ".join(arguments) for name in values)


def test_fit_arguments_resolve_configs_and_expand_args(tmp_path: Path):
    sweep = Sweep({"method": "grid", "metric": {"name": "val/recall@20", "goal": "maximize"},
                   "parameters": {"model.init_args.embedding_dim": {"values": [8]}},
                   "command": ["lit_mmrec", "fit", "--config", "configs/experiment/lightgcn_synthetic.yaml",
                               "${args}"]}, "s.yaml")
    arguments = sweep.fit_arguments({"model.init_args.embedding_dim": 8, "flag": True}, REPO_ROOT)
    assert arguments == ["fit", "--config", str(REPO_ROOT / "configs/experiment/lightgcn_synthetic.yaml"),
                         "--model.init_args.embedding_dim=8", "--flag=true"]
    with pytest.raises(SweepConfigError, match="not a file under"):
        sweep.fit_arguments({}, tmp_path)


def tiny_sweep(tmp_path: Path, parameters: dict, epochs: int = 3, method: str = "random", **extra) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny", "method": method, "metric": {"name": "val/recall@20", "goal": "maximize"},
        "parameters": parameters, **extra,
        "command": ["lit_mmrec", "fit", "--config", "configs/experiment/lightgcn_synthetic.yaml",
                    f"--trainer.max_epochs={epochs}", "--trainer.enable_progress_bar=false",
                    f"--data.cache_dir={tmp_path / 'cache'}", *TINY_DATA, "${args}"],
    }))
    return path


def finished(output: Path, name: str = "tiny", storage: str | None = None) -> list[optuna.trial.FrozenTrial]:
    """Every trial of the sweep's study, from its journal in ``output`` or from the RDB ``storage``."""
    from optuna.storages.journal import JournalFileBackend

    storage = storage or optuna.storages.JournalStorage(JournalFileBackend(str(output / "study.journal")))
    return optuna.load_study(study_name=name, storage=storage).get_trials(False)


def validation_curve(run: Path) -> dict[int, float]:
    """Epoch -> val/recall@20 from a run folder's metrics.csv; fails if an epoch is there twice."""
    with (run / "metrics.csv").open(newline="") as handle:
        rows = [(int(row["epoch"]), float(row["val/recall@20"])) for row in csv.DictReader(handle)
                if row.get("val/recall@20")]
    assert len({epoch for epoch, _ in rows}) == len(rows), rows
    return dict(rows)


def checkpoint_hparams(run_dir: Path) -> dict:
    checkpoint = next(run_dir.rglob("best-*.ckpt"))
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["hyper_parameters"]


def test_a_sweep_runs_trials_writes_the_table_and_the_best_config_and_continues(tmp_path: Path, capsys):
    sweep_file = tiny_sweep(tmp_path, {
        "model.init_args.embedding_dim": {"values": [4, 16]},
        "model.init_args.reg_weight": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-2},
    }, method="bayes", early_terminate={"type": "hyperband", "min_iter": 1, "eta": 2})
    output = tmp_path / "sweep"
    main(["sweep", str(sweep_file), "--max-trials", "3", "--output", str(output), "--workdir", str(REPO_ROOT),
          "--seed", "0"])
    trials = finished(output)
    assert [t.number for t in trials] == [0, 1, 2] and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                                                           for t in trials)
    for trial in trials:
        attrs = trial.user_attrs
        assert 1 <= attrs["validations"] <= 3 and set(attrs["test"]) >= {"test/recall@20", "test/ndcg@20"}
        hparams = checkpoint_hparams(Path(attrs["run_dir"]))  # the sampled parameters reached the model
        assert hparams["embedding_dim"] == attrs["params"]["model.init_args.embedding_dim"]
        assert hparams["reg_weight"] == pytest.approx(attrs["params"]["model.init_args.reg_weight"])
        curve = validation_curve(Path(attrs["config"]).parent)
        assert attrs["best_value"] == max(curve.values()) and curve[attrs["best_epoch"]] == attrs["best_value"]
    best = max(trials, key=lambda t: t.user_attrs["best_value"])
    table = (output / "trials.md").read_text()
    assert table.count("\n") == 2 + 3 and f"{best.user_attrs['best_value']:.4f} (best)" in table
    assert "best config" in capsys.readouterr().out
    reloaded = build_cli(["fit", "--config", str(output / "best_config.yaml"), "--trainer.max_epochs=1",
                          f"--trainer.default_root_dir={tmp_path / 'rerun'}", "--test_after_fit=false"])
    assert reloaded.model.hparams["embedding_dim"] == best.user_attrs["params"]["model.init_args.embedding_dim"]
    # the same command with a larger budget continues the study: one more trial, the first three unchanged
    main(["sweep", str(sweep_file), "--max-trials", "4", "--output", str(output), "--workdir", str(REPO_ROOT)])
    again = finished(output)
    assert len(again) == 4 and [t.datetime_complete for t in again[:3]] == [t.datetime_complete for t in trials]


def test_a_random_or_bayes_sweep_without_a_budget_is_refused(tmp_path: Path):
    sweep_file = tiny_sweep(tmp_path, {"model.init_args.embedding_dim": {"values": [4, 16]}})
    with pytest.raises(SystemExit, match="needs --n-trials N or --max-trials T"):
        main(["sweep", str(sweep_file), "--output", str(tmp_path / "out"), "--workdir", str(REPO_ROOT)])


def test_the_pruner_stops_a_trial_that_is_clearly_worse(tmp_path: Path):
    # one Hyperband bracket with a rung after the first validation: of two trials there, only the better goes on
    sweep_file = tiny_sweep(tmp_path, {LR: {"values": [0.05, 0.0]}}, epochs=3,
                            early_terminate={"type": "hyperband", "min_iter": 1, "max_iter": 2, "eta": 3})
    output = tmp_path / "sweep"
    sweep = Sweep.load(sweep_file)
    study = open_study(sweep, output, None)
    study.enqueue_trial({LR: 0.05})
    study.enqueue_trial({LR: 0.0})  # a learning rate of 0 never leaves the random initial embeddings
    run_sweep(sweep, output, REPO_ROOT, n_trials=None, max_trials=2)
    good, bad = finished(output)
    assert good.state == TrialState.COMPLETE and good.user_attrs["validations"] == 3
    assert bad.state == TrialState.PRUNED and bad.user_attrs["validations"] == 1
    assert bad.user_attrs["best_value"] < good.intermediate_values[1]
    assert "test/recall@20" in bad.user_attrs["test"]  # a pruned trial still tests its best checkpoint


def sweep_worker(sweep_file: Path, output: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "lit_mmrec.cli", "sweep", str(sweep_file), "--output", str(output),
                             "--workdir", str(REPO_ROOT), *extra], env=env, cwd=REPO_ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_two_workers_share_one_study_without_repeating_a_trial(tmp_path: Path, storage: str):
    sweep_file = tiny_sweep(tmp_path, {LR: {"distribution": "log_uniform_values", "min": 1e-3, "max": 1e-1}},
                            epochs=2)
    output, url = tmp_path / "sweep", f"sqlite:///{tmp_path / 'study.db'}"
    extra = ["--storage", url] if storage == "sqlite" else []
    workers = [sweep_worker(sweep_file, output, "--max-trials", "5", *extra) for _ in range(2)]
    for worker in workers:
        _, errors = worker.communicate(timeout=600)
        assert worker.returncode == 0, errors[-2000:]
    trials = [t for t in finished(output, storage=url if extra else None) if t.state == TrialState.COMPLETE]
    assert len(trials) == 5
    assert len({t.user_attrs["pid"] for t in trials}) == 2  # both workers took trials
    assert len({t.params[LR] for t in trials}) == 5 and len({t.user_attrs["run_dir"] for t in trials}) == 5
    assert (output / "trials.md").read_text().count("complete") == 5


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_redoing_finished_trials(tmp_path: Path):
    sweep_file = tiny_sweep(tmp_path, {LR: {"values": [0.01, 0.02, 0.03]}}, epochs=8, method="grid")
    output = tmp_path / "sweep"
    worker = sweep_worker(sweep_file, output, "--seed", "0")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and worker.poll() is None:  # kill it inside its second trial
        started = [t for t in finished(output) if t.state == TrialState.RUNNING and t.number == 1] \
            if (output / "study.journal").exists() else []
        if started and list(Path(started[0].user_attrs["run_dir"]).rglob("last.ckpt")):
            os.killpg(worker.pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    worker.wait(timeout=60)
    assert worker.returncode == -signal.SIGKILL, "the worker ended before it could be killed mid-trial"
    first = finished(output)[0]
    assert first.state == TrialState.COMPLETE
    main(["sweep", str(sweep_file), "--output", str(output), "--workdir", str(REPO_ROOT), "--seed", "0"])
    trials = finished(output)
    assert trials[0].datetime_complete == first.datetime_complete  # not redone
    assert trials[1].state == TrialState.FAIL
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == 1)
    assert retry.state == TrialState.COMPLETE and retry.params == trials[1].params
    assert retry.user_attrs["run_dir"] == trials[1].user_attrs["run_dir"]  # continued from its last checkpoint
    assert min(retry.intermediate_values) > 1  # it started after the killed run's checkpointed epochs
    assert sorted(validation_curve(Path(retry.user_attrs["config"]).parent)) == list(range(8))
    assert sorted(t.params[LR] for t in trials if t.state == TrialState.COMPLETE) == [0.01, 0.02, 0.03]


def test_optuna_dashboard_serves_the_sweeps_study(tmp_path: Path):
    """``optuna-dashboard <output>/study.journal`` (README, Sweeps) reads the study a sweep writes."""
    dashboard = pytest.importorskip("optuna_dashboard")
    from optuna.storages.journal import JournalFileBackend

    sweep_file = tiny_sweep(tmp_path, {LR: {"values": [0.01]}}, epochs=1)
    main(["sweep", str(sweep_file), "--max-trials", "1", "--output", str(tmp_path / "sweep"),
          "--workdir", str(REPO_ROOT)])
    app = dashboard.wsgi(optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "sweep" / "study.journal"))))
    statuses: list[str] = []
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/api/studies", "SERVER_NAME": "localhost",
               "SERVER_PORT": "80", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO()}
    body = b"".join(app(environ, lambda status, headers, exc_info=None: statuses.append(status)))
    assert statuses == ["200 OK"]
    assert [study["study_name"] for study in json.loads(body)["study_summaries"]] == ["tiny"]


def test_workers_racing_to_create_the_database_retry(tmp_path: Path, monkeypatch):
    """Workers started together can both try to create an RDB's tables; the loser retries and joins."""
    from sqlalchemy.exc import IntegrityError

    calls = []

    class Racing(optuna.storages.RDBStorage):
        def __init__(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == 1:
                raise IntegrityError("INSERT INTO alembic_version", {}, Exception("UNIQUE constraint failed"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", Racing)
    monkeypatch.setattr("lit_mmrec.sweep.random.random", lambda: 0.0)
    sweep = Sweep.load(tiny_sweep(tmp_path, {LR: {"values": [0.01]}}))
    study = open_study(sweep, tmp_path / "out", f"sqlite:///{tmp_path / 'study.db'}")
    assert len(calls) == 2 and study.study_name == "tiny"


def test_a_setting_already_run_is_answered_from_the_earlier_trial(tmp_path: Path):
    """TPE can propose a combination of listed values it has run; the trial then takes the earlier result
    instead of training the same model again."""
    sweep = Sweep.load(tiny_sweep(tmp_path, {LR: {"values": [0.01, 0.02]}}, epochs=1))
    output = tmp_path / "sweep"
    study = open_study(sweep, output, None)
    for _ in range(2):
        study.enqueue_trial({LR: 0.01})
    run_sweep(sweep, output, REPO_ROOT, n_trials=None, max_trials=2)
    first, again = finished(output)
    assert again.state == TrialState.COMPLETE and again.value == first.value
    assert again.user_attrs["same_as"] == 0 and again.user_attrs["seconds"] == 0.0
    assert not (output / "trial-001").exists()  # nothing trained
    assert "complete (same as 0)" in (output / "trials.md").read_text()
