"""W&B tracking (offline, disabled, mode resolution) and the sweep files, through the real CLI."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from lit_mmrec.tracking import TrackedWandbLogger, resolve_wandb_mode, wandb_api_key_configured
from tests.conftest import REPO_ROOT, TINY_DATA, run_cli

SWEEPS = sorted((REPO_ROOT / "sweeps").glob("*.yaml"))


@pytest.fixture
def no_wandb_credentials(monkeypatch, tmp_path):
    for name in ("WANDB_MODE", "WANDB_DISABLED", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("LIT_MMREC_OUTPUT", str(tmp_path))  # where configs/logger/wandb.yaml puts runs


def test_mode_follows_the_environment(no_wandb_credentials, monkeypatch, tmp_path):
    assert not wandb_api_key_configured()
    assert resolve_wandb_mode("auto") == "offline"  # no key: never waits for a login
    assert resolve_wandb_mode("disabled") == "disabled"
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password 0123456789abcdef\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert resolve_wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert resolve_wandb_mode("online") == "offline"  # the environment wins, W&B's legacy name mapped
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_DISABLED", "true")
    assert resolve_wandb_mode("auto") == "disabled"
    with pytest.raises(ValueError, match="absolute"):
        TrackedWandbLogger(save_dir="relative/dir")


def wandb_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["--config", str(REPO_ROOT / "configs" / "experiment" / "lightgcn_synthetic.yaml"),
            "--config", str(REPO_ROOT / "configs" / "logger" / "wandb.yaml"),
            "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
            "--data.cache_dir", str(tmp_path / "cache"), "--trainer.max_epochs", "2",
            *TINY_DATA, *extra]


def wandb_records(path: Path) -> Iterator[bytes]:
    """Raw records of an offline run's ``run-*.wandb`` file (W&B's LevelDB-style log: a 7-byte header,
    32 KiB blocks of chunks with a 7-byte crc/length/type header; types 1 full, 2 first, 3 middle, 4 last)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, block, pending = 7, 32768, b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # block trailer
            position += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if length == 0 and kind == 0:
            position += left
            continue
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk


def complete_offline_records(run_dir: Path, timeout: float = 120.0) -> list:
    """The records of an offline run once its file holds the ``exit`` record.

    ``run.finish()`` returns when W&B's service has processed the exit, but the service closes (flushes)
    the run's file asynchronously afterwards, so on a busy machine the file can still be short for a while.
    """
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2

    deadline = time.monotonic() + timeout
    while True:
        records = []
        try:
            for raw in wandb_records(next(run_dir.glob("run-*.wandb"))):
                record = wandb_internal_pb2.Record()
                record.ParseFromString(raw)
                records.append(record)
        except (AssertionError, DecodeError, struct.error, StopIteration):
            records = []  # not written yet, or cut mid-record
        if records and records[-1].WhichOneof("record_type") == "exit":
            return records
        assert time.monotonic() < deadline, f"{run_dir}: no exit record after {timeout} s"
        time.sleep(0.2)


def read_offline_run(run_dir: Path) -> tuple[dict[str, list], dict[str, object]]:
    """History (key -> values in order) and config (key -> value) recorded by an offline W&B run."""
    history: dict[str, list] = {}
    config: dict[str, object] = {}
    for record in complete_offline_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            for item in record.history.item:
                history.setdefault(item.key or "/".join(item.nested_key), []).append(json.loads(item.value_json))
        elif kind == "config":
            for item in record.config.update:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return history, config


