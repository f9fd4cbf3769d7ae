"""Shared fixtures: tiny synthetic data, a built data module, and the optional real data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lit_mmrec.data import RecDataModule, Synthetic
from lit_mmrec.lightning_cli import build_cli
from lit_mmrec.models import DASRec

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """``$LIT_MMREC_DATA`` if set, else ``../shared/data`` beside the checkout; None when absent."""
    candidate = Path(os.environ.get("LIT_MMREC_DATA", REPO_ROOT.parent / "shared" / "data"))
    return candidate if candidate.is_dir() else None


def require_dataset(name: str) -> Path:
    root = shared_data_dir()
    if root is None or not (root / name).is_dir():
        pytest.skip(f"real dataset '{name}' not found (set LIT_MMREC_DATA or place ../shared/data)")
    return root / name


@pytest.fixture
def tiny_source() -> Synthetic:
    return Synthetic(n_users=60, n_items=40, n_interactions=900, n_factors=4,
                     modalities={"image": 8, "text": 6}, seed=3)


@pytest.fixture
def tiny_datamodule(tiny_source: Synthetic, tmp_path: Path) -> RecDataModule:
    datamodule = RecDataModule(tiny_source, knn_k=3, cache_dir=str(tmp_path / "cache"),
                               train_batch_size=128, eval_batch_size=16)
    datamodule.setup("fit")
    return datamodule


def paired_losses(exact, mixed, *batch: torch.Tensor, seed: int = 5) -> tuple[dict, dict]:
    """``training_losses`` of two models on ``batch``: ``mixed`` given ``exact``'s weights, both from the same
    random state (same noise and dropout draws), for comparing a precision option with float32."""
    mixed.load_state_dict(exact.state_dict())
    losses = []
    for model in (exact, mixed):
        torch.manual_seed(seed)
        losses.append(model.training_losses(*batch))
    return losses[0], losses[1]


def assert_only_contrastive_term_rounded(exact: dict, mixed: dict, atol: float) -> None:
    """Every loss term equal but ``cl``, which differs by bfloat16 rounding of the similarities only."""
    assert "cl" in exact and set(mixed) == set(exact)
    for term in set(exact) - {"cl"}:
        torch.testing.assert_close(mixed[term], exact[term])
    torch.testing.assert_close(mixed["cl"], exact["cl"], rtol=1e-2, atol=atol)
    assert mixed["cl"].item() != exact["cl"].item()  # the similarities were rounded


def validation_recall_before_and_after(model, datamodule: RecDataModule, tmp_path: Path, epochs: int = 15
                                       ) -> tuple[float, float]:
    """Validation Recall@10 of ``model`` before and after ``epochs`` of training on ``datamodule``."""
    import lightning as L

    from lit_mmrec.metrics import RankingEvaluator

    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[RankingEvaluator(ks=[10], monitor="recall@10")], default_root_dir=tmp_path)
    before = trainer.validate(model, datamodule=datamodule, verbose=False)[0]["val/recall@10"]
    trainer.fit(model, datamodule=datamodule)
    return before, trainer.validate(model, datamodule=datamodule, verbose=False)[0]["val/recall@10"]


def diffmm_gamma_bar(steps: int, scale: float, noise_min: float, noise_max: float, first_beta: float = 1e-4
                     ) -> list[float]:
    """DiffMM's schedule by hand: betas from ``v_t = s * linspace(noise_min, noise_max, T)[t - 1]``
    (``beta_1 = v_1``, ``beta_t = 1 - (1 - v_t) / (1 - v_{t-1})``), the first then set to ``first_beta``
    (its ``beta_fixed``); ``gamma_bar_t = prod_{k <= t} (1 - beta_k)``."""
    v = [scale * (noise_min + k * (noise_max - noise_min) / (steps - 1)) for k in range(steps)]
    betas = [first_beta] + [1 - (1 - v[k]) / (1 - v[k - 1]) for k in range(1, steps)]
    gamma_bar, product = [], 1.0
    for beta in betas:
        product *= 1 - beta
        gamma_bar.append(product)
    return gamma_bar


class EchoDenoiser(torch.nn.Module):
    """A "denoiser" that returns a fixed prediction and records the steps it was asked about."""

    def __init__(self, prediction: torch.Tensor) -> None:
        super().__init__()
        self.prediction = prediction
        self.steps: list[torch.Tensor] = []

    def forward(self, x_t, t, input_dropout=True):
        self.steps.append(t)
        return self.prediction


# ---- builders shared by the test modules ----
TINY_DATA = [
    "--data.dataset.class_path", "lit_mmrec.data.Synthetic",
    "--data.dataset.init_args.n_users", "80",
    "--data.dataset.init_args.n_items", "50",
    "--data.dataset.init_args.n_interactions", "1200",
    "--data.dataset.init_args.modalities", "{image: 8, text: 4}",
    "--data.train_batch_size", "256",
    "--data.eval_batch_size", "32",
]


def run_cli(*args: str) -> object:
    return build_cli(list(args))


def base_args(tmp_path: Path, experiment: str = "lightgcn_synthetic.yaml") -> list[str]:
    return ["--config", str(REPO_ROOT / "configs" / "experiment" / experiment),
            "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
            "--data.cache_dir", str(tmp_path / "cache"), *TINY_DATA]


def build_dasrec(datamodule: RecDataModule, **kwargs) -> DASRec:
    """A small DASRec on ``datamodule``'s graphs, seeded; ``kwargs`` override its options."""
    torch.manual_seed(0)
    options = dict(embedding_dim=8, denoiser_hidden=16, denoiser_time_dim=4, attention_hidden=6)
    options.update(kwargs)
    model = DASRec(datamodule.n_users, datamodule.n_items, feature_dims=datamodule.feature_dims, **options)
    model.graphs = datamodule.graphs
    model.on_graphs_ready()
    return model


def set_constant_prediction(model: DASRec, row: torch.Tensor) -> None:
    """Make every denoiser predict ``row`` for every user (zero output weights, bias = row)."""
    for denoiser in model.generator.denoisers.values():
        with torch.no_grad():
            denoiser.output_layer.weight.zero_()
            denoiser.output_layer.bias.copy_(row)
