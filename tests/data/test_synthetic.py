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
    assert _co_interaction_lift(data) > 1.5


def test_rejects_impossible_sizes():
    with pytest.raises(ValueError, match="n_interactions"):
        Synthetic(n_users=100, n_items=50, n_interactions=100)


def _co_interaction_lift(data) -> float:
    """Co-consumption of each item with its feature-nearest item, over that with a random item."""
    interactions = (data.train + data.valid + data.test).astype(np.float32)
    co_counts = (interactions.T @ interactions).toarray()
    np.fill_diagonal(co_counts, 0)
    features = data.features["image"]
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    n = data.n_items
    random_partner = np.random.default_rng(0).integers(0, n, size=n)
    return co_counts[np.arange(n), similarity.argmax(axis=1)].mean() / co_counts[np.arange(n), random_partner].mean()


def test_pooled_sampler_hits_the_count_and_keeps_the_planted_structure():
    """The O(n_interactions) sampler: exact total, distinct items, splits as the exact sampler makes them,
    the same popularity law, and features that predict co-consumption."""
    sizes = dict(n_users=1500, n_items=1000, n_interactions=15000, modalities={"image": 32}, seed=0)
    pooled = Synthetic(**sizes, sampler="pooled").load()
    exact = Synthetic(**sizes).load()
    assert pooled.train.nnz + pooled.valid.nnz + pooled.test.nnz == 15000  # no repeats merged, none lost
    for split in (pooled.train, pooled.valid, pooled.test):
        assert (np.diff(split.indptr) >= 1).all()
        assert split.data.max() == 1
    assert pooled.train.multiply(pooled.valid).nnz + pooled.train.multiply(pooled.test).nnz == 0
    per_user = np.diff((pooled.train + pooled.valid + pooled.test).indptr)
    assert (np.diff(pooled.test.indptr) == np.maximum(np.round(per_user * 0.1), 1)).all()
    popularity = [np.asarray((d.train + d.valid + d.test).sum(0)).ravel() for d in (pooled, exact)]
    assert np.corrcoef(*popularity)[0, 1] > 0.8
    lift = _co_interaction_lift(pooled)  # the exact sampler's is 3.4 here; 1.1 with one draw per item
    assert lift > 2.0 > _co_interaction_lift(Synthetic(**sizes, sampler="pooled", pool_factor=1).load())
    assert _co_interaction_lift(Synthetic(**{**sizes, "affinity": 0.0}, sampler="pooled").load()) < 1.2
    assert Synthetic(**sizes, sampler="pooled").fingerprint() != Synthetic(**sizes).fingerprint()


def test_pooled_sampler_names_the_fix_when_pools_are_too_narrow():
    with pytest.raises(ValueError, match="raise pool_factor"):  # every draw is the most popular item
        Synthetic(n_users=20, n_items=30, n_interactions=200, popularity_exponent=60.0, sampler="pooled").load()
