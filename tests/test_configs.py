"""Overlay configs (ablations, precision) compose after their model's experiment and set what they say;
experiment configs for datasets not shipped here train on a stand-in in the same format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

from lit_mmrec.lightning_cli import build_cli
from tests.conftest import REPO_ROOT, TINY_DATA

CONFIGS = REPO_ROOT / "configs"
OVERLAYS = [(model, path) for model in ("diffcl", "dasrec") for path in sorted((CONFIGS / "ablation" / model).glob("*.yaml"))]
OVERLAYS += [(model, path) for model in ("diffcl", "dasrec") for path in sorted((CONFIGS / "precision").glob("*.yaml"))]


@pytest.mark.parametrize(("model", "overlay"), OVERLAYS, ids=lambda value: getattr(value, "stem", value))
def test_overlay_composes_after_its_experiment(model: str, overlay: Path, tmp_path: Path):
    expected = OmegaConf.to_container(OmegaConf.load(overlay))["model"]["init_args"]
    assert expected, f"{overlay} sets nothing"
    cli = build_cli(["--config", str(CONFIGS / "experiment" / f"{model}_synthetic.yaml"), "--config", str(overlay),
                     "--trainer.default_root_dir", str(tmp_path), "--data.cache_dir", str(tmp_path / "cache"),
                     *TINY_DATA], run=False)
    assert type(cli.model).__name__.lower() == model
    for key, value in expected.items():
        assert cli.model.hparams[key] == value, f"{overlay.name}: {key}"


@pytest.mark.parametrize("model", ["diffcl", "dasrec"])
def test_bfloat16_overlays_compose_together(model: str, tmp_path: Path):
    overlays = [arg for path in sorted((CONFIGS / "precision").glob("bf16_*.yaml")) for arg in ("--config", str(path))]
    cli = build_cli(["--config", str(CONFIGS / "experiment" / f"{model}_synthetic.yaml"), *overlays,
                     "--trainer.default_root_dir", str(tmp_path), "--data.cache_dir", str(tmp_path / "cache"),
                     *TINY_DATA], run=False)
    assert cli.model.hparams["denoiser_precision"] == cli.model.hparams["contrastive_precision"] == "bfloat16"


def test_float32_overlay_undoes_the_tiktok_configs_bfloat16_denoisers(tmp_path: Path, monkeypatch):
    """diffcl_tiktok.yaml runs its denoisers in bfloat16; fp32_denoisers.yaml after it puts them back in float32
    and leaves every other setting of the experiment as it was (on a stand-in dataset: no TikTok files needed)."""
    monkeypatch.setenv("LIT_MMREC_DATA", str(tmp_path))  # the TikTok data config names its root through it
    experiment = CONFIGS / "experiment" / "diffcl_tiktok.yaml"
    common = ["--trainer.default_root_dir", str(tmp_path), "--data.cache_dir", str(tmp_path / "cache"), *TINY_DATA]
    committed = build_cli(["--config", str(experiment), *common], run=False)
    overlaid = build_cli(["--config", str(experiment), "--config", str(CONFIGS / "precision" / "fp32_denoisers.yaml"),
                          *common], run=False)
    assert committed.model.hparams["denoiser_precision"] == "bfloat16"
    assert overlaid.model.hparams["denoiser_precision"] == "float32"
    assert {k: v for k, v in overlaid.model.hparams.items() if k != "denoiser_precision"} == \
        {k: v for k, v in committed.model.hparams.items() if k != "denoiser_precision"}


# experiment configs whose data is an MMRec-format Amazon dataset that ../shared/data does not hold
MMREC_EXPERIMENTS = sorted(path for path in (CONFIGS / "experiment").glob("*.yaml")
                           if path.stem.rsplit("_", 1)[-1] in ("baby", "sports", "video"))


def write_mmrec_stand_in(root: Path, name: str, n_users: int = 30, n_items: int = 24, seed: int = 0) -> None:
    """``<root>/<name>/<name>.inter`` (8 items per user: 6 train, 1 valid, 1 test) and 4,096-d image and
    384-d text features, the shapes of the real Amazon files."""
    rng = np.random.default_rng(seed)
    folder = root / name
    folder.mkdir(parents=True)
    lines = ["userID\titemID\trating\ttimestamp\tx_label"]
    for user in range(n_users):
        for position, item in enumerate(rng.choice(n_items, size=8, replace=False)):
            lines.append(f"{user}\t{item}\t5\t{position}\t{0 if position < 6 else position - 5}")
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    np.save(folder / "image_feat.npy", rng.standard_normal((n_items, 4096)).astype(np.float32))
    np.save(folder / "text_feat.npy", rng.standard_normal((n_items, 384)).astype(np.float32))


@pytest.mark.parametrize("config", MMREC_EXPERIMENTS, ids=lambda path: path.stem)
def test_mmrec_dataset_experiments_train(config: Path, tmp_path: Path, monkeypatch):
    """Every key of the Baby / Sports / Video experiment files is one its classes accept, and the config
    trains and tests, on a stand-in dataset with the real files' names and feature widths."""
    name = config.stem.rsplit("_", 1)[-1]
    write_mmrec_stand_in(tmp_path / "data", name)
    monkeypatch.setenv("LIT_MMREC_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("LIT_MMREC_CACHE", str(tmp_path / "cache"))
    cli = build_cli(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path / "runs"),
                     "--trainer.max_epochs", "1", "--trainer.logger", "false",
                     "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"])
    assert (cli.datamodule.n_users, cli.datamodule.n_items) == (30, 24)
    expected_model = yaml.safe_load(config.read_text())["model"]
    if isinstance(expected_model, dict):
        assert type(cli.model).__name__ == expected_model["class_path"].rsplit(".", 1)[-1]
    assert 0.0 <= float(cli.trainer.logged_metrics["test/recall@20"]) <= 1.0


