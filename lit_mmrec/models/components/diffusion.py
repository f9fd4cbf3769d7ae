"""Gaussian diffusion with a linear noise schedule and an x0-predicting MLP denoiser (DiffMM lineage)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lit_mmrec.models.components.precision import PRODUCT_ROW_MULTIPLE, ProductPrecision, compute_dtype, pad_rows
from lit_mmrec.models.components.propagation import entry_rows


def linear_noise_schedule(steps: int, noise_scale: float, noise_min: float, noise_max: float,
                          first_step_noise: float | None = None) -> torch.Tensor:
    """``1 - gamma_bar_t = s * (gamma_min + (t - 1) / (T - 1) * (gamma_max - gamma_min))``, t = 1..T.

    Returns ``gamma_bar`` [T] in float64 (DiffCL eq 11, DASRec eq 6 without the user sparsity factor).
    With T = 1 the single step uses ``gamma_min``. Float64, because ``1 - gamma_bar`` is as small as
    ``s * gamma_min`` (1e-5 at DiffMM's defaults), which a float32 ``gamma_bar`` near 1 keeps only to
    about 0.1%; :class:`GaussianDiffusion` takes its complements from this before storing float32.

    ``first_step_noise`` replaces the first step's noise ``1 - gamma_1`` and keeps the later steps' own
    ``gamma_t = gamma_bar_t / gamma_bar_{t-1}``, so ``gamma_bar_t = (1 - first_step_noise) gamma_bar_t /
    gamma_bar_1``: DiffMM's code builds its betas from this schedule and then sets the first to 1e-4
    (``beta_fixed``), ten times its ``s * gamma_min`` of 1e-5 at the defaults.
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
    gamma_bar = 1.0 - one_minus_bar
    if first_step_noise is not None:
        if not 0.0 < first_step_noise < 1.0:
            raise ValueError(f"first_step_noise must be in (0, 1), got {first_step_noise}")
        gamma_bar = gamma_bar * ((1.0 - first_step_noise) / gamma_bar[0])
    return gamma_bar


def _posterior(noise_bar: torch.Tensor, noise_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Posterior coefficients on x_t and x_0 and its variance from ``1 - gamma_bar_t`` and ``1 - gamma_bar_{t-1}``."""
    noise_step = (noise_bar - noise_prev) / (1 - noise_prev)  # 1 - gamma_t
    return ((1 - noise_step).sqrt() * noise_prev / noise_bar,
            (1 - noise_prev).sqrt() * noise_step / noise_bar,
            noise_step * noise_prev / noise_bar)


class StepTerms(NamedTuple):
    """Schedule terms at one step per row: gamma_bar_t, gamma_bar_{t-1}, gamma_t and their complements."""

    bar: torch.Tensor
    bar_prev: torch.Tensor
    gamma: torch.Tensor
    noise_bar: torch.Tensor
    noise_prev: torch.Tensor
    noise_step: torch.Tensor


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
        self.steps = len(gamma_bar)
        self.register_buffer("gamma_bar", gamma_bar.float(), persistent=False)
        # 1 - gamma_bar kept separately: for small noise it is ~1e-5, which 1 - float32(gamma_bar) loses
        self.register_buffer("noise_bar", (1 - gamma_bar).float(), persistent=False)
        self.register_buffer("noise_bar_prev", (1 - previous).float(), persistent=False)
        # the unscaled posterior's coefficients per step, in float64 once instead of float32 every call
        table = torch.stack(_posterior(1 - gamma_bar, 1 - previous)).float()
        self.register_buffer("posterior_table", table, persistent=False)  # [3, T]
        self.register_buffer("posterior_variance", table[2], persistent=False)  # eq 12 / DDPM beta tilde

    def step_terms(self, t: torch.Tensor, row_scale: torch.Tensor | None = None) -> StepTerms:
        """Schedule terms per row [B, 1] for steps ``t`` [B] in 1..T.

        ``row_scale`` [B] multiplies each row's noise: ``1 - gamma_bar_t(u) = s_u (1 - gamma_bar_t)``
        (DASRec eq 6, the user sparsity s_u scaling the linear schedule); ``None`` means 1.
        """
        noise_bar = self.noise_bar[t - 1].unsqueeze(-1)
        noise_prev = self.noise_bar_prev[t - 1].unsqueeze(-1)
        if row_scale is not None:
            scale = row_scale.unsqueeze(-1).to(noise_bar.dtype)
            noise_bar, noise_prev = scale * noise_bar, scale * noise_prev
        # 1 - gamma_t = 1 - (1 - noise_bar) / (1 - noise_prev)
        noise_step = (noise_bar - noise_prev) / (1 - noise_prev)
        return StepTerms(1 - noise_bar, 1 - noise_prev, 1 - noise_step, noise_bar, noise_prev, noise_step)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None,
                 row_scale: torch.Tensor | None = None) -> torch.Tensor:
        """``x_t = sqrt(gamma_bar_t) x_0 + sqrt(1 - gamma_bar_t) eps`` for per-row steps ``t`` in 1..T."""
        noise = torch.randn_like(x0) if noise is None else noise
        terms = self.step_terms(t, row_scale)
        return terms.bar.sqrt() * x0 + terms.noise_bar.sqrt() * noise

    def q_sample_rows(self, rows: torch.Tensor, t: torch.Tensor, row_scale: torch.Tensor | None = None,
                      dropout: float = 0.0) -> torch.Tensor:
        """``inverted_dropout(q_sample(rows.to_dense(), t, row_scale=row_scale), dropout)`` [B, n] for
        sparse CSR rows x_0 (users' interaction rows), built in one dense buffer.

        The noise is drawn and scaled by ``sqrt(1 - gamma_bar_t) / (1 - p)`` in place, x_0's entries
        (scaled by ``sqrt(gamma_bar_t) / (1 - p)``) are added at their positions, and the dropout mask
        multiplies the buffer in place. The draws are those of the composed calls, in the same order
        (the noise, then the mask's uniforms), so the result is theirs up to float rounding, in fewer
        passes over the block.
        """
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be in [0, 1], got {dropout}")
        col, values = rows.col_indices(), rows.values()
        n_rows, width = rows.shape
        if dropout == 1.0:
            return values.new_zeros(n_rows, width)
        keep = 1.0 - dropout
        terms = self.step_terms(t, row_scale)
        x = torch.randn(n_rows, width, dtype=values.dtype, device=values.device)
        x.mul_(terms.noise_bar.sqrt().to(values.dtype) / keep)
        owner = entry_rows(rows)
        signal = values * (terms.bar.sqrt().squeeze(-1).to(values.dtype) / keep).index_select(0, owner)
        x.view(-1).index_add_(0, owner * width + col.to(owner.dtype), signal)
        if dropout > 0.0:
            x.mul_(torch.rand_like(x).lt_(keep))
        return x

    def posterior_coefficients(self, t: torch.Tensor, row_scale: torch.Tensor | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Coefficients on x_t and on x_0 of the posterior mean, and its variance, per row [B, 1].

        ``mu = sqrt(gamma_t)(1 - gamma_bar_{t-1}) / (1 - gamma_bar_t) x_t
        + sqrt(gamma_bar_{t-1})(1 - gamma_t) / (1 - gamma_bar_t) x_0`` and
        ``sigma^2 = (1 - gamma_t)(1 - gamma_bar_{t-1}) / (1 - gamma_bar_t)`` (DASRec eq 10-12, DDPM).
        """
        if row_scale is None:
            coef_xt, coef_x0, variance = self.posterior_table[:, t - 1].unsqueeze(-1)
            return coef_xt, coef_x0, variance
        terms = self.step_terms(t, row_scale)
        return _posterior(terms.noise_bar, terms.noise_prev)

    def posterior_mean(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor,
                       row_scale: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of ``q(x_{t-1} | x_t, x_0)``."""
        coef_xt, coef_x0, _ = self.posterior_coefficients(t, row_scale)
        return coef_xt * x_t + coef_x0 * x0

    def reverse(self, denoiser: nn.Module, x_t: torch.Tensor, start_step: int, sampling_noise: bool = False,
                row_scale: torch.Tensor | None = None) -> torch.Tensor:
        """Run ``p(x_{t-1} | x_t)`` from ``start_step`` down to 0 with the denoiser's x0 predictions.

        Each step uses the posterior mean with ``x0 = denoiser(x_t, t)`` (eq 14); with
        ``sampling_noise`` it adds ``sqrt(posterior_variance) * eps`` (Sigma fixed, DiffMM's choice).
        The last step (t = 1, where the posterior mean is x0 itself) returns the prediction. The
        denoiser's input dropout is off in the reverse process, in training too (DiffMM's
        ``p_mean_variance`` calls its denoiser with ``mess_dropout=False``): dropout belongs to the
        denoising objective, not to sampling.
        """
        x = x_t
        for step in range(start_step, 0, -1):  # T is small (a handful of steps)
            t = torch.full((1,), step, dtype=torch.long, device=x.device)  # the same step for every row
            x0_hat = denoiser(x, t, input_dropout=False)
            if step == 1:
                return x0_hat
            coef_xt, coef_x0, variance = self.posterior_coefficients(t, row_scale)
            x = coef_xt * x + coef_x0 * x0_hat
            if sampling_noise:
                x = x + variance.sqrt() * torch.randn_like(x)
        return x


def inverted_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout (``F.dropout``'s result in distribution): each entry kept with probability
    ``1 - p`` and scaled by ``1 / (1 - p)``, else zeroed.

    The mask comes from one uniform draw compared with ``1 - p``: on CPU cheaper than ``F.dropout``'s
    Bernoulli sampling, which matters where whole interaction rows are dropped every step.
    """
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return torch.zeros_like(x)
    keep = 1.0 - p
    return torch.where(torch.rand_like(x) < keep, x / keep, 0.0)


def _sigmoid_tanh(x: torch.Tensor) -> torch.Tensor:
    """``2 sigmoid(2x) - 1`` computed in float32 (a bfloat16 ``x`` is upcast first), returned in ``x``'s dtype."""
    y = x.float().mul_(2.0) if x.dtype != torch.float32 else torch.mul(x, 2.0)
    y.sigmoid_().mul_(2.0).sub_(1.0)
    return y.to(x.dtype)


class _SigmoidTanh(torch.autograd.Function):
    """:func:`_sigmoid_tanh` forward, ``grad (1 - y^2)`` backward (what ``tanh``'s is)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = _sigmoid_tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


def fast_tanh(x: torch.Tensor) -> torch.Tensor:
    """``tanh`` for the denoisers' hidden layers; on CPU as ``2 sigmoid(2x) - 1`` in float32.

    torch's CPU ``tanh`` is accurate to an ulp and slow (it can take longer than the denoiser's input
    product); the sigmoid form is faster and its absolute error is below 2e-7 (the ulp of 1; the relative
    error near 0 is larger, which an activation does not care about). A bfloat16 ``x`` goes through the
    same float32 computation and is rounded once at the end (faster than torch's bfloat16 ``tanh``, the
    same largest error against float64): the sigmoid form computed *in* bfloat16 would keep only 2^-9
    of absolute resolution near 1/2, a large relative error for small activations. Other dtypes, and
    other devices (CUDA's ``tanh`` is one cheap kernel), use ``torch.tanh``.
    """
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16):
        return torch.tanh(x)
    if torch.is_grad_enabled() and x.requires_grad:
        return _SigmoidTanh.apply(x)
    return _sigmoid_tanh(x)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of integer steps (as in DiffRec / DiffMM)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float().unsqueeze(1) * frequencies.unsqueeze(0)
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    return F.pad(embedding, (0, dim % 2))


class _StepConditionedLinear(torch.autograd.Function):
    """``x W_x^T + s W_s^T + b`` for an input layer ``W = [W_x | W_s]`` over ``[x, s]``, never building
    ``[x, s]``; ``s`` has one row per row of ``x`` or a single row for all of them.

    Slicing ``W`` in autograd instead makes the backward zero-fill a full-size gradient for each slice
    and copy the x-part's (transposed) gradient into it; for DASRec's 1000 x 6,720 input layer that was
    a fifth of a diffusion step (three passes over 27 MB per denoiser). Here the gradient of ``W`` is one
    buffer whose x-columns the product writes directly, and ``x``'s gradient is computed only when
    asked for (interaction rows need none).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, step: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        ctx.save_for_backward(x, step, weight)
        return torch.addmm(torch.addmm(bias, step, weight[:, n:].T), x, weight[:, :n].T)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, step, weight = ctx.saved_tensors
        n = x.shape[1]
        shared_step = step.shape[0] == 1 and grad.shape[0] > 1  # one step row broadcast over every row
        grad_step_rows = grad.sum(dim=0, keepdim=True) if shared_step else grad
        grad_x = grad @ weight[:, :n] if ctx.needs_input_grad[0] else None
        grad_step = grad_step_rows @ weight[:, n:] if ctx.needs_input_grad[1] else None
        grad_weight = grad_bias = None
        if ctx.needs_input_grad[2]:
            grad_weight = weight.new_empty(weight.shape)
            grad_weight[:, :n].addmm_(grad.T, x, beta=0)
            grad_weight[:, n:] = grad_step_rows.T @ step
        if ctx.needs_input_grad[3]:
            grad_bias = grad.sum(dim=0)
        return grad_x, grad_step, grad_weight, grad_bias


class MLPDenoiser(nn.Module):
    """Predicts ``x_0`` from ``(x_t, t)``: ``out(tanh(in([dropout(norm(x_t)), emb(t)])))`` (DiffMM's Denoise).

    ``normalise_input`` L2-normalises x_t first (DiffMM does this for interaction rows).

    ``precision`` is the arithmetic of the two layers' products. ``float32`` (default) is exact float32.
    ``bfloat16`` is mixed precision as ``torch.autocast`` does it, confined to this network: the input and
    the weights are rounded to bfloat16 for the products (which accumulate in float32 and round their
    result to bfloat16), the parameters, their gradients (upcast by autograd through the cast) and the
    optimizer state stay float32, and the prediction is returned in the input's dtype (the
    :mod:`~lit_mmrec.models.components.precision` module). Where the device multiplies bfloat16 natively
    the products take a fraction of float32's time (``benchmarks/dense_products.py``). Rounding to 8 significant
    bits moves a prediction by about 0.4% of its size; use it for the large denoisers whose products
    dominate an epoch, and check validation.
    """

    def __init__(self, dim: int, hidden_dim: int = 256, time_dim: int = 16, dropout: float = 0.5,
                 normalise_input: bool = False, precision: ProductPrecision = "float32") -> None:
        super().__init__()
        self.time_dim = time_dim
        self.time_projection = nn.Linear(time_dim, time_dim)
        self.input_layer = nn.Linear(dim + time_dim, hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, dim)
        self.dropout = dropout
        self.normalise_input = normalise_input
        self.compute_dtype = compute_dtype(precision, "denoiser precision")  # None: the parameters' own dtype
        for layer in (self.time_projection, self.input_layer, self.output_layer):
            nn.init.xavier_normal_(layer.weight)
            nn.init.normal_(layer.bias, std=0.001)

    def weights(self, frozen: bool = False) -> tuple[torch.Tensor, ...]:
        """(W_time, b_time, W_in, b_in, W_out, b_out); detached with ``frozen``, so that a caller's loss
        reaches the denoiser's input but not its parameters."""
        params = (self.time_projection.weight, self.time_projection.bias, self.input_layer.weight,
                  self.input_layer.bias, self.output_layer.weight, self.output_layer.bias)
        return tuple(p.detach() for p in params) if frozen else params

    def for_products(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``tensors`` in the dtype of this network's products (a differentiable cast, or as they are)."""
        if self.compute_dtype is None:
            return tensors
        return tuple(x.to(self.compute_dtype) for x in tensors)

    def step_features(self, t: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """``time(emb(t))`` [len(t), time_dim], the step's part of the input layer's input."""
        w_time, b_time = self.weights(frozen)[:2]
        return F.linear(timestep_embedding(t, self.time_dim).to(w_time.dtype), w_time, b_time)

    def time_term(self, t: torch.Tensor) -> torch.Tensor:
        """The step's part of the input layer, ``W_t emb(t) + b`` [len(t), H]: ``in([x, emb(t)])`` is
        ``W_x x`` plus this (for :func:`fast_reverse`, which carries ``W_x x`` itself); a length-1 ``t``
        gives one row that broadcasts. In the parameters' dtype (it is a few rows)."""
        n = self.output_layer.out_features
        return F.linear(self.step_features(t), self.input_layer.weight[:, n:], self.input_layer.bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, input_dropout: bool = True, frozen: bool = False
                ) -> torch.Tensor:
        """x0 prediction; ``input_dropout=False`` skips the input dropout (for callers that drop once
        for several denoisers); ``frozen`` passes gradients to ``x_t`` only, none to the parameters."""
        x = F.normalize(x_t, dim=-1) if self.normalise_input else x_t
        x = inverted_dropout(x, self.dropout, self.training) if input_dropout else x
        _, _, w_in, b_in, w_out, b_out = self.weights(frozen)
        x, step, w_in, b_in, w_out, b_out = self.for_products(x, self.step_features(t, frozen), w_in, b_in, w_out, b_out)
        rows = x.shape[0]
        if self.compute_dtype is not None:  # a few distinct row counts: oneDNN builds a kernel per shape
            x = pad_rows(x, PRODUCT_ROW_MULTIPLE)
            step = step if step.shape[0] == 1 else pad_rows(step, PRODUCT_ROW_MULTIPLE)
        hidden = fast_tanh(_StepConditionedLinear.apply(x, step, w_in, b_in))
        return F.linear(hidden, w_out, b_out)[:rows].to(x_t.dtype)


@torch.no_grad()
def fast_reverse(diffusion: GaussianDiffusion, denoiser: MLPDenoiser, x_start: torch.Tensor, start_step: int,
                 row_scale: torch.Tensor | None = None) -> torch.Tensor:
    """``diffusion.reverse(denoiser, x_start, start_step)`` (no sampling noise, eval mode), computed cheaply.

    The denoiser's input layer is linear in x_t and each reverse step is linear in (x_t, x0_hat), so the
    projection ``W_x x_t`` can be carried from step to step in the hidden width H instead of the
    input width n: ``W_x x_{t-1} = c_t W_x x_t + c'_t (W_x W_out h_t + W_x b_out)``. One product with
    the (possibly sparse) input, T - 1 products of size H x H and one output product replace 2T
    products of size n x H; for interaction rows (n = n_items) that is several times less work.
    Same result as the plain loop up to float rounding (tests check it). With a bfloat16 denoiser the
    dense products run in bfloat16 and the carried projection stays in the parameters' dtype; a sparse
    input's product (nnz x H, cheap) stays in that dtype too (sparse kernels have no bfloat16).
    """
    if denoiser.normalise_input or denoiser.training:
        raise ValueError("fast_reverse needs a denoiser in eval mode without input normalisation")
    n = denoiser.output_layer.out_features
    weight_x = denoiser.input_layer.weight[:, :n]  # [H, n]
    weight_out, bias_out = denoiser.output_layer.weight, denoiser.output_layer.bias  # [n, H], [n]
    dtype = weight_x.dtype
    weight_x_c, weight_out_c, bias_out_c = denoiser.for_products(weight_x, weight_out, bias_out)
    carry = weight_out_c.T @ weight_x_c.T  # [H, H]: x0_hat's projection is h @ carry + carry_bias
    carry_bias = bias_out @ weight_x.T  # [H]

    def time_term(step: int) -> torch.Tensor:
        return denoiser.time_term(torch.full((1,), step, dtype=torch.long, device=weight_x.device))

    if x_start.is_sparse or x_start.layout == torch.sparse_csr:
        projected = torch.sparse.mm(x_start, weight_x.T)  # [B, H]
    else:
        (x_start_c,) = denoiser.for_products(x_start)
        projected = (x_start_c @ weight_x_c.T).to(dtype)
    hidden = fast_tanh(projected + time_term(start_step))
    for step in range(start_step, 1, -1):
        t = torch.full((projected.shape[0],), step, dtype=torch.long, device=projected.device)
        coef_xt, coef_x0, _ = diffusion.posterior_coefficients(t, row_scale)
        (hidden_c,) = denoiser.for_products(hidden)
        projected = coef_xt * projected + coef_x0 * ((hidden_c @ carry).to(dtype) + carry_bias)
        hidden = fast_tanh(projected + time_term(step - 1))
    (hidden_c,) = denoiser.for_products(hidden)
    return torch.addmm(bias_out_c, hidden_c, weight_out_c.T).to(dtype)
