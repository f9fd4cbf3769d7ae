"""DASRec components against the paper's equations on tiny inputs, the ablation switches, and checkpoints."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lit_mmrec.data.graphs import generated_bipartite_graph
from lit_mmrec.metrics import RankingEvaluator
from lit_mmrec.models import DASRec
from lit_mmrec.models.components import info_nce, info_nce_against
from lit_mmrec.models.components.diffusion import GaussianDiffusion, MLPDenoiser, fast_reverse, linear_noise_schedule
from lit_mmrec.models.components.graph_generation import (
    ModalityAttention,
    centred_unit_rows,
    denoised_row_quality,
    diffusion_plan,
    own_item_ranks,
    user_median_ranks,
)
from tests.conftest import (
    EchoDenoiser,
    assert_only_contrastive_term_rounded,
    paired_losses,
    set_constant_prediction,
)
from tests.conftest import (
    build_dasrec as build,
)


# ---- dynamic sparse diffusion (eq 3-16) ----
def test_user_sparsity_is_eq_3(tiny_datamodule):
    model = build(tiny_datamodule)
    train = tiny_datamodule.data.train
    degree = torch.tensor(train.getnnz(axis=1), dtype=torch.float32)
    torch.testing.assert_close(model.generator.user_sparsity, 1 - degree / 40)
    by_max = build(tiny_datamodule, sparsity_reference="max_degree")
    torch.testing.assert_close(by_max.generator.user_sparsity, 1 - degree / degree.max())


def test_sparsity_scaled_schedule_is_eq_6():
    s, g_min, g_max, steps = 0.3, 0.001, 0.02, 5
    diffusion = GaussianDiffusion(linear_noise_schedule(steps, s, g_min, g_max))
    s_u = torch.tensor([0.5, 0.9, 1.0])
    for t in range(1, steps + 1):
        terms = diffusion.step_terms(torch.full((3,), t), s_u)
        linear = g_min + (t - 1) / (steps - 1) * (g_max - g_min)
        torch.testing.assert_close(terms.noise_bar.squeeze(1), s_u * s * linear)
        torch.testing.assert_close(terms.bar.squeeze(1), 1 - s_u * s * linear)
    # q_sample draws alpha_t = sqrt(gamma_bar) alpha_0 + sqrt(1 - gamma_bar) eps with the user's schedule
    x0, noise = torch.ones(3, 4), torch.randn(3, 4)
    t = torch.tensor([5, 5, 5])
    expected = (1 - s_u * s * g_max).sqrt().unsqueeze(1) * x0 + (s_u * s * g_max).sqrt().unsqueeze(1) * noise
    torch.testing.assert_close(diffusion.q_sample(x0, t, noise, row_scale=s_u), expected)


def test_posterior_mean_and_variance_are_eq_10_12_per_user():
    diffusion = GaussianDiffusion(linear_noise_schedule(4, 0.5, 0.01, 0.2))
    s_u = torch.tensor([0.25, 1.0])
    t = torch.tensor([3, 3])
    base = 1 - diffusion.gamma_bar.double()
    bar = 1 - s_u.double().unsqueeze(1) * base[2]
    bar_prev = 1 - s_u.double().unsqueeze(1) * base[1]
    gamma = bar / bar_prev
    x_t, x0 = torch.randn(2, 3), torch.randn(2, 3)
    mean = (gamma.sqrt() * (1 - bar_prev) / (1 - bar)) * x_t.double() + (bar_prev.sqrt() * (1 - gamma) / (1 - bar)) * x0.double()
    variance = (1 - gamma) * (1 - bar_prev) / (1 - bar)
    coef_xt, coef_x0, var = diffusion.posterior_coefficients(t, s_u)
    torch.testing.assert_close(diffusion.posterior_mean(x_t, x0, t, s_u), mean.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(var, variance.float(), rtol=1e-5, atol=1e-7)
    # at t = 1 the posterior mean is x0 itself
    coef_xt, coef_x0, _ = diffusion.posterior_coefficients(torch.tensor([1, 1]), s_u)
    torch.testing.assert_close(coef_xt, torch.zeros(2, 1))
    torch.testing.assert_close(coef_x0, torch.ones(2, 1))


def test_fast_reverse_equals_the_step_by_step_reverse_process():
    torch.manual_seed(1)
    diffusion = GaussianDiffusion(linear_noise_schedule(5, 0.3, 0.01, 0.2))
    denoiser = MLPDenoiser(30, hidden_dim=12, time_dim=4, dropout=0.5).eval()
    x0 = (torch.rand(7, 30) < 0.2).float()
    s_u = torch.rand(7) * 0.5 + 0.5
    with torch.no_grad():
        expected = diffusion.reverse(denoiser, x0, 5, row_scale=s_u)
    torch.testing.assert_close(fast_reverse(diffusion, denoiser, x0, 5, s_u), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast_reverse(diffusion, denoiser, x0.to_sparse_csr(), 5, s_u), expected,
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="eval mode"):
        fast_reverse(diffusion, denoiser.train(), x0, 5)


@pytest.mark.parametrize("signal_features", ["projected", "normalised"])
def test_diffusion_objective_is_eq_16_x0_mse(tiny_datamodule, signal_features):
    model = build(tiny_datamodule, denoiser_dropout=0.0, signal_features=signal_features, reweight_steps=False)
    users = torch.tensor([0, 3, 7])

    x0 = model.generator.user_rows(users)
    predictions = {m: torch.rand_like(x0) for m in model.modalities}
    model.generator.denoisers = torch.nn.ModuleDict({m: EchoDenoiser(p) for m, p in predictions.items()})
    diffusion_loss, signal_loss = model.diffusion_losses(users)
    expected = sum((p - x0).pow(2).mean() for p in predictions.values())
    torch.testing.assert_close(diffusion_loss, expected)
    # signal injection (eq 20): per modality, plus the attention-fused path (eq 19)
    structure = x0 @ model.id_embedding[60:].detach()
    features = {m: model.projected_features(m).detach() for m in model.modalities}  # Trans(f^m)
    if signal_features == "normalised":
        features = {m: f / f.norm(dim=1, keepdim=True) for m, f in features.items()}  # eq 21's Norm
    z = {m: p @ features[m] for m, p in predictions.items()}
    stacked = torch.stack([z[m] for m in model.modalities], dim=1)
    weights = model.generator.attention(stacked)
    fused = (weights.unsqueeze(-1) * stacked).sum(1)
    expected_signal = sum((z[m] - structure).pow(2).mean() for m in model.modalities) + (fused - structure).pow(2).mean()
    torch.testing.assert_close(signal_loss, expected_signal)


def test_default_step_weights_are_eq_13_under_x0_parameterisation(tiny_datamodule):
    """Eq 13's 1 / (2 sigma^2(t)) ||mu_theta - mu_tilde||^2 is, with mu_theta of eq 14, a weight
    coef_x0(t)^2 / (2 sigma^2(t)) on ||alpha_hat - alpha_0||^2; the default weights it by SNR(t-1) - SNR(t),
    which is twice that (the constant factor Adam ignores), and eq 15's L_0 (t = 1) by 1."""
    model = build(tiny_datamodule)
    assert model.generator.reweight_steps
    users = torch.arange(10)
    scale = model.generator.row_scale(users)
    for step in range(1, model.generator.diffusion.steps + 1):
        t = torch.full((10,), step)
        weights = model.generator.step_weights(t, scale)
        if step == 1:
            torch.testing.assert_close(weights, torch.ones(10))
            continue
        _, coef_x0, variance = model.generator.diffusion.posterior_coefficients(t, scale)
        torch.testing.assert_close(weights, (coef_x0.pow(2) / variance).squeeze(1), rtol=1e-4, atol=0.0)
    # and the objective uses them: a prediction off by the same amount at every step weighs more at t = 2
    x0 = model.generator.user_rows(users)
    model.generator.denoisers = torch.nn.ModuleDict({m: EchoDenoiser(x0 + 0.1) for m in model.modalities})
    torch.manual_seed(0)
    weighted, _ = model.diffusion_losses(users)
    model.generator.reweight_steps = False
    torch.manual_seed(0)
    unweighted, _ = model.diffusion_losses(users)
    assert float(weighted) > 10 * float(unweighted)


