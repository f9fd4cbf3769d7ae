"""The synthetic generator: sizes, splits, and features that carry the planted structure."""

from __future__ import annotations

import numpy as np
import pytest

from lit_mmrec.data import Synthetic


def test_sizes_and_splits():
    data = Synthetic(n_users=200, n_items=150, n_interactions=4000, modalities={"image": 12, "audio": 5}).load()
    assert (data.n_users, data.n_items) == (200, 150)
    total = data.train.nnz + data.valid.nnz + data.test.nnz
    assert 3600 <= total <= 4000
    for split in (data.train, data.valid, data.test):
        assert (np.diff(split.indptr) >= 1).all()  # every user in every split
    overlap = data.train.multiply(data.valid).nnz + data.train.multiply(data.test).nnz + data.valid.multiply(data.test).nnz
    assert overlap == 0
    assert data.feature_dims == {"image": 12, "audio": 5}


def test_same_seed_same_data_other_seed_other_data():
    a = Synthetic(n_users=50, n_items=40, n_interactions=600, seed=1).load()
    b = Synthetic(n_users=50, n_items=40, n_interactions=600, seed=1).load()
    c = Synthetic(n_users=50, n_items=40, n_interactions=600, seed=2).load()
    assert (a.train != b.train).nnz == 0
    assert (a.train != c.train).nnz > 0


def test_features_predict_co_interaction():
    """Items whose features are close are co-consumed more often than random pairs."""
    data = Synthetic(n_users=800, n_items=200, n_interactions=16000, modalities={"image": 32}, seed=0).load()
    interactions = (data.train + data.valid + data.test).astype(np.float32)
    co_counts = (interactions.T @ interactions).toarray()
    np.fill_diagonal(co_counts, 0)
    features = data.features["image"]
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = similarity.argmax(axis=1)
    random_partner = np.random.default_rng(0).integers(0, 200, size=200)
    assert co_counts[np.arange(200), nearest].mean() > 1.5 * co_counts[np.arange(200), random_partner].mean()


def test_rejects_impossible_sizes():
    with pytest.raises(ValueError, match="n_interactions"):
        Synthetic(n_users=100, n_items=50, n_interactions=100)
