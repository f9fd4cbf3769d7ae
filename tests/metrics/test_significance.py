from __future__ import annotations

import math

import pytest
import torch

from lit_mmrec.metrics import paired_comparison


def test_paired_comparison_by_hand():
    a = torch.tensor([0.0, 1.0, 0.0, 1.0])
    b = torch.tensor([1.0, 1.0, 0.0, 1.0])  # d = [1, 0, 0, 0]: mean 0.25, sample std 0.5, s.e. 0.25
    result = paired_comparison(a, b, n_bootstrap=4000, seed=1)
    assert (result.n_users, result.mean_a, result.mean_b) == (4, 0.5, 0.75)
    assert result.difference == pytest.approx(0.25)
    assert result.standard_error == pytest.approx(0.25)
    assert result.p_value == pytest.approx(math.erfc(1 / math.sqrt(2)))  # z = 1: 0.3173
    assert result.normal_low == pytest.approx(0.25 - 1.959964 * 0.25, abs=1e-5)
    assert result.normal_high == pytest.approx(0.25 + 1.959964 * 0.25, abs=1e-5)
    # a resampled mean of d is k/4 with k ~ Binomial(4, 1/4): P(k = 0) = 0.316, P(k >= 3) = 0.051
    assert (result.bootstrap_low, result.bootstrap_high) == (0.0, 0.75)


def test_paired_comparison_is_paired():
    """A shared per-user offset cancels: b = a + 0.01 for every user is a certain improvement."""
    a = torch.linspace(0.0, 1.0, 50, dtype=torch.float64)
    result = paired_comparison(a, a + 0.01, n_bootstrap=200)
    assert result.difference == pytest.approx(0.01)
    assert result.standard_error < 1e-12  # rounding only
    assert result.p_value < 1e-12
    assert result.bootstrap_low == pytest.approx(0.01) and result.bootstrap_high == pytest.approx(0.01)
    same = paired_comparison(a, a.clone(), n_bootstrap=10)
    assert (same.difference, same.p_value) == (0.0, 1.0)


def test_paired_comparison_bootstrap_is_seeded_and_calibrated():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(300, generator=g), torch.rand(300, generator=g)
    one = paired_comparison(a, b, n_bootstrap=500, seed=3, chunk=500)
    again = paired_comparison(a, b, n_bootstrap=500, seed=3, chunk=500)
    assert one == again
    chunked = paired_comparison(a, b, n_bootstrap=500, seed=3, chunk=64)
    # other chunks draw other resamples; both intervals straddle the mean at about +-1.96 s.e.
    for r in (one, chunked):
        assert r.bootstrap_low < r.difference < r.bootstrap_high
        assert (r.bootstrap_high - r.bootstrap_low) / (2 * 1.96 * r.standard_error) == pytest.approx(1.0, abs=0.15)


def test_paired_comparison_rejects_bad_inputs():
    with pytest.raises(ValueError, match="same length"):
        paired_comparison(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="confidence"):
        paired_comparison(torch.zeros(3), torch.ones(3), confidence=1.0)
