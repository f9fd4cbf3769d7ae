"""DiffCL components against the paper's equations, and the ablation switches."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lit_mmrec.data import RecDataModule
from lit_mmrec.metrics import RankingEvaluator
from lit_mmrec.models import DiffCL
from tests.conftest import assert_only_contrastive_term_rounded, paired_losses


def build(datamodule: RecDataModule, **kwargs) -> DiffCL:
    torch.manual_seed(0)
    model = DiffCL(datamodule.n_users, datamodule.n_items, feature_dims=datamodule.feature_dims,
                   embedding_dim=8, **kwargs)
    model.graphs = datamodule.graphs
    model.on_graphs_ready()
    return model


def test_fusion_weights_start_at_one_half(tiny_datamodule):
    model = build(tiny_datamodule)
    torch.testing.assert_close(model.fusion_weights(), torch.tensor([0.5, 0.5]))
    assert any(p is model.fusion_mu for p in model.parameters())


def test_fusion_generalises_to_one_and_three_modalities(tiny_datamodule):
    one = DiffCL(60, 40, feature_dims={"image": 8}, embedding_dim=4)
    torch.testing.assert_close(one.fusion_weights(), torch.ones(1))
    three = DiffCL(60, 40, feature_dims={"a": 2, "b": 2, "c": 2}, embedding_dim=4)
    torch.testing.assert_close(three.fusion_weights(), torch.full((3,), 1 / 3))
    with pytest.raises(ValueError, match="at least one"):
        DiffCL(60, 40, feature_dims={})


def test_aggregated_user_inputs_are_item_means(tiny_datamodule):
    model = build(tiny_datamodule, user_modality_input="aggregate")
    features = model.modality_item_features("image")
    inputs = model.modality_inputs("image", features)
    train = tiny_datamodule.data.train
    user = 5
    expected = features[train[user].indices].mean(dim=0)
    torch.testing.assert_close(inputs[user], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(inputs[60:], features)


def test_item_item_enhancement_is_knn_aggregation(tiny_datamodule):
    model = build(tiny_datamodule, item_item_layers=2)
    features = model.modality_item_features("text")
    s = tiny_datamodule.graphs.item_item["text"].to_dense()
    torch.testing.assert_close(model.item_item_enhancement("text", features), s @ (s @ features),
                               rtol=1e-5, atol=1e-6)
    id_final, encoded, final = model.encode_all()
    torch.testing.assert_close(final["text"][:60], encoded["text"][:60])
    torch.testing.assert_close(final["text"][60:], encoded["text"][60:] + s @ (s @ features), rtol=1e-5, atol=1e-5)


def test_alignment_loss_matches_eq_27(tiny_datamodule):
    model = build(tiny_datamodule)
    rows = torch.arange(4)
    id_final = torch.tensor([[0.0, 1.0], [2.0, 1.0], [0.0, 3.0], [2.0, 3.0]])
    image = id_final + 1.0  # same spread, mean shifted by 1 -> |mu| term 1, |sigma| term 0
    text = id_final * 2.0   # mean doubled, std doubled
    loss = model.alignment_loss(id_final[rows], {"image": image[rows], "text": text[rows]})
    mean, std = id_final.mean(0), id_final.std(0)
    expected = 1.0 + ((mean - 2 * mean).abs().mean() + (std - 2 * std).abs().mean())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_alignment_treats_the_id_statistics_as_a_fixed_target(tiny_datamodule):
    id_rows = torch.randn(6, 4, requires_grad=True)
    image, text = torch.randn(6, 4, requires_grad=True), torch.randn(6, 4, requires_grad=True)
    build(tiny_datamodule).alignment_loss(id_rows, {"image": image, "text": text}).backward()
    assert id_rows.grad is None and image.grad.abs().sum() > 0 and text.grad.abs().sum() > 0
    build(tiny_datamodule, align_to_fixed_id=False).alignment_loss(id_rows, {"image": image, "text": text}).backward()
    assert id_rows.grad.abs().sum() > 0


def test_training_losses_match_the_full_table_formulas(tiny_datamodule):
    """The batch's rows are gathered once per table; the loss terms are those of eq 29-33 on the full tables."""
    model = build(tiny_datamodule, use_diffusion_cl=False, lambda_e=0.3, lambda_align=0.2, reg_weight=0.0)
    users, positives, negatives = next(iter(tiny_datamodule.train_dataloader()))
    losses = model.training_losses(users, positives, negatives)
    id_final, _, final = model.encode_all()
    combined = torch.cat([model.fuse(final), id_final], dim=1)
    u, p, n = combined[users], combined[positives + 60], combined[negatives + 60]
    expected_bpr = -torch.nn.functional.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean()
    rows = torch.cat([torch.unique(users), torch.unique(positives) + 60])
    expected_emb = 0.3 * sum(final[m][rows].pow(2).mean() for m in ("image", "text"))
    expected_align = 0.2 * sum((id_final[rows].mean(0) - final[m][rows].mean(0)).abs().mean()
                               + (id_final[rows].std(0) - final[m][rows].std(0)).abs().mean() for m in ("image", "text"))
    torch.testing.assert_close(losses["bpr"], expected_bpr)
    torch.testing.assert_close(losses["emb"], expected_emb)
    torch.testing.assert_close(losses["align"], expected_align)


