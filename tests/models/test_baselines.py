"""BPR-MF, LightGCN and VBPR: against dense or hand-computed references, and learning on synthetic data."""

from __future__ import annotations

import pytest
import torch

from lit_mmrec.data import RecDataModule
from lit_mmrec.models import BPRMF, VBPR, LightGCN
from tests.conftest import validation_recall_before_and_after


def attach(model, datamodule):
    model.graphs = datamodule.graphs
    return model


def test_lightgcn_forward_matches_dense_propagation(tiny_datamodule: RecDataModule):
    model = attach(LightGCN(60, 40, embedding_dim=8, n_layers=2, layer_combination="mean"), tiny_datamodule)
    users, items = model()
    a = tiny_datamodule.graphs.norm_adjacency.to_dense()
    e0 = model.embedding.detach()
    expected = (e0 + a @ e0 + a @ (a @ e0)) / 3
    torch.testing.assert_close(torch.cat([users, items]).detach(), expected, rtol=1e-5, atol=1e-6)


def test_lightgcn_training_loss_and_gradient_match_the_full_propagation(tiny_datamodule: RecDataModule):
    """Training propagates only the batch's rows; loss and gradient are those of the full tables."""
    model = attach(LightGCN(60, 40, embedding_dim=8, n_layers=3, reg_weight=0.0), tiny_datamodule)
    users, positives, negatives = next(iter(tiny_datamodule.train_dataloader()))
    loss = model.training_losses(users, positives, negatives)["bpr"]
    loss.backward()
    grad, model.embedding.grad = model.embedding.grad.clone(), None
    user_repr, item_repr = model()
    u, p, n = user_repr[users], item_repr[positives], item_repr[negatives]
    expected = -torch.nn.functional.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean()
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, model.embedding.grad)


def test_training_losses_are_named_and_weighted(tiny_datamodule: RecDataModule):
    model = attach(BPRMF(60, 40, embedding_dim=4, reg_weight=0.5), tiny_datamodule)
    batch = next(iter(tiny_datamodule.train_dataloader()))
    losses = model.training_losses(*batch)
    assert set(losses) == {"bpr", "reg"}
    u, p, n = batch
    expected_reg = 0.5 * (model.user_embedding[u].pow(2).sum() + model.item_embedding[p].pow(2).sum()
                          + model.item_embedding[n].pow(2).sum()) / (2 * u.shape[0])
    torch.testing.assert_close(losses["reg"], expected_reg)
    no_reg = attach(BPRMF(60, 40, reg_weight=0.0), tiny_datamodule)
    assert set(no_reg.training_losses(*batch)) == {"bpr"}


def test_regularised_rows_come_from_the_joint_input_table(tiny_datamodule: RecDataModule):
    model = attach(LightGCN(60, 40, embedding_dim=4, reg_weight=0.5), tiny_datamodule)
    users, items = model.input_embeddings()
    assert torch.equal(torch.cat([users, items]), model.embedding)  # the joint table's two parts
    u, p, n = torch.tensor([0, 59, 3]), torch.tensor([0, 39, 7]), torch.tensor([5, 1, 39])
    rows = model.input_rows(u, p, n)
    for got, expected in zip(rows, (model.embedding[u], model.embedding[60 + p], model.embedding[60 + n])):
        assert torch.equal(got, expected)
    loss = model.training_losses(u, p, n)["reg"]
    expected_reg = 0.5 * sum(r.pow(2).sum() for r in rows) / (2 * 3)
    torch.testing.assert_close(loss, expected_reg)


def test_lightgcn_learns_beyond_random(tmp_path, tiny_source):
    datamodule = RecDataModule(tiny_source, knn_k=3, cache_dir=str(tmp_path), train_batch_size=64)
    model = LightGCN(datamodule.n_users, datamodule.n_items, embedding_dim=16,
                     optimizer=lambda params: torch.optim.Adam(params, lr=0.02))
    before, after = validation_recall_before_and_after(model, datamodule, tmp_path)
    assert after > before + 0.05