def test_dense_rows_are_the_training_rows(tiny_datamodule):
    model = build(tiny_datamodule)
    users = torch.tensor([5, 0, 5, 59])
    expected = torch.from_numpy(tiny_datamodule.data.train[users.numpy()].toarray()).float()
    torch.testing.assert_close(model.generator.user_rows(users), expected)


# ---- modality attention (eq 17-19) ----
def test_attention_weights_sum_to_one_per_user():
    torch.manual_seed(0)
    attention = ModalityAttention(dim=5, heads=4, hidden_dim=3)
    preferences = torch.randn(6, 3, 5)
    weights = attention(preferences)
    assert weights.shape == (6, 3)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(6))
    # by hand: per head softmax over modalities of w_h . tanh(W_h z + b_h), averaged over heads
    hidden = torch.tanh(attention.project(preferences)).view(6, 3, 4, 3)
    logits = torch.einsum("bmhk,hk->bmh", hidden, attention.score)
    torch.testing.assert_close(weights, logits.softmax(dim=1).mean(dim=2))


def test_no_attention_means_uniform_weights(tiny_datamodule):
    model = build(tiny_datamodule, use_modality_attention=False)
    assert not hasattr(model, "attention")
    weights = model.generator.attention_weights(torch.randn(4, 2, 8))
    torch.testing.assert_close(weights, torch.full((4, 2), 0.5))


