"""Overlay configs (ablations, precision) compose after their model's experiment and set what they say."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lit_mmrec.cli import build_cli
from tests.conftest import REPO_ROOT
from tests.test_cli import TINY_DATA

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
def test_precision_overlays_compose_together(model: str, tmp_path: Path):
    overlays = [arg for path in sorted((CONFIGS / "precision").glob("*.yaml")) for arg in ("--config", str(path))]
    cli = build_cli(["--config", str(CONFIGS / "experiment" / f"{model}_synthetic.yaml"), *overlays,
                     "--trainer.default_root_dir", str(tmp_path), "--data.cache_dir", str(tmp_path / "cache"),
                     *TINY_DATA], run=False)
    assert cli.model.hparams["denoiser_precision"] == cli.model.hparams["contrastive_precision"] == "bfloat16"
