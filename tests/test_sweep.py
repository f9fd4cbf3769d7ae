"""The local sweep: parameter distributions, grid order, hyperband rule, Bayesian proposals, and a
3-trial sweep of real ``lit_mmrec fit`` runs on tiny synthetic data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lit_mmrec.cli import main
from lit_mmrec.lightning_cli import build_cli
from lit_mmrec.sweep import (
    EarlyTermination,
    SweepConfigError,
    SweepSpec,
    TrialRecord,
    expected_improvement_proposal,
    parse_parameter,
    propose,
)
from tests.conftest import REPO_ROOT, TINY_DATA


def spec_from(parameters: dict, method: str = "random", **extra) -> SweepSpec:
    raw = {"method": method, "metric": {"name": "val/recall@20", "goal": "maximize"},
           "parameters": parameters, "command": ["lit_mmrec", "fit", "${args}"], **extra}
    return SweepSpec.from_dict(raw, "test.yaml")


def test_parameter_values_from_unit_coordinates():
    choice = parse_parameter("a", {"values": ["w", "x", "y", "z"]}, "f")
    assert [choice.from_unit(u) for u in (0.0, 0.3, 0.74, 0.99)] == ["w", "x", "y", "z"]
    assert choice.to_unit("y") == pytest.approx(0.625)  # centre of its quarter
    weighted = parse_parameter("a", {"values": [1, 2], "probabilities": [0.9, 0.1]}, "f")
    assert weighted.from_unit(0.89) == 1 and weighted.from_unit(0.91) == 2
    integer = parse_parameter("n", {"min": 1, "max": 4}, "f")
    assert integer.distribution == "int_uniform"
    assert [integer.from_unit(u) for u in (0.0, 0.26, 0.99, 1.0)] == [1, 2, 4, 4]
    log_values = parse_parameter("lr", {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2}, "f")
    assert log_values.from_unit(0.5) == pytest.approx(1e-3)
    assert log_values.to_unit(1e-3) == pytest.approx(0.5)
    exponent = parse_parameter("lr", {"distribution": "log_uniform", "min": -2.0, "max": 0.0}, "f")
    assert exponent.from_unit(0.5) == pytest.approx(math.exp(-1.0))
    normal = parse_parameter("x", {"distribution": "normal", "mu": 1.0, "sigma": 2.0}, "f")
    assert normal.from_unit(0.5) == pytest.approx(1.0)
    assert normal.from_unit(0.8413447) == pytest.approx(3.0, abs=1e-4)  # Phi(1) -> mu + sigma
    quantised = parse_parameter("x", {"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": 0.25}, "f")
    assert quantised.from_unit(0.3) == pytest.approx(0.25)
    assert quantised.grid() == [0.0, 0.25, 0.5, 0.75, 1.0]
    for parameter, value in ((integer, 3), (log_values, 3e-3), (normal, -0.5)):
        assert parameter.from_unit(parameter.to_unit(value)) == pytest.approx(value)


def test_bad_parameters_name_the_field():
    with pytest.raises(SweepConfigError, match=r"f: parameters\.lr.*min \(1\) must be below max"):
        parse_parameter("lr", {"min": 1, "max": 1}, "f")
    with pytest.raises(SweepConfigError, match="beta.*not supported"):
        parse_parameter("x", {"distribution": "beta", "a": 1, "b": 1}, "f")
    with pytest.raises(SweepConfigError, match="grid search needs a finite set"):
        parse_parameter("x", {"min": 0.0, "max": 1.0}, "f").grid()
    with pytest.raises(SweepConfigError, match="method must be one of"):
        spec_from({"a": {"value": 1}}, method="hyperopt")
    with pytest.raises(SweepConfigError, match=r"must contain \$\{args\}"):
        SweepSpec.from_dict({"method": "grid", "metric": {"name": "m"}, "parameters": {"a": {"value": 1}},
                             "command": ["lit_mmrec", "fit"]}, "f")


def test_grid_enumerates_every_combination_in_file_order():
    spec = spec_from({"a": {"values": [1, 2]}, "b": {"values": ["x", "y", "z"]}}, method="grid")
    assert spec.grid_size() == 6
    proposals = [propose(spec, index, [], seed=0) for index in range(7)]
    assert proposals[:3] == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 1, "b": "z"}]
    assert proposals[5] == {"a": 2, "b": "z"} and proposals[6] is None


def test_random_proposals_depend_only_on_seed_and_index():
    spec = spec_from({"lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1}})
    first = propose(spec, 3, [], seed=7)
    assert first == propose(spec, 3, [TrialRecord(0, {"lr": 0.01}, value=0.5)], seed=7)
    assert first != propose(spec, 4, [], seed=7)
    assert 1e-4 <= first["lr"] <= 1e-1


def test_hyperband_stops_trials_outside_the_top_fraction():
    rule = EarlyTermination.from_spec({"type": "hyperband", "min_iter": 2, "eta": 2}, "f")
    assert rule.bands[:3] == (2, 4, 8)
    finished = [[0.1, 0.2, 0.3, 0.4], [0.1, 0.3, 0.35, 0.5]]
    # at band 2 the values are 0.2, 0.3 and the trial's own; the threshold is the int(3 / 2) = 1st best
    weak, strong = [0.05, 0.1], [0.25, 0.21]
    assert rule.should_stop(weak, finished + [weak], maximize=True)  # best 0.1 < threshold 0.2
    assert not rule.should_stop(strong, finished + [strong], maximize=True)  # best 0.25 >= 0.2
    assert not rule.should_stop([0.0], finished + [[0.0]], maximize=True)  # no band reached yet
    strict = EarlyTermination.from_spec({"type": "hyperband", "min_iter": 2, "eta": 2, "strict": True}, "f")
    assert strict.should_stop([0.25, 0.15], finished + [[0.25, 0.15]], maximize=True)  # value at band: 0.15
    losses = [[1.0, 0.9], [1.0, 0.5]]
    assert rule.should_stop([1.0, 0.95], losses + [[1.0, 0.95]], maximize=False)
    max_iter = EarlyTermination.from_spec({"type": "hyperband", "max_iter": 27, "s": 2, "eta": 3}, "f")
    assert max_iter.bands == (3, 9)


def test_bayes_proposes_near_the_optimum_of_a_smooth_objective():
    observed = np.array([[0.1], [0.4], [0.9], [0.6]])
    values = -((observed[:, 0] - 0.7) ** 2)
    proposal = expected_improvement_proposal(observed, values, np.random.default_rng(0))
    assert 0.6 < proposal[0] < 0.9  # between the two best points, towards the optimum at 0.7
    spec = spec_from({"x": {"min": 0.0, "max": 1.0}}, method="bayes")
    records = [TrialRecord(i, {"x": float(x)}, value=float(v)) for i, (x, v) in enumerate(zip(observed[:, 0], values))]
    assert 0.6 < propose(spec, 4, records, seed=0)["x"] < 0.9


def test_bayes_does_not_propose_settings_already_run():
    # 2 x 2 categorical settings, three run; the GP favours the best one, which must not be repeated
    spec = spec_from({"a": {"values": [1, 2]}, "b": {"values": ["x", "y"]}}, method="bayes")
    runs = [({"a": 1, "b": "x"}, 0.1), ({"a": 2, "b": "x"}, 0.9), ({"a": 1, "b": "y"}, 0.2)]
    records = [TrialRecord(i, params, status="finished", value=v) for i, (params, v) in enumerate(runs)]
    for index in range(3, 8):
        assert propose(spec, index, records, seed=index) == {"a": 2, "b": "y"}


def test_fit_arguments_resolve_configs_and_expand_args(tmp_path: Path):
    spec = SweepSpec.from_dict({
        "method": "grid", "metric": {"name": "val/recall@20", "goal": "maximize"},
        "parameters": {"model.init_args.embedding_dim": {"values": [8]}, "trainer.callbacks": {"value": None}},
        "command": ["lit_mmrec", "fit", "--config", "configs/experiment/lightgcn_synthetic.yaml", "${args}"],
    }, "s.yaml")
    arguments = spec.fit_arguments({"model.init_args.embedding_dim": 8, "flag": True}, REPO_ROOT)
    assert arguments == ["fit", "--config", str(REPO_ROOT / "configs/experiment/lightgcn_synthetic.yaml"),
                         "--model.init_args.embedding_dim=8", "--flag=true"]
    with pytest.raises(SweepConfigError, match="not a file under"):
        spec.fit_arguments({}, tmp_path)


def checkpoint_hparams(run_dir: Path) -> dict:
    checkpoint = next(run_dir.rglob("best-*.ckpt"))
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["hyper_parameters"]


def test_local_sweep_runs_three_trials_and_writes_the_best_config(tmp_path: Path, capsys):
    sweep_file = tmp_path / "tiny.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "tiny", "method": "bayes",
        "metric": {"name": "val/recall@20", "goal": "maximize"},
        "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2},
        "parameters": {
            "model.init_args.embedding_dim": {"values": [4, 16]},
            "model.init_args.reg_weight": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-2},
        },
        "command": ["lit_mmrec", "fit", "--config", "configs/experiment/lightgcn_synthetic.yaml",
                    "--trainer.max_epochs=3", "--trainer.enable_progress_bar=false",
                    f"--data.cache_dir={tmp_path / 'cache'}", *TINY_DATA, "${args}"],
    }))
    output = tmp_path / "sweep"
    main(["sweep", str(sweep_file), "--count", "3", "--output", str(output), "--workdir", str(REPO_ROOT)])
    records = [json.loads(line) for line in (output / "trials.jsonl").read_text().splitlines()]
    assert [record["index"] for record in records] == [0, 1, 2]
    for record in records:
        assert record["status"] in ("finished", "stopped")
        assert 1 <= len(record["history"]) <= 3 and record["value"] == max(record["history"])
        assert set(record["test"]) >= {"test/recall@20", "test/ndcg@20", "test/precision@20"}
        hparams = checkpoint_hparams(Path(record["run_dir"]))  # the sampled parameters reached the model
        assert hparams["embedding_dim"] == record["params"]["model.init_args.embedding_dim"]
        assert hparams["reg_weight"] == pytest.approx(record["params"]["model.init_args.reg_weight"])
    best = max(records, key=lambda record: record["value"])
    table = (output / "trials.md").read_text()
    assert table.count("\n") == 2 + 3 and f"{best['value']:.4f} (best)" in table
    assert "best config" in capsys.readouterr().out
    reloaded = build_cli(["fit", "--config", str(output / "best_config.yaml"), "--trainer.max_epochs=1",
                          f"--trainer.default_root_dir={tmp_path / 'rerun'}", "--test_after_fit=false"])
    assert reloaded.model.hparams["embedding_dim"] == best["params"]["model.init_args.embedding_dim"]
    assert reloaded.model.hparams["reg_weight"] == pytest.approx(best["params"]["model.init_args.reg_weight"])
    # a rerun resumes: only the missing trial runs, and the journal keeps the first three unchanged
    main(["sweep", str(sweep_file), "--count", "4", "--output", str(output), "--workdir", str(REPO_ROOT)])
    lines = (output / "trials.jsonl").read_text().splitlines()
    assert len(lines) == 4 and [json.loads(line) for line in lines[:3]] == records