# ---- modality-aware graphs ----
def test_generated_graph_is_symmetric_normalised_with_self_loops():
    graph = generated_bipartite_graph(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]), 2, 2).to_dense()
    # nodes: u0, u1, i0 (2), i1 (3); edges u0-i0, u0-i1, u1-i1 (duplicate counted once); + self-loops
    adjacency = torch.tensor([[1, 0, 1, 1], [0, 1, 0, 1], [1, 0, 1, 0], [1, 1, 0, 1]], dtype=torch.float32)
    d = adjacency.sum(1).rsqrt()
    torch.testing.assert_close(graph, d[:, None] * adjacency * d[None, :])
    users, items = torch.arange(50) % 10, torch.arange(50) % 7
    full = generated_bipartite_graph(users, items, 10, 7).to_dense()
    dropped = generated_bipartite_graph(users, items, 10, 7, keep_rate=0.5,
                                        generator=torch.Generator().manual_seed(0)).to_dense()
    torch.testing.assert_close(dropped, dropped.T)  # an edge's two directions drop together
    kept = dropped > 0
    assert 0 < kept.sum() < (full > 0).sum()
    torch.testing.assert_close(dropped[kept], full[kept] / 0.5)  # kept entries rescaled by 1 / keep_rate


def test_graph_generation_keeps_top_k_predictions_above_the_threshold(tiny_datamodule):
    model = build(tiny_datamodule, graph_top_k=3, similarity_threshold=0.6, threshold_on="prediction")
    row = torch.zeros(40)
    row[[4, 9, 17, 30]] = torch.tensor([0.95, 0.7, 0.55, 0.65])  # top-3: 4, 9, 30; 17 is 4th
    set_constant_prediction(model, row)
    edges = model.generate_edges()
    for modality in model.modalities:
        users, items = edges[modality]
        assert sorted(set(items.tolist())) == [4, 9, 30]
        assert torch.equal(torch.bincount(users, minlength=60), torch.full((60,), 3))
        assert model.generator.peaks[modality] == pytest.approx(0.95)
        stats = model.generator.stats[modality]
        assert stats["graph_edges"] == 180 and stats["graph_users"] == 60 and stats["candidate_items"] == 3
        assert stats["graph_score_q50"] == pytest.approx(0.7)  # of 60 x (0.95, 0.7, 0.65)
    model.generator.similarity_threshold = 0.8
    users, items = model.generate_edges()["image"]
    assert set(items.tolist()) == {4} and len(users) == 60