def test_offline_run_records_metrics_and_config(no_wandb_credentials, tmp_path):
    cli = run_cli("fit", *wandb_args(tmp_path))
    logger = next(lg for lg in cli.trainer.loggers if isinstance(lg, TrackedWandbLogger))
    assert logger.resolved_mode == "offline"
    run_dir = Path(logger.experiment.dir).parent  # the run is finished by the CLI; its files stay
    run_folder = Path(cli.trainer.log_dir)  # one folder per run: config, metrics, checkpoints, W&B files
    assert run_folder == tmp_path / "lightning_logs" / "version_0"
    assert run_dir.name.startswith("offline-run-") and run_dir.parent == run_folder / "wandb"
    assert (run_folder / "config.yaml").is_file() and list((run_folder / "checkpoints").glob("best-*.ckpt"))
    assert logger.experiment.name.startswith("LightGCN-synthetic")  # <model>-<dataset fingerprint>
    history, config = read_offline_run(run_dir)
    assert config["model"]["class_path"] == "lit_mmrec.models.LightGCN"
    assert config["trainer"]["max_epochs"] == 2
    for key in ("train/bpr_loss", "train/reg_loss", "train/epoch_seconds", "train/lr", "train/peak_memory_mb",
                "val/recall@20", "val/ndcg@20", "val/recall@20_best", "val/best_epoch", "test/recall@20", "test/ndcg@20"):
        assert key in history, key
    assert len(history["val/recall@20"]) == 2  # one value per epoch: a curve in W&B
    assert history["test/recall@20"][-1] == pytest.approx(float(cli.trainer.logged_metrics["test/recall@20"]))
    # the top-K curve: one line per metric over the cut-offs 5, 10, 20, 50, stored as a W&B table
    assert history["test/topk_curve_table/_type"] == ["table-file"]
    table = json.loads((run_dir / "files" / history["test/topk_curve_table/path"][0]).read_text())
    column = {name: index for index, name in enumerate(table["columns"])}  # step (K), lineKey, lineVal
    points = {(row[column["lineKey"]], row[column["step"]]): row[column["lineVal"]] for row in table["data"]}
    assert {k for _, k in points} == {5, 10, 20, 50} and {name for name, _ in points} >= {"recall", "ndcg"}
    assert points[("recall", 20)] == pytest.approx(history["test/recall@20"][-1])
    # the CSV log holds the same metrics
    assert "val/recall@20" in (run_folder / "metrics.csv").read_text().splitlines()[0]


