"""Gaussian diffusion with a linear noise schedule and an x0-predicting MLP denoiser (DiffMM lineage)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def linear_noise_schedule(steps: int, noise_scale: float, noise_min: float, noise_max: float) -> torch.Tensor:
    """``1 - gamma_bar_t = s * (gamma_min + (t - 1) / (T - 1) * (gamma_max - gamma_min))``, t = 1..T.

    Returns ``gamma_bar`` [T] (DiffCL eq 11, DASRec eq 6 without the user sparsity factor). With T = 1
    the single step uses ``gamma_min``.
    """
    if steps < 1:
        raise ValueError(f"diffusion steps must be >= 1, got {steps}")
    if not 0.0 < noise_scale <= 1.0 or not 0.0 < noise_min <= noise_max < 1.0:
        raise ValueError(
            f"need 0 < noise_scale <= 1 and 0 < noise_min <= noise_max < 1, got "
            f"s={noise_scale}, gamma_min={noise_min}, gamma_max={noise_max}"
        )
    fraction = torch.linspace(0.0, 1.0, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
    one_minus_bar = noise_scale * (noise_min + fraction * (noise_max - noise_min))
    return (1.0 - one_minus_bar).float()


class GaussianDiffusion(nn.Module):
    """Forward noising ``q(x_t | x_0)`` and the posterior ``q(x_{t-1} | x_t, x_0)`` for a given schedule.

    ``gamma_bar`` [T] is the cumulative retention; per-step ``gamma_t = gamma_bar_t / gamma_bar_{t-1}``
    (``gamma_bar_0 = 1``). Steps are numbered 1..T; index ``t - 1`` in the buffers.
    """

    def __init__(self, gamma_bar: torch.Tensor) -> None:
        super().__init__()
        gamma_bar = gamma_bar.double()
        previous = torch.cat([torch.ones(1, dtype=torch.float64), gamma_bar[:-1]])
        gamma = gamma_bar / previous
        if (gamma <= 0).any() or (gamma > 1).any():
            raise ValueError("the schedule must make gamma_bar non-increasing and positive")
        variance = (1 - gamma) * (1 - previous) / (1 - gamma_bar)  # eq 12 / DDPM beta tilde
        self.steps = len(gamma_bar)
        self.register_buffer("gamma_bar", gamma_bar.float(), persistent=False)
        self.register_buffer("gamma_bar_prev", previous.float(), persistent=False)
        self.register_buffer("gamma", gamma.float(), persistent=False)
        self.register_buffer("posterior_variance", variance.float(), persistent=False)
        # posterior mean coefficients on x_t and on x_0
        self.register_buffer("coef_xt", (gamma.sqrt() * (1 - previous) / (1 - gamma_bar)).float(), persistent=False)
        self.register_buffer("coef_x0", (previous.sqrt() * (1 - gamma) / (1 - gamma_bar)).float(), persistent=False)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """``x_t = sqrt(gamma_bar_t) x_0 + sqrt(1 - gamma_bar_t) eps`` for per-row steps ``t`` in 1..T."""
        noise = torch.randn_like(x0) if noise is None else noise
        bar = self.gamma_bar[t - 1].unsqueeze(-1)
        return bar.sqrt() * x0 + (1 - bar).sqrt() * noise

    def posterior_mean(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Mean of ``q(x_{t-1} | x_t, x_0)``."""
        return self.coef_xt[t - 1].unsqueeze(-1) * x_t + self.coef_x0[t - 1].unsqueeze(-1) * x0

    def reverse(self, denoiser: nn.Module, x_t: torch.Tensor, start_step: int, sampling_noise: bool = False
                ) -> torch.Tensor:
        """Run ``p(x_{t-1} | x_t)`` from ``start_step`` down to 0 with the denoiser's x0 predictions.

        Each step uses the posterior mean with ``x0 = denoiser(x_t, t)`` (eq 14); with
        ``sampling_noise`` it adds ``sqrt(posterior_variance) * eps`` (Sigma fixed, DiffMM's choice).
        """
        x = x_t
        for step in range(start_step, 0, -1):  # T is small (a handful of steps)
            t = torch.full((x.shape[0],), step, dtype=torch.long, device=x.device)
            x0_hat = denoiser(x, t)
            if step == 1:
                return x0_hat
            x = self.posterior_mean(x, x0_hat, t)
            if sampling_noise:
                x = x + self.posterior_variance[step - 1].sqrt() * torch.randn_like(x)
        return x


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of integer steps (as in DiffRec / DiffMM)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float().unsqueeze(1) * frequencies.unsqueeze(0)
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    return F.pad(embedding, (0, dim % 2))


class MLPDenoiser(nn.Module):
    """Predicts ``x_0`` from ``(x_t, t)``: ``out(tanh(in([dropout(norm(x_t)), emb(t)])))`` (DiffMM's Denoise).

    ``normalise_input`` L2-normalises x_t first (DiffMM does this for interaction rows).
    """

    def __init__(self, dim: int, hidden_dim: int = 256, time_dim: int = 16, dropout: float = 0.5,
                 normalise_input: bool = False) -> None:
        super().__init__()
        self.time_dim = time_dim
        self.time_projection = nn.Linear(time_dim, time_dim)
        self.input_layer = nn.Linear(dim + time_dim, hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.normalise_input = normalise_input
        for layer in (self.time_projection, self.input_layer, self.output_layer):
            nn.init.xavier_normal_(layer.weight)
            nn.init.normal_(layer.bias, std=0.001)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        time = self.time_projection(timestep_embedding(t, self.time_dim))
        x = F.normalize(x_t, dim=-1) if self.normalise_input else x_t
        hidden = torch.tanh(self.input_layer(torch.cat([self.dropout(x), time], dim=-1)))
        return self.output_layer(hidden)
