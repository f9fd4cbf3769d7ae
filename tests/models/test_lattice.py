"""LATTICE: representations, loss and gradients against a dense transcription of MMRec's LATTICE; its options."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lit_mmrec.data import RecDataModule
from lit_mmrec.models import LATTICE
from tests.conftest import validation_recall_before_and_after

N_USERS = 60


def lattice(datamodule: RecDataModule, **options) -> LATTICE:
    torch.manual_seed(0)
    model = LATTICE(datamodule.n_users, datamodule.n_items, datamodule.feature_dims, embedding_dim=8, feature_dim=5,
                    knn_k=4, **options)
    model.graphs = datamodule.graphs
    model.on_graphs_ready()
    return model


def dense_reference(model: LATTICE, datamodule: RecDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    """MMRec's LATTICE forward (LightGCN backbone, build_item_graph=True) with dense matrices."""
    graphs = datamodule.graphs
    n = N_USERS + datamodule.n_items
    r = graphs.train_interactions.to_dense()
    a = torch.zeros(n, n)
    a[:N_USERS, N_USERS:], a[N_USERS:, :N_USERS] = r, r.T
    a = a + torch.eye(n)
    a = a / a.sum(1, keepdim=True)  # D^-1 (A + I)

    def laplacian(adj):  # compute_normalized_laplacian
        d = adj.sum(-1).pow(-0.5)
        d[torch.isinf(d)] = 0.0
        return torch.diagflat(d) @ adj @ torch.diagflat(d)

    weight = torch.softmax(model.modality_logits, dim=0)
    learnt, original = 0.0, 0.0
    for w, m in zip(weight, ("image", "text")):
        f = model.projections[m](model.features[m])
        f = f / f.norm(dim=-1, keepdim=True)
        sim = f @ f.T  # build_sim
        values, index = sim.topk(model.knn_k, dim=-1)
        learnt = learnt + w * torch.zeros_like(sim).scatter(-1, index, values)  # build_knn_neighbourhood
        original = original + w * graphs.item_item[m].to_dense()
    item_adj = (1 - model.lambda_coeff) * laplacian(learnt) + model.lambda_coeff * original
    e = model.embedding
    h = item_adj @ e[N_USERS:]
    final = (e + a @ e + a @ (a @ e)) / 3
    return final[:N_USERS], final[N_USERS:] + F.normalize(h, p=2, dim=1)


@pytest.fixture
def datamodule(tiny_source, tmp_path) -> RecDataModule:
    module = RecDataModule(tiny_source, knn_k=3, knn_weighting="similarity", cache_dir=str(tmp_path / "cache"),
                           train_batch_size=128)
    module.setup("fit")
    return module


def test_representations_match_mmrecs_dense_lattice(datamodule: RecDataModule):
    model = lattice(datamodule)
    users, items = model()
    ref_users, ref_items = dense_reference(model, datamodule)
    torch.testing.assert_close(users, ref_users, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(items, ref_items, rtol=1e-5, atol=1e-6)


def test_first_step_of_an_epoch_trains_the_graph_later_steps_use_it_detached(datamodule: RecDataModule):
    model = lattice(datamodule, reg_weight=0.1)
    users, positives, negatives = next(iter(datamodule.train_dataloader()))
    losses = model.training_losses(users, positives, negatives)
    assert set(losses) == {"bpr", "reg"}
    sum(losses.values()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    ref_users, ref_items = dense_reference(model, datamodule)
    u, p, n = ref_users[users], ref_items[positives], ref_items[negatives]
    bpr = -F.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean()
    reg = 0.1 * (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / (2 * len(users))
    (bpr + reg).backward()
    torch.testing.assert_close(losses["bpr"], bpr)
    torch.testing.assert_close(losses["reg"], reg)
    for name, param in model.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)
    for name in ("projections.image.weight", "modality_logits", "features.text"):
        assert grads[name].abs().sum() > 0, name
    model.zero_grad()
    # the epoch's second step: the same graph, without gradient into what built it
    sum(model.training_losses(users, positives, negatives).values()).backward()
    assert model.projections["image"].weight.grad is None and model.modality_logits.grad is None
    assert model.embedding.grad.abs().sum() > 0


def test_components_change_what_the_model_computes(datamodule: RecDataModule):
    base = lattice(datamodule)
    items = base()[1]
    original_only = lattice(datamodule, lambda_coeff=1.0)
    assert not torch.allclose(original_only()[1], items)  # the learnt graph reaches the items
    no_item_graph = lattice(datamodule, n_mm_layers=0)
    assert not torch.allclose(no_item_graph()[1], items)
    symmetric = lattice(datamodule, ui_graph="symmetric")
    assert not torch.allclose(symmetric()[0], base()[0])
    with torch.no_grad():
        base.modality_logits.copy_(torch.tensor([2.0, -1.0]))
    assert not torch.allclose(base()[1], items)  # the modality weights
    with pytest.raises(ValueError, match="lambda_coeff"):
        LATTICE(60, 40, {"image": 8}, lambda_coeff=1.5)
    with pytest.raises(ValueError, match="ui_graph"):
        LATTICE(60, 40, {"image": 8}, ui_graph="mean")


def test_one_modality_works(tmp_path, tiny_source):
    datamodule = RecDataModule(tiny_source, modalities=["text"], knn_k=3, cache_dir=str(tmp_path))
    datamodule.setup("fit")
    users, items = lattice(datamodule)()
    assert users.shape == (datamodule.n_users, 8) and torch.isfinite(items).all()


def test_lattice_learns_beyond_random(tmp_path, tiny_source):
    datamodule = RecDataModule(tiny_source, knn_k=3, knn_weighting="similarity", cache_dir=str(tmp_path),
                               train_batch_size=64)
    model = LATTICE(datamodule.n_users, datamodule.n_items, datamodule.feature_dims, embedding_dim=16, knn_k=4,
                    optimizer=lambda params: torch.optim.Adam(params, lr=0.02))
    before, after = validation_recall_before_and_after(model, datamodule, tmp_path)
    assert after > before + 0.05
