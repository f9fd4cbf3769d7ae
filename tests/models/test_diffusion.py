"""Diffusion building blocks: the linear schedule (DiffCL eq 11), forward noising and the posterior."""

from __future__ import annotations

import pytest
import torch

from lit_mmrec.models.components.diffusion import (
    GaussianDiffusion,
    MLPDenoiser,
    fast_reverse,
    fast_tanh,
    inverted_dropout,
    linear_noise_schedule,
    timestep_embedding,
)
from tests.conftest import diffmm_gamma_bar


def test_linear_schedule_matches_eq_11():
    gamma_bar = linear_noise_schedule(steps=5, noise_scale=0.5, noise_min=0.1, noise_max=0.5)
    # 1 - gamma_bar_t = s * (gmin + (t-1)/(T-1) * (gmax - gmin)) = 0.5 * (0.1, 0.2, 0.3, 0.4, 0.5)
    torch.testing.assert_close(1 - gamma_bar, torch.tensor([0.05, 0.10, 0.15, 0.20, 0.25], dtype=torch.float64))
    single = linear_noise_schedule(steps=1, noise_scale=1.0, noise_min=0.2, noise_max=0.4)
    torch.testing.assert_close(single, torch.tensor([0.8], dtype=torch.float64))


def test_small_noise_levels_keep_their_precision():
    """At DiffMM's defaults the first step's noise is s * gamma_min = 1e-5: 1 - float32(1 - 1e-5) would be
    1.0014e-5, off by 0.14%, and the SNR weights built on it by as much."""
    diffusion = GaussianDiffusion(linear_noise_schedule(5, 0.1, 0.0001, 0.02))
    expected = torch.tensor([0.1 * (0.0001 + k * (0.02 - 0.0001) / 4) for k in range(5)])
    torch.testing.assert_close(diffusion.noise_bar, expected, rtol=1e-6, atol=0.0)
    terms = diffusion.step_terms(torch.tensor([1, 2]))
    torch.testing.assert_close(terms.noise_bar.squeeze(1), expected[:2], rtol=1e-6, atol=0.0)


def test_first_step_noise_is_diffmm_fixed_first_beta():
    """DiffMM: betas from the linear schedule (beta_1 = v_1, beta_t = 1 - (1 - v_t) / (1 - v_{t-1})), then
    beta_1 := 1e-4; gamma_bar_t = prod (1 - beta)."""
    expected = diffmm_gamma_bar(5, 0.1, 0.0001, 0.02, first_beta=1e-4)
    gamma_bar = linear_noise_schedule(5, 0.1, 0.0001, 0.02, first_step_noise=1e-4)
    torch.testing.assert_close(gamma_bar, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(1 - gamma_bar, 1 - torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=0.0)
    with pytest.raises(ValueError, match="first_step_noise"):
        linear_noise_schedule(5, 0.1, 0.0001, 0.02, first_step_noise=0.0)
    with pytest.raises(ValueError):
        linear_noise_schedule(steps=5, noise_scale=1.5, noise_min=0.1, noise_max=0.2)


def test_forward_noising_and_posterior():
    diffusion = GaussianDiffusion(linear_noise_schedule(3, 1.0, 0.1, 0.3))
    bar = torch.tensor([0.9, 0.8, 0.7])
    gamma = torch.tensor([0.9, 0.8 / 0.9, 0.7 / 0.8])
    x0, noise = torch.tensor([[2.0]]), torch.tensor([[1.0]])
    t = torch.tensor([2])
    x_t = diffusion.q_sample(x0, t, noise)
    torch.testing.assert_close(x_t, bar[1].sqrt() * x0 + (1 - bar[1]).sqrt() * noise)
    # DDPM posterior for t = 2: mean coefficients and variance (DASRec eq 11-12)
    coef_xt = gamma[1].sqrt() * (1 - bar[0]) / (1 - bar[1])
    coef_x0 = bar[0].sqrt() * (1 - gamma[1]) / (1 - bar[1])
    torch.testing.assert_close(diffusion.posterior_mean(x_t, x0, t), coef_xt * x_t + coef_x0 * x0)
    torch.testing.assert_close(diffusion.posterior_variance[1], (1 - gamma[1]) * (1 - bar[0]) / (1 - bar[1]))
    assert diffusion.posterior_variance[0].item() == 0.0


def test_reverse_with_a_perfect_denoiser_recovers_x0():
    diffusion = GaussianDiffusion(linear_noise_schedule(4, 1.0, 0.05, 0.4))
    x0 = torch.randn(6, 3)

    class Oracle(torch.nn.Module):
        def forward(self, x_t, t, input_dropout=True):
            return x0

    x_t = diffusion.q_sample(x0, torch.full((6,), 4))
    torch.testing.assert_close(diffusion.reverse(Oracle(), x_t, 4), x0)


def test_reverse_process_runs_without_input_dropout_in_training():
    diffusion = GaussianDiffusion(linear_noise_schedule(4, 1.0, 0.05, 0.4))
    denoiser = MLPDenoiser(dim=5, hidden_dim=7, time_dim=4, dropout=0.5).train()
    x_t = torch.randn(8, 5)
    torch.testing.assert_close(diffusion.reverse(denoiser, x_t, 4), diffusion.reverse(denoiser, x_t, 4))
    assert not torch.equal(denoiser(x_t, torch.full((8,), 2)), denoiser(x_t, torch.full((8,), 2)))  # objective: on


def test_mlp_denoiser_shapes():
    denoiser = MLPDenoiser(dim=5, hidden_dim=7, time_dim=4, dropout=0.0)
    out = denoiser(torch.randn(3, 5), torch.tensor([1, 2, 3]))
    assert out.shape == (3, 5)


@pytest.mark.parametrize("one_step_for_all", [False, True])
@pytest.mark.parametrize("input_needs_grad", [False, True])
def test_mlp_denoiser_is_dense_layers_over_the_concatenated_input(one_step_for_all, input_needs_grad):
    """``out(tanh(in([x_t, time(emb(t))])))`` with nn.Linear over the built concatenation: same values and the
    same gradients for every parameter and for x_t (the layer never builds the concatenation)."""
    torch.manual_seed(0)
    denoiser = MLPDenoiser(dim=6, hidden_dim=5, time_dim=4, dropout=0.0).double()
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=input_needs_grad)
    t = torch.tensor([2]) if one_step_for_all else torch.tensor([1, 3, 2])
    upstream = torch.randn(3, 6, dtype=torch.float64)

    out = denoiser(x, t, input_dropout=False)
    params = list(denoiser.parameters())
    inputs = params + ([x] if input_needs_grad else [])
    grads = torch.autograd.grad(out, inputs, upstream)

    step = denoiser.time_projection(timestep_embedding(t, 4).double()).expand(3, 4)
    hidden = torch.tanh(denoiser.input_layer(torch.cat([x, step], dim=1)))
    expected = denoiser.output_layer(hidden)
    expected_grads = torch.autograd.grad(expected, inputs, upstream)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, atol=1e-12, rtol=0)
    # frozen: the same output, gradients to x_t only
    frozen = denoiser(x, t, input_dropout=False, frozen=True)
    torch.testing.assert_close(frozen, expected, atol=1e-12, rtol=0)
    assert not frozen.requires_grad or input_needs_grad


