from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.sparse as sp

from lit_mmrec.data import DiffMMPickles, RecDataModule
from lit_mmrec.data.interactions import binary_csr, user_degree_summary
from tests.conftest import require_dataset


def _matrix(degrees: list[int], n_items: int = 6) -> sp.csr_matrix:
    rows = np.repeat(np.arange(len(degrees)), degrees)
    cols = np.concatenate([np.arange(d) for d in degrees])
    return binary_csr(rows, cols, (len(degrees), n_items))


def test_degree_summary_by_hand():
    matrix = _matrix([3, 0, 1, 1, 5])  # 10 interactions
    summary = user_degree_summary(matrix, top_fraction=0.2)  # ceil(0.2 * 5) = 1 user: 5 of 10
    assert (summary.n_users, summary.active_users, summary.median, summary.max) == (5, 4, 1.0, 5)
    assert (summary.top_users, summary.top_share) == (1, 0.5)
    assert user_degree_summary(matrix, top_fraction=0.3).top_users == 2  # ceil(1.5)
    assert user_degree_summary(matrix, top_fraction=0.3).top_share == pytest.approx(0.8)  # (5 + 3) / 10
    assert user_degree_summary(matrix, top_fraction=1.0).top_share == 1.0
    assert summary.describe() == ("4 of 5 users have interactions, median 1 and max 5 per user; "
                                  "the 1 most active hold 50.0%")
    with pytest.raises(ValueError, match="top_fraction"):
        user_degree_summary(matrix, top_fraction=0.0)


def test_datamodule_logs_the_training_split_summary(tiny_source, caplog):
    with caplog.at_level(logging.INFO, logger="lit_mmrec.data.datamodule"):
        _ = RecDataModule(tiny_source, use_cache=False).data  # reading the property builds and logs the split
    expected = user_degree_summary(tiny_source.load().train).describe()
    assert f"training split: {expected}" in caplog.text


def test_tiktok_training_split_is_skewed():
    """DiffMM's TikTok split: 103 users hold 71% of the training interactions, the others at most 4 each."""
    train = DiffMMPickles(str(require_dataset("tiktok"))).load().train
    degree = np.diff(train.indptr)
    heavy = np.sort(degree)[::-1]
    assert heavy[102] == 323 and heavy[103] == 4
    summary = user_degree_summary(train, top_fraction=103 / 9308 - 1e-9)
    assert (summary.top_users, summary.active_users, summary.median, summary.max) == (103, 9298, 2.0, 603)
    assert summary.top_share == pytest.approx(42009 / 59541, abs=1e-4)