def hand_built_unit_features(model: DASRec, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {m: F.normalize(torch.randn(40, 8, generator=generator), dim=1) for m in model.modalities}


def test_similarity_threshold_acts_on_the_cosine_of_fused_preference_and_item_features(tiny_datamodule, monkeypatch):
    """Eq 17-19 and 21: candidates are the top-k denoised items; an edge is kept where
    cos(z_u, e_i^m) >= threshold, z_u = (sum_m a_u^m alpha_hat^m) e^m. With one denoised row for every user
    and modality, z_u = row @ e^m for any attention weights (they sum to one), so the cosines are known."""
    model = build(tiny_datamodule, graph_top_k=3)
    assert model.generator.threshold_on == "similarity"
    features = hand_built_unit_features(model, seed=1)
    shared = features["image"]
    monkeypatch.setattr(model.generator, "similarity_item_features", lambda features: {m: shared for m in features})
    row = torch.zeros(40)
    row[[4, 9, 17, 30]] = torch.tensor([0.95, 0.7, 0.55, 0.65])  # candidates 4, 9, 30
    set_constant_prediction(model, row)
    z = F.normalize(row @ shared, dim=0)
    cosines = {i: float(shared[i] @ z) for i in (4, 9, 30)}
    ordered = sorted(cosines, key=cosines.get)
    model.generator.similarity_threshold = (cosines[ordered[0]] + cosines[ordered[1]]) / 2  # keeps the two most similar
    for modality, (users, items) in model.generate_edges().items():
        assert sorted(set(items.tolist())) == sorted(ordered[1:])
        assert torch.equal(torch.bincount(users, minlength=60), torch.full((60,), 2))
        assert model.generator.peaks[modality] == pytest.approx(cosines[ordered[2]], abs=1e-5)
    model.generator.similarity_threshold = 1.01
    assert all(e.shape[1] == 0 for e in model.generate_edges().values())


def test_different_attention_weights_give_different_graphs(tiny_datamodule, monkeypatch):
    """The attention (eq 18) decides how the modalities' preferences fuse into z_u, so it shapes G^m; and
    DASRec-a (uniform weights) generates other graphs than DASRec from the same denoisers."""
    model = build(tiny_datamodule, graph_top_k=5, similarity_threshold=0.0)
    features = hand_built_unit_features(model, seed=2)
    monkeypatch.setattr(model.generator, "similarity_item_features", lambda _: features)
    graphs = {}
    for name, weights in {"image only": [1.0, 0.0], "text only": [0.0, 1.0]}.items():
        monkeypatch.setattr(model.generator, "attention_weights",
                            lambda stacked, w=weights: stacked.new_tensor(w).expand(stacked.shape[0], -1))
        graphs[name] = model.generate_edges()
    for m in model.modalities:
        assert not torch.equal(graphs["image only"][m], graphs["text only"][m])
    monkeypatch.undo()

    full = build(tiny_datamodule, graph_top_k=5, similarity_threshold=0.0)
    uniform = build(tiny_datamodule, graph_top_k=5, similarity_threshold=0.0, use_modality_attention=False)
    uniform.load_state_dict(full.state_dict(), strict=False)  # the same denoisers and projections
    with torch.no_grad():  # a decisive attention: one head's scores scaled up
        full.generator.attention.score.mul_(50.0)
    users = torch.arange(60)
    rows = {m: full.generator.denoise_users(m, users) for m in full.modalities}
    signal = full.generator.signal_item_features(full.generator_features())
    stacked = torch.stack([rows[m] @ signal[m] for m in full.modalities], dim=1)
    assert (full.generator.attention_weights(stacked) - 0.5).abs().max() > 0.1
    edges_full, edges_uniform = full.generate_edges(), uniform.generate_edges()
    assert any(not torch.equal(edges_full[m], edges_uniform[m]) for m in full.modalities)


def test_denoised_row_quality_by_hand():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.0],
                           [0.2, 0.2, 0.8, 0.0, 0.1],
                           [0.4, 0.3, 0.2, 0.1, 0.0],
                           [0.0, 0.1, 0.2, 0.3, 0.4]])
    rows = torch.tensor([[1.0, 0, 1, 1, 1], [0, 1, 0, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 0]]).to_sparse_csr()
    # user 0: items 0, 2, 3, 4 rank 1, 2, 3, 5; user 1: item 1 ties item 0 at 0.2, behind 0.8: rank 2;
    # user 2: item 3 ranks 4; user 3 holds nothing
    assert own_item_ranks(scores, rows).tolist() == [1, 2, 3, 5, 2, 4]
    assert user_median_ranks(own_item_ranks(scores, rows), rows).tolist() == [2, 2, 4]  # lower medians
    quality = denoised_row_quality(scores, rows)
    assert quality["own_item_rank"] == 2.0  # median of users' 2, 2, 4 (the pairs' median would be 2.5 -> 2)
    mean_row = F.normalize(scores.mean(0), dim=0)
    cosines = F.normalize(scores, dim=1) @ mean_row
    assert quality["mean_row_share"] == pytest.approx(float((cosines > 0.9).float().mean()))
    assert 0 < quality["mean_row_share"] < 1
    # a heavy user whose items all rank first does not outvote the three others
    heavy_rows = torch.tensor([[1.0, 1, 1, 1, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 1]]).to_sparse_csr()
    assert denoised_row_quality(torch.tensor([[5.0, 4, 3, 2, 1]] * 4), heavy_rows)["own_item_rank"] == 5.0


def test_centred_unit_rows_remove_the_shared_direction():
    features = torch.tensor([[3.0, 1.0], [3.0, -1.0], [3.0, 0.0]])  # every pairwise cosine above 0.8
    centred = centred_unit_rows(features)
    torch.testing.assert_close(centred[:2], torch.tensor([[0.0, 1.0], [0.0, -1.0]]))
    assert torch.isnan(centred[2]).sum() == 0 and centred[2].norm() == 0  # the mean itself: a zero row
    torch.testing.assert_close(centred_unit_rows(features, centre=False), F.normalize(features, dim=1))