def test_inverted_dropout_keeps_with_probability_one_minus_p_and_rescales():
    torch.manual_seed(0)
    x = torch.full((400, 500), 2.0)
    dropped = inverted_dropout(x, 0.3, training=True)
    kept = dropped != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005  # 200,000 draws: std 0.001
    torch.testing.assert_close(dropped[kept], torch.full_like(dropped[kept], 2.0 / 0.7))
    assert abs(dropped.mean().item() - 2.0) < 0.02  # unbiased
    assert inverted_dropout(x, 0.3, training=False) is x
    assert torch.equal(inverted_dropout(x, 1.0), torch.zeros_like(x))


@pytest.mark.parametrize("dropout", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("scaled", [False, True])
def test_q_sample_rows_is_noising_then_dropout_on_the_dense_rows(dropout, scaled):
    diffusion = GaussianDiffusion(linear_noise_schedule(5, 0.5, 0.1, 0.5))
    dense = torch.zeros(4, 7)
    dense[0, 1], dense[0, 6], dense[2, 3] = 1.0, 2.0, 1.0  # row 1 and row 3 empty
    rows = dense.to_sparse_csr()
    t = torch.tensor([1, 5, 3, 2])
    scale = torch.tensor([0.5, 1.0, 2.0, 1.5]) if scaled else None
    torch.manual_seed(3)
    expected = inverted_dropout(diffusion.q_sample(dense, t, row_scale=scale), dropout)
    torch.manual_seed(3)
    got = diffusion.q_sample_rows(rows, t, row_scale=scale, dropout=dropout)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    # by hand, for row 0 at t = 1: sqrt(gamma_bar_1) x_0 + sqrt(1 - gamma_bar_1) eps, 1 - gamma_bar_1 = 0.05 s_u
    torch.manual_seed(3)
    eps = torch.randn(4, 7)
    noise_1 = 0.05 * (0.5 if scaled else 1.0)
    by_hand = (1 - noise_1) ** 0.5 * dense[0] + noise_1 ** 0.5 * eps[0]
    kept = got[0] != 0
    if dropout < 1.0:
        torch.testing.assert_close(got[0][kept], by_hand[kept] / (1 - dropout))
    if dropout == 0.0:
        assert kept.all()
    if dropout == 1.0:
        assert not got.any()
    with pytest.raises(ValueError, match="dropout"):
        diffusion.q_sample_rows(rows, t, dropout=1.5)


def test_fast_tanh_matches_tanh_in_value_and_gradient():
    x = torch.cat([torch.linspace(-30, 30, 2001), torch.tensor([0.0, 1e-6, -1e-6, 80.0, -80.0])])
    x = x.double().float().requires_grad_()
    y = fast_tanh(x)
    expected = torch.tanh(x.detach())
    assert (y.detach() - expected).abs().max() < 3e-7  # absolute error within the ulp of 1
    assert y.detach().min() == -1.0 and y.detach().max() == 1.0  # saturates exactly, no overshoot
    upstream = torch.randn_like(x)
    (grad,) = torch.autograd.grad(y, x, upstream)
    torch.testing.assert_close(grad, upstream * (1 - expected.pow(2)), atol=1e-6, rtol=0)
    # without autograd it is the same function
    with torch.no_grad():
        torch.testing.assert_close(fast_tanh(x), y.detach(), atol=0, rtol=0)


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.double() - expected.double()).norm() / expected.double().norm()).item()