def _class_defaults(class_path: str) -> dict:
    import importlib
    import inspect

    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    defaults = {}
    for klass in reversed(cls.__mro__):
        if "__init__" in klass.__dict__:
            defaults.update({key: p.default for key, p in inspect.signature(klass.__init__).parameters.items()
                             if p.default is not inspect.Parameter.empty})
    return defaults


@pytest.mark.parametrize("path", sorted((CONFIGS / "experiment").glob("*.yaml")) + sorted((CONFIGS / "model").glob("*.yaml")),
                         ids=lambda path: f"{path.parent.name}/{path.stem}")
def test_configs_state_only_what_differs_from_the_class_defaults(path: Path):
    """One home for each default: the class's signature. Model files name the class (and the optimizer, which
    sweeps tune, and its schedule); experiment files state only the values they change."""
    model = yaml.safe_load(path.read_text())["model"] if path.parent.name == "experiment" else yaml.safe_load(path.read_text())
    if not isinstance(model, dict):
        return  # composes configs/model/<name>.yaml
    defaults = _class_defaults(model["class_path"])
    restated = {key: value for key, value in (model.get("init_args") or {}).items()
                if key not in ("optimizer", "scheduler") and key in defaults and defaults[key] == value}
    assert not restated, f"{path.name} restates the class defaults {restated}"
    if path.parent.name == "model":
        assert set(model.get("init_args") or {}) <= {"optimizer", "scheduler"}, \
            f"{path.name} sets more than the optimizer and its schedule"


def test_split_overlay_keeps_the_experiment_and_resplits_tiktok(tmp_path: Path, monkeypatch):
    from lit_mmrec.data import Resplit
    from tests.conftest import require_dataset

    monkeypatch.setenv("LIT_MMREC_DATA", str(require_dataset("tiktok").parent))
    common = ["--trainer.default_root_dir", str(tmp_path), "--data.cache_dir", str(tmp_path / "cache")]
    experiment = str(CONFIGS / "experiment" / "lightgcn_tiktok.yaml")
    published = build_cli(["--config", experiment, *common], run=False)
    resplit = build_cli(["--config", experiment, "--config", str(CONFIGS / "split" / "tiktok_resplit.yaml"), *common],
                        run=False)
    assert isinstance(resplit.datamodule.source, Resplit) and resplit.datamodule.source.seed == 7
    assert dict(resplit.model.hparams) == dict(published.model.hparams)
    assert resplit.datamodule.data.valid.nnz == 3099 and published.datamodule.data.valid.nnz == 3051
