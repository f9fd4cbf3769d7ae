"""DiffMM as DASRec without DASRec's additions: what it fixes, its losses by hand, its graphs, checkpoints."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from lit_mmrec.data import RecDataModule
from lit_mmrec.metrics import RankingEvaluator
from lit_mmrec.models import DASRec, DiffMM
from tests.conftest import EchoDenoiser, diffmm_gamma_bar


def build(datamodule: RecDataModule, **kwargs) -> DiffMM:
    torch.manual_seed(0)
    options = dict(embedding_dim=8, denoiser_hidden=16, denoiser_time_dim=4)
    options.update(kwargs)
    model = DiffMM(datamodule.n_users, datamodule.n_items, feature_dims=datamodule.feature_dims, **options)
    model.graphs = datamodule.graphs
    model.on_graphs_ready()
    return model


def test_diffmm_leaves_out_what_dasrec_adds(tiny_datamodule):
    model = build(tiny_datamodule)
    assert not model.generator.sparsity_scaled_noise and model.generator.row_scale(torch.arange(4)) is None  # one schedule for all
    assert not hasattr(model.generator, "attention") and not model.generator.fused_signal_injection
    assert model.generator.similarity_threshold == float("-inf") and model.generator.reweight_steps
    assert model.generator.diffusion.noise_bar[0].item() == pytest.approx(1e-4, rel=1e-6)  # DiffMM's fixed first beta
    assert (model.use_modality_anchor, model.use_main_anchor) == (True, False)  # cl_method 0
    main = build(tiny_datamodule, contrast_with="main")
    assert (main.use_modality_anchor, main.use_main_anchor) == (False, True)  # cl_method 1
    with pytest.raises(ValueError, match="contrast_with"):
        build(tiny_datamodule, contrast_with="both")


def test_diffusion_objective_has_diffmm_step_weights_and_per_modality_signal_injection(tiny_datamodule):
    steps, scale, g_min, g_max = 5, 0.1, 0.0001, 0.02
    model = build(tiny_datamodule, denoiser_dropout=0.0, diffusion_steps=steps, noise_scale=scale,
                  noise_min=g_min, noise_max=g_max)
    users = torch.tensor([0, 3, 7, 8, 11])
    x0 = model.generator.user_rows(users)
    predictions = {m: torch.rand_like(x0) for m in model.modalities}
    model.generator.denoisers = torch.nn.ModuleDict({m: EchoDenoiser(p) for m, p in predictions.items()})
    torch.manual_seed(3)
    diffusion_loss, signal_loss = model.diffusion_losses(users)

    # DiffMM's schedule: betas from v_t = s * linspace(g_min, g_max, T)[t - 1], the first set to 1e-4,
    # gamma_bar = cumprod(1 - beta); SNR = gamma_bar / (1 - gamma_bar); a row noised to step t weighs
    # SNR(t - 1) - SNR(t), and 1 at the first step
    gamma_bar = diffmm_gamma_bar(steps, scale, g_min, g_max, first_beta=1e-4)
    snr = [g / (1 - g) for g in gamma_bar]
    weight = {1: 1.0, **{t: snr[t - 2] - snr[t - 1] for t in range(2, steps + 1)}}
    t = model.generator.denoisers[model.modalities[0]].steps[0]
    assert all(torch.equal(model.generator.denoisers[m].steps[0], t) for m in model.modalities)  # one draw, shared
    row_weights = torch.tensor([weight[int(step)] for step in t])
    expected = sum((row_weights * (p - x0).pow(2).mean(dim=1)).mean() for p in predictions.values())
    torch.testing.assert_close(diffusion_loss, expected)

    # signal injection: || alpha_hat Trans(f^m) - alpha_0 E_id ||^2 per modality, no fused path
    structure = x0 @ model.id_embedding[model.n_users:].detach()
    expected_signal = sum((p @ model.projected_features(m).detach() - structure).pow(2).mean()
                          for m, p in predictions.items())
    torch.testing.assert_close(signal_loss, expected_signal)


def test_every_user_gets_its_top_k_edges_whatever_the_predictions(tiny_datamodule):
    model = build(tiny_datamodule, graph_top_k=2)
    for denoiser in model.generator.denoisers.values():  # predictions far below any threshold DASRec would use
        torch.nn.init.constant_(denoiser.output_layer.bias, -50.0)
    edges = model.generate_edges()
    for modality in model.modalities:
        users = edges[modality][0]
        assert torch.equal(torch.bincount(users, minlength=model.n_users), torch.full((model.n_users,), 2))


def test_dasrec_refuses_attention_without_the_fused_signal_injection(tiny_datamodule):
    with pytest.raises(ValueError, match="fused_signal_injection"):
        DASRec(tiny_datamodule.n_users, tiny_datamodule.n_items, feature_dims=tiny_datamodule.feature_dims,
               use_modality_attention=True, fused_signal_injection=False)


def test_diffmm_trains_and_restores_from_its_own_hyperparameters(tiny_datamodule, tmp_path: Path):
    model = build(tiny_datamodule, diffusion_batch_size=8, contrast_with="main")
    assert "use_modality_attention" not in model.hparams and model.hparams["contrast_with"] == "main"
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, callbacks=[RankingEvaluator(ks=[20])])
    trainer.fit(model, datamodule=tiny_datamodule)
    metrics = trainer.logged_metrics
    assert {"train/bpr_loss", "train/cl_loss", "train/diffusion_loss", "train/msi_loss"} <= set(metrics)
    assert all(metrics[f"train/graph_edges_{m}"] == 5 * model.n_users for m in model.modalities)  # rebuild_k 5
    path = tmp_path / "diffmm.ckpt"
    trainer.save_checkpoint(path)
    validated = trainer.validate(model, datamodule=tiny_datamodule, verbose=False)[0]["val/recall@20"]
    restored = DiffMM.load_from_checkpoint(path)
    assert restored.use_main_anchor and not restored.use_modality_anchor
    again = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[RankingEvaluator(ks=[20])], default_root_dir=tmp_path)
    assert again.validate(restored, datamodule=tiny_datamodule, verbose=False)[0]["val/recall@20"] == pytest.approx(validated)


def test_diffmms_own_schedule_trains_the_denoisers_in_a_pass_before_the_graphs_are_rebuilt(tiny_datamodule, tmp_path,
                                                                                            monkeypatch):
    """``diffusion_pass: epoch_start``: each epoch first diffuses every user once in batches of
    ``diffusion_batch_size`` with an Adam of the denoisers' own, then generates the graphs; the recommendation
    steps carry no diffusion terms and their optimizer holds no denoiser weight."""
    model = build(tiny_datamodule, diffusion_batch_size=25, diffusion_pass="epoch_start")
    events, losses, generate = [], model.diffusion_losses, model.generate_edges

    def spy_losses(users):
        events.append(("diffuse", users.clone()))
        return losses(users)

    def spy_generate():
        events.append(("generate", None))
        return generate()

    monkeypatch.setattr(model, "diffusion_losses", spy_losses)
    monkeypatch.setattr(model, "generate_edges", spy_generate)
    before = {name: p.detach().clone() for name, p in model.generator.named_parameters()}
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
                        limit_val_batches=0)
    trainer.fit(model, datamodule=tiny_datamodule)
    assert [kind for kind, _ in events] == ["diffuse"] * 3 + ["generate"]  # 60 users in batches of 25, then rebuild
    assert torch.equal(torch.cat([users for kind, users in events if kind == "diffuse"]).sort().values, torch.arange(60))
    metrics = trainer.logged_metrics
    assert "train/diffusion_pass" in metrics and "train/diffusion_loss" not in metrics
    main = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    generating = {id(p) for p in model.generator.parameters()}
    assert not main & generating and len(main) + len(generating) == len(list(model.parameters()))
    assert all(not torch.equal(before[name], p) for name, p in model.generator.named_parameters())


def test_diffmms_own_schedule_resumes_exactly(tiny_datamodule, tmp_path):
    """Two epochs in one run, and one epoch then a resume from its checkpoint, end with the same weights: the
    pass's optimizer state travels in the checkpoint."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lit_mmrec.metrics.callbacks import RandomStateCheckpoint

    def fit(root: Path, epochs: int, ckpt_path: Path | None = None) -> DiffMM:
        L.seed_everything(0)
        model = build(tiny_datamodule, diffusion_batch_size=25, diffusion_pass="epoch_start")
        trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=root, limit_val_batches=0,
                            callbacks=[RandomStateCheckpoint(), ModelCheckpoint(dirpath=root, save_last=True)])
        trainer.fit(model, datamodule=tiny_datamodule, ckpt_path=ckpt_path)
        return model

    whole = fit(tmp_path / "whole", 2)
    fit(tmp_path / "split", 1)
    assert "dasrec_pass_optimizer" in torch.load(tmp_path / "split" / "last.ckpt", weights_only=False)
    resumed = fit(tmp_path / "split", 2, tmp_path / "split" / "last.ckpt")
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
