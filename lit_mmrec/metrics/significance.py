"""Paired comparison of two runs' per-user metrics on the same split: is a difference more than noise?

Validation and test metrics are means over users, and on small splits a difference of a few thousandths
can be a handful of users (TikTok's validation split holds one item for each of 3,051 users). Both runs
rank the same users, so the comparison is paired: per-user differences ``d_u = b_u - a_u``, their mean, its
standard error ``std(d) / sqrt(n)``, a normal-approximation interval and two-sided p-value, and a paired
bootstrap interval (users resampled with replacement) that does not lean on the normal approximation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PairedComparison:
    """``b - a`` over the users both runs evaluated; intervals at ``confidence``."""

    n_users: int
    mean_a: float
    mean_b: float
    difference: float
    standard_error: float
    normal_low: float
    normal_high: float
    p_value: float  # two-sided, normal approximation
    bootstrap_low: float
    bootstrap_high: float
    confidence: float


def paired_comparison(a: torch.Tensor, b: torch.Tensor, confidence: float = 0.95, n_bootstrap: int = 2000,
                      seed: int = 0, chunk: int = 200) -> PairedComparison:
    """Compare per-user values ``a`` and ``b`` [n_users] of the same users in the same order.

    The bootstrap draws ``n_bootstrap`` resamples of the users, ``chunk`` resamples at a time
    (``chunk x n_users`` indices in memory), from a generator seeded with ``seed``.
    """
    if a.shape != b.shape or a.dim() != 1 or len(a) < 2:
        raise ValueError(f"need two 1-D tensors of the same length >= 2, got shapes {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if not 0.0 < confidence < 1.0 or n_bootstrap < 1 or chunk < 1:
        raise ValueError("confidence must be in (0, 1), n_bootstrap and chunk >= 1")
    a, b = a.double().cpu(), b.double().cpu()
    d = b - a
    n = len(d)
    difference = float(d.mean())
    standard_error = float(d.std(unbiased=True)) / math.sqrt(n)
    z = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.5 + confidence / 2, dtype=torch.float64)))
    if standard_error > 0:
        p_value = math.erfc(abs(difference) / standard_error / math.sqrt(2.0))
    else:  # every user moved by the same amount: no noise to weigh it against
        p_value = 1.0 if difference == 0 else 0.0
    generator = torch.Generator().manual_seed(seed)
    means = []
    for start in range(0, n_bootstrap, chunk):
        rows = min(chunk, n_bootstrap - start)
        means.append(d[torch.randint(n, (rows, n), generator=generator)].mean(dim=1))
    tails = torch.tensor([(1 - confidence) / 2, (1 + confidence) / 2], dtype=torch.float64)
    low, high = torch.quantile(torch.cat(means), tails).tolist()
    return PairedComparison(
        n_users=n, mean_a=float(a.mean()), mean_b=float(b.mean()), difference=difference,
        standard_error=standard_error, normal_low=difference - z * standard_error,
        normal_high=difference + z * standard_error, p_value=p_value, bootstrap_low=low, bootstrap_high=high,
        confidence=confidence,
    )