def mixed_copy(exact: MLPDenoiser) -> MLPDenoiser:
    """The same network (same weights) whose products run in bfloat16."""
    mixed = MLPDenoiser(exact.output_layer.out_features, exact.output_layer.in_features, exact.time_dim,
                        exact.dropout, exact.normalise_input, precision="bfloat16")
    mixed.load_state_dict(exact.state_dict())
    return mixed.train(exact.training)


def test_bfloat16_denoiser_rounds_its_products_and_keeps_float32_parameters_and_gradients():
    torch.manual_seed(0)
    exact = MLPDenoiser(dim=300, hidden_dim=64, time_dim=8, dropout=0.0)
    mixed = mixed_copy(exact)
    x = torch.randn(40, 300, requires_grad=True)
    t = torch.randint(1, 6, (40,))
    upstream = torch.randn(40, 300)
    out_exact, out_mixed = exact(x, t), mixed(x, t)
    assert out_mixed.dtype == torch.float32
    # the products really ran in bfloat16 (8 significant bits: ~0.4% per rounding), and nothing worse
    assert 1e-4 < relative_error(out_mixed, out_exact) < 1.5e-2
    params_exact, params_mixed = list(exact.parameters()), list(mixed.parameters())
    grads_exact = torch.autograd.grad(out_exact, [x, *params_exact], upstream)
    grads_mixed = torch.autograd.grad(out_mixed, [x, *params_mixed], upstream)
    for p, g, e in zip([x, *params_mixed], grads_mixed, grads_exact):
        assert p.dtype == g.dtype == torch.float32  # float32 master weights and gradients
        assert relative_error(g, e) < 2e-2
    # the prediction comes back in the caller's dtype
    assert mixed(x.detach().double(), t).dtype == torch.float64
    with pytest.raises(ValueError, match="precision"):
        MLPDenoiser(dim=4, precision="float16")


def test_bfloat16_fast_reverse_is_the_float32_one_up_to_rounding():
    torch.manual_seed(2)
    diffusion = GaussianDiffusion(linear_noise_schedule(5, 0.3, 0.01, 0.2))
    exact = MLPDenoiser(200, hidden_dim=48, time_dim=4, dropout=0.5).eval()
    mixed = mixed_copy(exact)
    x0 = (torch.rand(30, 200) < 0.05).float()
    s_u = torch.rand(30) * 0.5 + 0.5
    expected = fast_reverse(diffusion, exact, x0, 5, s_u)
    for start in (x0, x0.to_sparse_csr()):
        got = fast_reverse(diffusion, mixed, start, 5, s_u)
        assert got.dtype == torch.float32
        assert 1e-4 < relative_error(got, expected) < 1.5e-2


def test_fast_tanh_in_bfloat16_rounds_a_float32_tanh_once():
    """bfloat16 in, bfloat16 out, computed in float32: within one bfloat16 rounding of the exact tanh, small
    activations included (the sigmoid form computed in bfloat16 would lose them: 2 s - 1 with s near 1/2),
    and the gradient ``grad (1 - y^2)``."""
    x = torch.cat([torch.linspace(-4, 4, 1001), torch.tensor([1e-3, -2e-3, 5e-4, 1e-5])]).bfloat16()
    x.requires_grad_()
    y = fast_tanh(x)
    assert y.dtype == torch.bfloat16
    exact = torch.tanh(x.detach().double())
    error = (y.detach().double() - exact).abs()
    assert (error <= torch.clamp(2.0**-8 * exact.abs(), min=1e-6)).all()
    assert (error > 0).any()  # rounded to bfloat16, not left in float32
    y.sum().backward()
    torch.testing.assert_close(x.grad, (1 - y.detach().float() ** 2).bfloat16(), atol=0, rtol=2**-7)