def test_vbpr_scores_by_hand(tiny_datamodule: RecDataModule):
    """score(u, i) = gamma_u . gamma_i + theta_u . (E f_i + b), f_i the item's features side by side."""
    model = attach(VBPR(60, 40, tiny_datamodule.feature_dims, embedding_dim=2), tiny_datamodule)
    model.on_graphs_ready()
    with torch.no_grad():
        model.user_embedding[0] = torch.tensor([1.0, 2.0, 3.0, -1.0])  # gamma_u = (1, 2), theta_u = (3, -1)
        model.item_embedding[5] = torch.tensor([0.5, -1.0])
        model.projection.weight.zero_()
        model.projection.weight[0, 0] = 2.0  # E f_i = (2 f_i[0] + 0.1, f_i[9] - 0.2): image dim 0, text dim 1
        model.projection.weight[1, 8 + 1] = 1.0
        model.projection.bias.copy_(torch.tensor([0.1, -0.2]))
    image, text = tiny_datamodule.graphs.features["image"][5], tiny_datamodule.graphs.features["text"][5]
    expected = (1 * 0.5 + 2 * -1.0) + 3 * (2 * image[0] + 0.1) - 1 * (text[1] - 0.2)
    users, items = model()
    assert items.shape == (40, 4) and users.shape == (60, 4)
    torch.testing.assert_close((users[0] * items[5]).sum(), expected)


def test_vbpr_training_loss_and_gradients_match_the_full_tables(tiny_datamodule: RecDataModule):
    """Training projects only the batch's items; loss, L2 and every gradient are those of the full tables."""
    model = attach(VBPR(60, 40, tiny_datamodule.feature_dims, embedding_dim=4, reg_weight=0.3), tiny_datamodule)
    model.on_graphs_ready()
    users, positives, negatives = next(iter(tiny_datamodule.train_dataloader()))
    losses = model.training_losses(users, positives, negatives)
    assert set(losses) == {"bpr", "reg"}
    sum(losses.values()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    user_repr, item_repr = model()
    u, p, n = user_repr[users], item_repr[positives], item_repr[negatives]
    bpr = -torch.nn.functional.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean()
    reg = 0.3 * (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / (2 * users.shape[0])
    (bpr + reg).backward()
    torch.testing.assert_close(losses["bpr"], bpr)
    torch.testing.assert_close(losses["reg"], reg)
    assert set(grads) == {"user_embedding", "item_embedding", "projection.weight", "projection.bias"}
    for name, param in model.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, msg=name)
    assert grads["projection.weight"].abs().sum() > 0  # the features reach the loss


def test_vbpr_normalises_each_modality_before_concatenating(tiny_datamodule: RecDataModule):
    model = attach(VBPR(60, 40, tiny_datamodule.feature_dims, normalise_features=True), tiny_datamodule)
    model.on_graphs_ready()
    image, text = model.item_features.split([8, 6], dim=1)
    torch.testing.assert_close(image.norm(dim=1), torch.ones(40))
    torch.testing.assert_close(text.norm(dim=1), torch.ones(40))
    torch.testing.assert_close(text[3], tiny_datamodule.graphs.features["text"][3]
                               / tiny_datamodule.graphs.features["text"][3].norm())


def test_vbpr_needs_features_and_the_same_modalities(tiny_datamodule: RecDataModule):
    with pytest.raises(ValueError, match="at least one item feature modality"):
        VBPR(60, 40, {})
    model = VBPR(60, 40, {"text": 6, "image": 8})  # data: image then text
    with pytest.raises(ValueError, match="--data.modalities"):
        model.check_data_modalities(tiny_datamodule.graphs)  # RecommenderModule.setup's check
    with pytest.raises(ValueError, match="--data.modalities"):  # the same names with another width
        VBPR(60, 40, {"image": 8, "text": 5}).check_data_modalities(tiny_datamodule.graphs)
    VBPR(60, 40, tiny_datamodule.feature_dims).check_data_modalities(tiny_datamodule.graphs)
    LightGCN(60, 40, feature_dims={"text": 6}).check_data_modalities(tiny_datamodule.graphs)  # reads no features


def test_vbpr_learns_beyond_random(tmp_path, tiny_source):
    datamodule = RecDataModule(tiny_source, knn_k=3, cache_dir=str(tmp_path), train_batch_size=64)
    model = VBPR(datamodule.n_users, datamodule.n_items, datamodule.feature_dims, embedding_dim=16,
                 optimizer=lambda params: torch.optim.Adam(params, lr=0.02))
    before, after = validation_recall_before_and_after(model, datamodule, tmp_path)
    assert after > before + 0.05