def test_the_diffusion_objective_teaches_denoisers_users_rows(tiny_datamodule):
    """On the planted tiny data (users hold about 12 of 40 items, so a perfect denoiser ranks them around
    6.5 and an untrained one around 20), the default objective (eq 13 weights plus signal injection)
    teaches the denoisers users' rows: their own items rise far above random in the denoised rows."""
    model = build(tiny_datamodule)
    before = {m: model.generator.diagnostics(m)["denoiser_own_item_rank"] for m in model.modalities}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        users = torch.randperm(60, generator=generator)[:10]
        diffusion_loss, signal_loss = model.diffusion_losses(users)
        optimizer.zero_grad()
        (diffusion_loss + model.lambda_msi * signal_loss).backward()
        optimizer.step()
    for m in model.modalities:
        after = model.generator.diagnostics(m)["denoiser_own_item_rank"]
        assert before[m] >= 18 and after <= 12, (before, after)


def test_every_rebuild_logs_the_graph_and_denoiser_statistics(tiny_datamodule, tmp_path: Path):
    model = build(tiny_datamodule, graph_top_k=5, similarity_threshold=0.0)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=tiny_datamodule)
    logged = trainer.logged_metrics
    for m in model.modalities:
        stats = model.generator.stats[m]
        assert 0 < stats["graph_edges"] <= 5 * 60 and 0 < stats["graph_users"] <= 60
        assert stats["graph_score_q10"] <= stats["graph_score_q50"] <= stats["graph_score_q90"] <= 1.0
        for name in ("graph_users", "graph_score_q50", "candidate_items", "denoiser_own_item_rank",
                     "denoiser_mean_row_share"):
            assert float(logged[f"train/{name}_{m}"]) == pytest.approx(stats[name])
        assert float(logged[f"train/graph_edges_{m}"]) == stats["graph_edges"]


def test_no_diffusion_graphs_uses_the_interaction_graph(tiny_datamodule):
    model = build(tiny_datamodule, use_diffusion_graphs=False)
    assert not hasattr(model, "denoisers")
    graphs = model.modality_graphs()
    assert all(g is tiny_datamodule.graphs.norm_adjacency for g in graphs.values())
    losses = model.training_losses(torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5]))
    assert {"diffusion", "msi"}.isdisjoint(losses)


def test_plain_diffusion_switch_drops_the_sparsity_scaling(tiny_datamodule):
    model = build(tiny_datamodule, sparsity_scaled_noise=False)
    assert model.generator.row_scale(torch.tensor([0, 1])) is None
    assert build(tiny_datamodule).generator.row_scale(torch.tensor([0, 1])) is not None


# ---- cross-modal contrastive learning (eq 21-28) and aggregation (eq 29-32) ----
def test_info_nce_against_all_candidates_by_hand():
    anchors, candidates = torch.randn(3, 4), torch.randn(5, 4)
    positives = torch.tensor([4, 0, 2])
    a, c = F.normalize(anchors, dim=1), F.normalize(candidates, dim=1)
    similarity = a @ c.T / 0.5
    expected = -(similarity[torch.arange(3), positives] - similarity.logsumexp(dim=1)).mean()
    torch.testing.assert_close(info_nce_against(anchors, candidates, positives, 0.5), expected)


def test_contrastive_loss_has_both_anchors(tiny_datamodule):
    model = build(tiny_datamodule)
    inputs, graphs = model.modality_inputs(), model.modality_graphs()
    final = model.aggregate(inputs, graphs)
    views = model.contrastive_views(inputs, graphs)
    users, items = torch.tensor([0, 4, 9]), torch.tensor([1, 2, 3])
    image_u, text_u = views["image"][:60], views["text"][:60]
    image_i, text_i = views["image"][60:], views["text"][60:]
    modality_anchor = info_nce(image_u[users], text_u[users], 0.5) + info_nce(image_i[items], text_i[items], 0.5)
    main_anchor = sum(info_nce(final[:60][users], v[:60][users], 0.5) + info_nce(final[60:][items], v[60:][items], 0.5)
                      for v in views.values())
    model.use_main_anchor = False
    torch.testing.assert_close(model.contrastive_loss(final, views, users, items), modality_anchor)
    model.use_main_anchor, model.use_modality_anchor = True, False
    torch.testing.assert_close(model.contrastive_loss(final, views, users, items), main_anchor)
    model.use_modality_anchor = True
    torch.testing.assert_close(model.contrastive_loss(final, views, users, items), modality_anchor + main_anchor)