@pytest.mark.parametrize(
    ("switches", "present", "absent"),
    [
        ({}, {"bpr", "emb", "cl", "diffusion", "align"}, set()),
        ({"use_diffusion_cl": False}, {"bpr", "align"}, {"cl", "diffusion"}),
        ({"use_alignment": False}, {"bpr", "cl"}, {"align"}),
        ({"use_diffusion_cl": False, "use_alignment": False, "use_item_item": False}, {"bpr"}, {"cl", "align"}),
    ],
)
def test_switches_remove_exactly_their_loss_terms(tiny_datamodule, switches, present, absent):
    model = build(tiny_datamodule, **switches)
    batch = next(iter(tiny_datamodule.train_dataloader()))
    losses = model.training_losses(*batch)
    assert present <= set(losses) and not absent & set(losses)
    assert all(torch.isfinite(value) for value in losses.values())


def test_item_item_switch_removes_its_effect_on_embeddings(tiny_datamodule):
    on, off = build(tiny_datamodule), build(tiny_datamodule, use_item_item=False)
    off.load_state_dict(on.state_dict())
    _, encoded_on, final_on = on.encode_all()
    _, encoded_off, final_off = off.encode_all()
    torch.testing.assert_close(final_off["image"], encoded_on["image"])
    assert not torch.allclose(final_on["image"][60:], final_off["image"][60:])
    torch.testing.assert_close(final_on["image"][:60], final_off["image"][:60])  # users untouched


def test_diffusion_views_are_two_different_denoised_samples(tiny_datamodule):
    model = build(tiny_datamodule, denoiser_dropout=0.0).eval()
    x0 = torch.randn(10, 8)
    a, b = model.diffusion_view("image", x0), model.diffusion_view("image", x0)
    assert a.shape == x0.shape and not torch.allclose(a, b)


def test_perturbed_views_are_the_forward_noising_without_the_denoiser(tiny_datamodule):
    """``view_generator: perturbed`` (the control for the denoiser): x_T = sqrt(gamma_bar_T) x0 + sqrt(1 -
    gamma_bar_T) eps with the denoised views' noise draw, and no denoiser product."""
    denoised = build(tiny_datamodule, denoiser_dropout=0.0, noise_scale=0.5)
    perturbed = build(tiny_datamodule, denoiser_dropout=0.0, noise_scale=0.5, view_generator="perturbed")
    x0 = torch.randn(10, 8)
    torch.manual_seed(3)
    view = perturbed.diffusion_view("image", x0)
    torch.manual_seed(3)
    eps = torch.randn_like(x0)
    noise_bar = perturbed.diffusion.noise_bar[perturbed.view_step - 1]  # 1 - gamma_bar_T (steps 1..T)
    torch.testing.assert_close(view, (1 - noise_bar).sqrt() * x0 + noise_bar.sqrt() * eps)
    torch.manual_seed(3)
    assert not torch.allclose(denoised.diffusion_view("image", x0), view)  # the denoiser changes the views
    with pytest.raises(ValueError, match="view_generator"):
        build(tiny_datamodule, view_generator="gaussian")


def test_each_epoch_logs_how_far_the_views_are_from_each_other_and_their_input(tiny_datamodule, tmp_path):
    model = build(tiny_datamodule, view_generator="perturbed", noise_scale=1.0)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    trainer.fit(model, datamodule=tiny_datamodule)
    between, to_input = (float(trainer.callback_metrics[f"train/{k}"]) for k in ("view_cosine", "view_input_cosine"))
    assert 0.0 < between < 1.0 and 0.0 < to_input < 1.0  # noise at scale 1 moves the views visibly
    assert to_input > between  # each view keeps more of its input than of the other view's noise