def test_a_resumed_fit_continues_its_wandb_run(no_wandb_credentials, tmp_path):
    """``fit --ckpt_path <run>/checkpoints/last.ckpt`` logs to the W&B run of the run's first part: the same
    run id, with the later epochs' history."""
    first = run_cli("fit", *wandb_args(tmp_path), "--test_after_fit", "false")
    run_folder = Path(first.trainer.log_dir)
    resumed = run_cli("fit", *wandb_args(tmp_path, "--trainer.max_epochs", "4"), "--ckpt_path",
                      str(run_folder / "checkpoints" / "last.ckpt"))
    runs = sorted((run_folder / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({run.name.rsplit("-", 1)[-1] for run in runs}) == 1  # one W&B run id
    logger = next(lg for lg in resumed.trainer.loggers if isinstance(lg, TrackedWandbLogger))
    assert logger.experiment.id == runs[0].name.rsplit("-", 1)[-1]
    history, _ = read_offline_run(runs[-1])
    assert len(history["val/recall@20"]) == 2 and "test/recall@20" in history  # epochs 2-3, then the test


def test_disabled_run_still_writes_csv(no_wandb_credentials, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cli = run_cli("fit", *wandb_args(tmp_path), "--test_after_fit", "false")
    assert not list(tmp_path.rglob("wandb"))
    assert (Path(cli.trainer.log_dir) / "metrics.csv").is_file()
    assert "val/recall@20" in cli.trainer.callback_metrics


def sweep_schema() -> dict:
    """W&B's own sweep-config JSON schema, from its ``sweeps`` package (the ``dev`` extra installs it)."""
    spec = importlib.util.find_spec("sweeps")
    if spec is None or spec.origin is None:
        pytest.fail("W&B's `sweeps` package is missing: `pip install -e \".[dev]\"` installs it")
    return json.loads((Path(spec.origin).parent / "config" / "schema.json").read_text())


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_sweep_files_validate_against_the_wandb_schema(path: Path):
    jsonschema = pytest.importorskip("jsonschema")
    config = yaml.safe_load(path.read_text())
    errors = [e.message for e in jsonschema.Draft7Validator(sweep_schema()).iter_errors(config)]
    assert not errors
    assert config["metric"] == {"name": "val/recall@20", "goal": "maximize"}
    assert config["command"][:2] == ["lit_mmrec", "fit"] and config["command"][-1] == "${args}"
    if config["method"] != "grid":
        assert config["early_terminate"]["type"] == "hyperband"
    for argument in config["command"]:
        if argument.endswith(".yaml"):
            assert (REPO_ROOT / argument).is_file(), argument


def experiment_model(experiment: Path) -> dict:
    """The model section an experiment config names, inline or through a ``configs/model`` file."""
    model = yaml.safe_load(experiment.read_text())["model"]
    if isinstance(model, str):
        model = yaml.safe_load((experiment.parent / model).read_text())
    return model


def class_of(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def accepted_arguments(cls: type) -> set[str]:
    return {name for klass in cls.__mro__ if "__init__" in vars(klass)
            for name in inspect.signature(klass.__init__).parameters}


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_sweep_parameters_are_arguments_of_the_swept_model(path: Path):
    """A misspelt parameter would only fail once an agent started a trial; here it fails at once."""
    config = yaml.safe_load(path.read_text())
    experiment = next(REPO_ROOT / arg for arg in config["command"] if arg.startswith("configs/experiment/"))
    model = experiment_model(experiment)
    model_class = class_of(model["class_path"])
    accepted = accepted_arguments(model_class)
    for parameter in config["parameters"]:
        section, init_args, name = parameter.split(".", 2)
        assert (section, init_args) == ("model", "init_args"), parameter
        head, _, nested = name.partition(".")
        assert head in accepted, f"{path.name}: {model_class.__name__} has no argument {head!r}"
        if nested:  # into a class argument the model config spells out, e.g. optimizer.init_args.lr
            inner = model["init_args"][head]
            assert nested.startswith("init_args."), parameter
            inner_name = nested.removeprefix("init_args.")
            assert inner_name in accepted_arguments(class_of(inner["class_path"])), (
                f"{path.name}: {inner['class_path']} has no argument {inner_name!r}")


def test_schema_rejects_a_bad_sweep():
    jsonschema = pytest.importorskip("jsonschema")
    bad = {"method": "bayes", "metric": {"name": "val/recall@20", "goal": "up"}, "parameters": {}}
    assert list(jsonschema.Draft7Validator(sweep_schema()).iter_errors(bad))


def test_agent_command_built_by_wandb_runs_fit_with_the_parameters(no_wandb_credentials, monkeypatch, tmp_path):
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("LIT_MMREC_DATA", str(tmp_path))  # the TikTok path is resolved, then overridden
    config = yaml.safe_load((REPO_ROOT / "sweeps" / "diffcl_tiktok_random.yaml").read_text())
    sampled = {name: spec["values"][1] for name, spec in config["parameters"].items()}
    args = create_sweep_command_args({"args": {k: {"value": v} for k, v in sampled.items()}})["args"]
    command = create_sweep_command(list(config["command"]))
    at = command.index("${args}")
    command = command[:at] + args + command[at + 1:]  # what `wandb agent` executes
    assert command[0] == "lit_mmrec"
    # run it on tiny synthetic data instead of TikTok (paths made absolute, data overridden)
    argv = [str(REPO_ROOT / a) if a.endswith(".yaml") else a for a in command[2:]]
    cli = run_cli(command[1], *argv, "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path),
                  "--trainer.enable_progress_bar", "false", "--data.cache_dir", str(tmp_path / "cache"),
                  "--test_after_fit", "false", *TINY_DATA)
    for name, value in sampled.items():
        assert cli.model.hparams[name.rsplit(".", 1)[-1]] == pytest.approx(value)  # reached the model