def test_contrastive_views_are_eq_22_25(tiny_datamodule):
    model = build(tiny_datamodule, n_layers=2)
    inputs, graphs = model.modality_inputs(), model.modality_graphs()
    a = tiny_datamodule.graphs.norm_adjacency.to_dense()
    views = model.contrastive_views(inputs, graphs)
    for m in model.modalities:
        start = graphs[m].to_dense() @ inputs[m].detach()
        expected = start + a @ start + a @ (a @ start)
        torch.testing.assert_close(views[m].detach(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("use_diffusion_graphs", [True, False])
def test_aggregation_is_eq_29_32(tiny_datamodule, use_diffusion_graphs):
    model = build(tiny_datamodule, omega=0.3, modality_graph_weight=0.2, n_layers=2,
                  use_diffusion_graphs=use_diffusion_graphs)
    with torch.no_grad():
        model.modality_logits.copy_(torch.tensor([0.9, -0.4]))  # unequal modality weights
    inputs, graphs = model.modality_inputs(), model.modality_graphs()
    a = tiny_datamodule.graphs.norm_adjacency.to_dense()

    def reference() -> torch.Tensor:  # eq 29-32 term by term, one modality at a time
        e = model.id_embedding
        weights = torch.softmax(model.modality_logits, 0)
        h = 0
        for w, m in zip(weights, model.modalities):
            first = a @ inputs[m]
            second = a @ torch.cat([first[:60], e[60:]])
            graph_term = 0.2 * graphs[m].to_dense() @ e if use_diffusion_graphs else 0.0
            h = h + w * (first + second + graph_term)
        return h + a @ h + a @ (a @ h) + 0.3 * F.normalize(h, dim=1)

    direction = torch.randn(100, 8)
    parameters = [model.id_embedding, model.modality_logits, *model.projections.parameters()]
    expected = reference()
    expected_grads = torch.autograd.grad((expected * direction).sum(), parameters, retain_graph=True)
    inputs = model.modality_inputs()
    got = model.aggregate(inputs, graphs)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    for g, e in zip(torch.autograd.grad((got * direction).sum(), parameters), expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


def test_training_losses_on_batch_rows_equal_the_full_tables(tiny_datamodule):
    """Training computes only the batch's rows of H_bar and of the views (propagate_rows); the BPR and
    contrastive terms and their gradients are those of the full tables."""
    model = build(tiny_datamodule, n_layers=2, use_diffusion_graphs=False, reg_weight=0.0, lambda_cl=0.3)
    users, positives, negatives = next(iter(tiny_datamodule.train_dataloader()))
    parameters = [model.id_embedding, model.modality_logits, *model.projections.parameters()]
    losses = model.training_losses(users, positives, negatives)
    got = losses["bpr"] + losses["cl"]
    inputs, graphs = model.modality_inputs(), model.modality_graphs()
    final, views = model.aggregate(inputs, graphs), model.contrastive_views(inputs, graphs)
    u, p, n = final[users], final[positives + 60], final[negatives + 60]
    bpr = -F.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean()
    cl = 0.3 * model.contrastive_loss(final, views, torch.unique(users), torch.unique(positives))
    torch.testing.assert_close(losses["bpr"], bpr)
    torch.testing.assert_close(losses["cl"], cl)
    for g, e in zip(torch.autograd.grad(got, parameters), torch.autograd.grad(bpr + cl, parameters)):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


# ---- when the diffusion objective runs ----
@pytest.mark.parametrize("world_size", [1, 2])
def test_diffusion_plan_spreads_every_user_over_every_step(world_size):
    plans = [diffusion_plan(50, 12, None, seed=4, epoch=3, rank=r, world_size=world_size) for r in range(world_size)]
    for plan in plans:
        assert list(plan) == list(range(12))  # every batch diffuses
        sizes = [len(users) for users in plan.values()]
        assert max(sizes) - min(sizes) <= 1
    everyone = torch.cat([users for plan in plans for users in plan.values()])
    assert torch.equal(everyone.sort().values, torch.arange(50))  # each user once per epoch


@pytest.mark.parametrize(("world_size", "batches"), [(1, [0, 1, 3, 5, 6, 8, 10]), (2, [0, 3, 6, 9])])
def test_diffusion_plan_in_batches_of_users_on_evenly_spaced_steps(world_size, batches):
    # 50 users in batches of at most 8: ceil(50 / 8) = 7 on one process, ceil(25 / 8) = 4 on each of two,
    # at batches floor(c * 12 / n_chunks)
    plans = [diffusion_plan(50, 12, 8, seed=4, epoch=3, rank=r, world_size=world_size) for r in range(world_size)]
    for plan in plans:
        assert list(plan) == batches  # the same steps on every process
        assert all(len(users) <= 8 for users in plan.values())
    everyone = torch.cat([users for plan in plans for users in plan.values()])
    assert torch.equal(everyone.sort().values, torch.arange(50))


def test_diffusion_plan_is_drawn_per_epoch_and_cycles_when_users_are_few():
    first, again = (diffusion_plan(50, 12, None, seed=4, epoch=3) for _ in range(2))
    assert all(torch.equal(first[b], again[b]) for b in first)
    assert not torch.equal(diffusion_plan(50, 12, None, seed=4, epoch=4)[0], first[0])
    few = diffusion_plan(5, 8, None, seed=4, epoch=0)  # 5 users, 8 steps: one user per step, then again
    assert list(few) == list(range(8)) and torch.equal(few[5], few[0]) and torch.equal(few[7], few[2])


@pytest.mark.parametrize(("diffusion_batch_size", "expected_steps"), [(None, None), (25, 3)])
def test_training_diffuses_each_user_once_per_epoch(tiny_datamodule, tmp_path: Path, monkeypatch,
                                                    diffusion_batch_size, expected_steps):
    model = build(tiny_datamodule, diffusion_batch_size=diffusion_batch_size)
    calls = []
    diffusion_losses = model.diffusion_losses

    def spy(users: torch.Tensor):
        calls.append((model._batch_in_epoch, users.clone()))
        return diffusion_losses(users)

    monkeypatch.setattr(model, "diffusion_losses", spy)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=tiny_datamodule)
    n_batches = trainer.num_training_batches
    steps = [batch for batch, _ in calls]
    if expected_steps is None:
        assert steps == list(range(n_batches))
    else:  # 60 users in batches of at most 25: 3 diffusion steps, evenly spaced
        assert n_batches > expected_steps and steps == [c * n_batches // expected_steps for c in range(expected_steps)]
        assert all(len(users) <= diffusion_batch_size for _, users in calls)
    assert torch.equal(torch.cat([users for _, users in calls]).sort().values, torch.arange(60))
    assert "train/diffusion_loss" in trainer.logged_metrics


def test_diffusion_batches_under_ddp_need_the_unused_parameter_search(tiny_datamodule):
    model = build(tiny_datamodule, diffusion_batch_size=16)
    model.trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    with pytest.raises(ValueError, match="ddp_find_unused_parameters_true"):
        model.on_fit_start()
    model.trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_find_unused_parameters_true", logger=False)
    model.on_fit_start()  # accepted
    with pytest.raises(ValueError, match="diffusion_batch_size"):
        build(tiny_datamodule, diffusion_batch_size=0)


# ---- training, checkpoints ----
def test_dasrec_trains_and_restores_its_generated_graphs(tiny_datamodule, tmp_path: Path):
    model = build(tiny_datamodule, graph_top_k=3, similarity_threshold=-1.0)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[RankingEvaluator(ks=[20])])
    trainer.fit(model, datamodule=tiny_datamodule)
    losses = trainer.logged_metrics
    assert {"train/bpr_loss", "train/cl_loss", "train/diffusion_loss", "train/msi_loss", "train/reg_loss"} <= set(losses)
    assert all(torch.isfinite(torch.as_tensor(v)) for v in losses.values())
    assert all(losses[f"train/graph_edges_{m}"] == 3 * model.n_users for m in model.modalities)  # top-3, all kept
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    validated = trainer.validate(model, datamodule=tiny_datamodule, verbose=False)[0]["val/recall@20"]

    restored = DASRec.load_from_checkpoint(path)
    saved_edges = model.generator.edges
    assert all(torch.equal(restored.generator.edges[m], saved_edges[m]) for m in model.modalities)
    again = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[RankingEvaluator(ks=[20])], default_root_dir=tmp_path)
    assert again.validate(restored, datamodule=tiny_datamodule, verbose=False)[0]["val/recall@20"] == pytest.approx(validated)


def test_checkpoints_from_before_the_generator_component_still_load(tiny_datamodule):
    """State dicts whose denoiser and attention weights sit at the model's top level (``denoisers.*``,
    ``attention.*``) load into ``generator.*``."""
    model = build(tiny_datamodule)
    state = {k.removeprefix("generator."): v.clone() + 1.0 for k, v in model.state_dict().items()}
    checkpoint = {"state_dict": state, "dasrec_generated_edges": {m: torch.zeros(2, 0, dtype=torch.long)
                                                                   for m in model.modalities}}
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"])
    weight = model.generator.denoisers["image"].output_layer.weight
    assert torch.equal(weight, state["generator.denoisers.image.output_layer.weight"])
    assert model.generator.edges["image"].shape == (2, 0)


def test_denoisers_learn_at_their_own_rate(tiny_datamodule):
    model = build(tiny_datamodule, denoiser_lr_scale=10.0)
    model.optimizer_factory = lambda params: torch.optim.Adam(params, lr=1e-3)
    optimizer = model.configure_optimizers()
    rest, denoising = optimizer.param_groups
    assert rest["lr"] == pytest.approx(1e-3) and denoising["lr"] == pytest.approx(1e-2)
    assert {id(p) for p in denoising["params"]} == {id(p) for p in model.generator.denoisers.parameters()}
    assert len(rest["params"]) + len(denoising["params"]) == len(list(model.parameters()))
    plain = build(tiny_datamodule)
    plain.optimizer_factory = model.optimizer_factory
    assert len(plain.configure_optimizers().param_groups) == 1
    with pytest.raises(ValueError, match="denoiser_lr_scale"):
        build(tiny_datamodule, denoiser_lr_scale=0.0)


def test_a_threshold_above_every_prediction_is_reported(tiny_datamodule, tmp_path: Path):
    """An empty generated graph is logged as 0 edges and, from the second epoch's graphs on (epoch 0's come
    from untrained denoisers), warned about once per modality, not per epoch."""
    model = build(tiny_datamodule, similarity_threshold=2.0)
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    with pytest.warns(UserWarning, match="similarity_threshold=2.0 kept 0 edges") as caught:
        trainer.fit(model, datamodule=tiny_datamodule)
    sparse = [w for w in caught if "kept 0 edges" in str(w.message)]
    assert all("(epoch 1;" in str(w.message) for w in sparse)
    assert sorted(m for m in model.modalities if any(f"generated {m} graph" in str(w.message) for w in sparse)) \
        == sorted(model.modalities) and len(sparse) == len(model.modalities)
    assert all(trainer.logged_metrics[f"train/graph_edges_{m}"] == 0 for m in model.modalities)


def test_bfloat16_denoisers_train_and_generate_graphs(tiny_datamodule):
    """``denoiser_precision: bfloat16``: the diffusion and signal-injection losses of the float32 model (same
    weights, same draws) up to rounding, float32 gradients, and the same generated edges where no
    prediction lies near the threshold."""
    exact = build(tiny_datamodule, denoiser_dropout=0.0, threshold_on="prediction")
    mixed = build(tiny_datamodule, denoiser_dropout=0.0, denoiser_precision="bfloat16", threshold_on="prediction")
    mixed.load_state_dict(exact.state_dict())
    users = torch.arange(20)
    results = {}
    for name, model in (("exact", exact), ("mixed", mixed)):
        torch.manual_seed(3)
        results[name] = model.diffusion_losses(users)
    for got, expected in zip(results["mixed"], results["exact"]):
        torch.testing.assert_close(got, expected, rtol=2e-2, atol=1e-5)
    sum(results["mixed"]).backward()
    weight = mixed.generator.denoisers["image"].output_layer.weight
    assert weight.dtype == weight.grad.dtype == torch.float32 and weight.grad.abs().sum() > 0
    # graphs: threshold the float32 model's top predictions far from any edge, then both models agree
    exact.generator.graph_top_k = mixed.generator.graph_top_k = 3
    with torch.no_grad():
        top = torch.cat([fast_reverse(exact.generator.diffusion, exact.generator.denoisers[m].eval(), exact.generator.user_rows(torch.arange(60)), 5,
                                      exact.generator.row_scale(torch.arange(60))).topk(3, dim=1).values.flatten()
                         for m in exact.modalities]).sort().values
    gaps = top[1:] - top[:-1]
    middle = int(gaps[len(gaps) // 4: 3 * len(gaps) // 4].argmax()) + len(gaps) // 4  # a wide gap mid-range
    exact.generator.similarity_threshold = mixed.generator.similarity_threshold = float(top[middle] + top[middle + 1]) / 2
    assert gaps[middle] > 1e-2 * top.abs().max()  # wide enough for bfloat16's rounding
    edges_exact, edges_mixed = exact.generate_edges(), mixed.generate_edges()
    for m in exact.modalities:
        assert edges_mixed[m].shape[1] > 0
        assert torch.equal(edges_mixed[m], edges_exact[m])


@pytest.mark.parametrize("negatives", ["batch", "all"])
def test_bfloat16_contrastive_products_change_the_contrastive_term_by_rounding_only(tiny_datamodule, negatives):
    """``contrastive_precision: bfloat16``: L_cl of the float32 model up to the rounding of its
    similarities (batch or all-node negatives), every other term unchanged."""
    batch = torch.arange(12), torch.arange(12) % 7, torch.arange(12) % 5 + 7  # users, positives, negatives
    exact, mixed = paired_losses(build(tiny_datamodule, contrastive_negatives=negatives),
                                 build(tiny_datamodule, contrastive_negatives=negatives, contrastive_precision="bfloat16"),
                                 *batch)
    assert_only_contrastive_term_rounded(exact, mixed, atol=1e-6)
    with pytest.raises(ValueError, match="contrastive_precision"):
        build(tiny_datamodule, contrastive_precision="float16")