def test_views_without_denoiser_training_pass_gradients_to_the_encoder_only(tiny_datamodule):
    trained = build(tiny_datamodule, denoiser_dropout=0.0)
    frozen = build(tiny_datamodule, denoiser_dropout=0.0, views_train_denoiser=False)
    x0 = torch.randn(10, 8)
    grads = []
    for model in (trained, frozen):
        x = x0.clone().requires_grad_()
        torch.manual_seed(1)
        view = model.diffusion_view("image", x)
        view.pow(2).sum().backward()
        grads.append((view.detach(), x.grad, model.denoisers["image"].input_layer.weight.grad))
    (view_t, x_grad_t, w_grad_t), (view_f, x_grad_f, w_grad_f) = grads
    torch.testing.assert_close(view_f, view_t)  # the same views (same weights, same noise)
    torch.testing.assert_close(x_grad_f, x_grad_t)  # the same gradient into the encoder output
    assert w_grad_t is not None and w_grad_t.abs().sum() > 0
    assert w_grad_f is None  # but none into the denoiser


def test_diffcl_trains_with_lightning(tiny_datamodule, tmp_path):
    model = DiffCL(tiny_datamodule.n_users, tiny_datamodule.n_items, feature_dims=tiny_datamodule.feature_dims,
                   embedding_dim=8)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[RankingEvaluator()], default_root_dir=tmp_path)
    trainer.fit(model, datamodule=tiny_datamodule)
    assert torch.isfinite(trainer.callback_metrics["train/loss_epoch"])
    assert 0.0 <= float(trainer.callback_metrics["val/recall@20"]) <= 1.0


def test_learned_user_tables_share_the_id_l2(tiny_datamodule):
    model = build(tiny_datamodule, user_modality_input="learned", reg_weight=0.5, use_diffusion_cl=False)
    users, positives, negatives = next(iter(tiny_datamodule.train_dataloader()))
    reg = model.training_losses(users, positives, negatives)["reg"]
    table = model.id_embedding
    rows = [table[users], table[positives + 60], table[negatives + 60],
            model.user_modality["image"][users], model.user_modality["text"][users]]
    expected = 0.5 * sum(r.pow(2).sum() for r in rows) / (2 * users.shape[0])
    torch.testing.assert_close(reg, expected)


def test_bfloat16_denoisers_change_the_losses_by_rounding_only(tiny_datamodule):
    """``denoiser_precision: bfloat16``: the same loss terms (same weights, same noise draws) up to bfloat16
    rounding in the denoisers, float32 gradients, and no change to the terms that use no denoiser."""
    mixed = build(tiny_datamodule, denoiser_precision="bfloat16")
    batch = next(iter(tiny_datamodule.train_dataloader()))
    losses = dict(zip(("exact", "mixed"), paired_losses(build(tiny_datamodule), mixed, *batch)))
    assert set(losses["mixed"]) == set(losses["exact"]) >= {"cl", "diffusion"}
    for term in ("bpr", "emb", "align"):
        torch.testing.assert_close(losses["mixed"][term], losses["exact"][term])
    for term in ("cl", "diffusion"):
        torch.testing.assert_close(losses["mixed"][term], losses["exact"][term], rtol=2e-2, atol=1e-4)
    sum(losses["mixed"].values()).backward()
    weight = mixed.denoisers["image"].input_layer.weight
    assert weight.dtype == weight.grad.dtype == torch.float32 and weight.grad.abs().sum() > 0


def test_bfloat16_contrastive_products_change_the_contrastive_term_by_rounding_only(tiny_datamodule):
    """``contrastive_precision: bfloat16``: L_cl of the float32 model (same weights, same noise draws) up to
    the rounding of its similarities, every other term unchanged."""
    batch = next(iter(tiny_datamodule.train_dataloader()))
    exact, mixed = paired_losses(build(tiny_datamodule), build(tiny_datamodule, contrastive_precision="bfloat16"), *batch)
    assert_only_contrastive_term_rounded(exact, mixed, atol=1e-5)
    with pytest.raises(ValueError, match="contrastive_precision"):
        build(tiny_datamodule, contrastive_precision="float16")
