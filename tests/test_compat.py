"""lit_mmrec.compat: each private-API use gives the same answer as its public fallback."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lit_mmrec import compat


def test_onednn_linear_matches_the_plain_product_or_steps_aside(monkeypatch):
    rows, table = torch.randn(7, 5), torch.randn(11, 5)
    scores = compat.onednn_linear(rows, table)
    if scores is not None:  # the kernel exists in this torch build
        torch.testing.assert_close(scores, rows @ table.T)
    monkeypatch.setattr(compat, "_ONEDNN_LINEAR", None)
    assert compat.onednn_linear(rows, table) is None
    from lit_mmrec.models.components.scoring import inner_product_scores

    with torch.no_grad():
        torch.testing.assert_close(inner_product_scores(rows, table), rows @ table.T)


def test_bf16_probe_falls_back_to_false(monkeypatch):
    assert isinstance(compat.onednn_bf16_supported(), bool)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert compat.onednn_bf16_supported() is False


@pytest.mark.parametrize(("kwargs", "name", "expected"), [
    ({"find_unused_parameters": True}, "ddp", True),
    ({}, "ddp", False),
    (None, "ddp_find_unused_parameters_true", True),
    (None, "ddp", False),
])
def test_ddp_unused_parameters_from_the_kwargs_or_the_strategy_name(kwargs, name, expected):
    strategy = SimpleNamespace(strategy_name=name)
    if kwargs is not None:
        strategy._ddp_kwargs = kwargs
    assert compat.ddp_finds_unused_parameters(strategy) is expected


def test_real_ddp_strategy_is_read():
    from lightning.pytorch.strategies import DDPStrategy

    assert compat.ddp_finds_unused_parameters(DDPStrategy(find_unused_parameters=True))
    assert not compat.ddp_finds_unused_parameters(DDPStrategy())


def test_save_last_checkpoint_fallback_writes_last_ckpt(tmp_path):
    saved = []
    trainer = SimpleNamespace(sanity_checking=False, fast_dev_run=False, save_checkpoint=saved.append)
    callback = SimpleNamespace(dirpath=str(tmp_path), CHECKPOINT_NAME_LAST="last", FILE_EXTENSION=".ckpt")
    compat.save_last_checkpoint(callback, trainer)
    assert saved == [f"{tmp_path}/last.ckpt"] and callback.last_model_path == saved[0]
    trainer.sanity_checking = True
    compat.save_last_checkpoint(callback, trainer)
    assert len(saved) == 1


def test_wandb_defaults_keep_configured_values_and_fall_back_with_a_warning(caplog):
    logger = SimpleNamespace(_wandb_init={"name": "mine"}, _name="mine", _save_dir=None)
    compat.wandb_logger_defaults(logger, "LightGCN-x", "/runs/a")
    assert logger._wandb_init == {"name": "mine", "dir": "/runs/a"} and logger._save_dir == "/runs/a"
    with caplog.at_level("WARNING", logger="lit_mmrec.compat"):
        compat.wandb_logger_defaults(SimpleNamespace(), "LightGCN-x", "/runs/a")
    assert "default name and folder" in caplog.text


def test_wandb_logger_resume_sets_the_run_id_unless_configured(caplog):
    logger = SimpleNamespace(_wandb_init={"name": "x"}, _id=None)
    compat.wandb_logger_resume(logger, "abc123")
    assert logger._wandb_init == {"name": "x", "id": "abc123", "resume": "allow"} and logger._id == "abc123"
    configured = SimpleNamespace(_wandb_init={"id": "mine"})
    compat.wandb_logger_resume(configured, "abc123")
    assert configured._wandb_init == {"id": "mine"}
    with caplog.at_level("WARNING", logger="lit_mmrec.compat"):
        compat.wandb_logger_resume(SimpleNamespace(), "abc123")
    assert "new W&B run" in caplog.text
