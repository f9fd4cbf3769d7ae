"""Reduced-precision products: the dtype of a setting, the hardware check's warning, row padding."""

from __future__ import annotations

import logging

import pytest
import torch

from lit_mmrec.models.components import precision as precision_module
from lit_mmrec.models.components.precision import compute_dtype, pad_rows, warn_if_emulated


def test_compute_dtype_of_each_setting_and_a_clear_error_otherwise():
    assert compute_dtype("float32") is None  # the operands' own dtype
    assert compute_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ValueError, match="contrastive_precision must be one of .*'float16'"):
        compute_dtype("float16", "contrastive_precision")


def test_bfloat16_without_matrix_units_warns_naming_the_option(monkeypatch, caplog):
    monkeypatch.setattr(precision_module, "native_bfloat16_products", lambda device: False)
    with caplog.at_level(logging.WARNING, logger=precision_module.__name__):
        warn_if_emulated("float32", torch.device("cpu"))
        assert not caplog.records
        warn_if_emulated("bfloat16", torch.device("cpu"))
        warn_if_emulated("bfloat16", torch.device("cpu"), "contrastive_precision")
    assert [record.message.split()[0] for record in caplog.records] == ["denoiser_precision", "contrastive_precision"]
    assert all("emulated" in record.message for record in caplog.records)
    monkeypatch.undo()
    assert isinstance(precision_module.native_bfloat16_products(torch.device("cpu")), bool)


def test_pad_rows_appends_zero_rows_up_to_the_multiple():
    x = torch.arange(1.0, 35.0).view(17, 2)
    padded = pad_rows(x, 16)
    assert padded.shape == (32, 2)
    assert torch.equal(padded[:17], x) and not padded[17:].any()
    exact = torch.ones(32, 3)
    assert pad_rows(exact, 16) is exact
    assert pad_rows(torch.ones(5, 4)).shape == (16, 4)  # the default multiple
