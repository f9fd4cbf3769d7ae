"""MGCN: representations and training loss against a dense reference of the paper's equations, its options."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lit_mmrec.data import RecDataModule
from lit_mmrec.models import MGCN
from tests.conftest import validation_recall_before_and_after


def mgcn(datamodule: RecDataModule, **options) -> MGCN:
    model = MGCN(datamodule.n_users, datamodule.n_items, datamodule.feature_dims, embedding_dim=8, **options)
    model.graphs = datamodule.graphs
    model.on_graphs_ready()
    return model


def dense_reference(model: MGCN, datamodule: RecDataModule) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Final, side and user-item representations [n_users + n_items, d] from dense matrices."""
    graphs = datamodule.graphs
    n_users = datamodule.n_users
    a = graphs.norm_adjacency.to_dense()
    e = model.embedding
    content = (e + a @ e + a @ (a @ e)) / 3
    views = []
    for m in ("image", "text"):
        gate = torch.sigmoid(model.purifiers[m](model.projections[m](model.features[m])))
        items = graphs.item_item[m].to_dense() @ (e[n_users:] * gate)
        views.append(torch.cat([a[:n_users, n_users:] @ items, items]))
    scores = torch.cat([model.attention(v) for v in views], dim=1)
    w = scores.exp() / scores.exp().sum(1, keepdim=True)
    common = w[:, :1] * views[0] + w[:, 1:] * views[1]
    specific = [torch.sigmoid(model.preferences[m](content)) * (v - common) for m, v in zip(("image", "text"), views)]
    side = (common + specific[0] + specific[1]) / 3
    return content + side, side, content


def test_representations_match_a_dense_reference(tiny_datamodule: RecDataModule):
    model = mgcn(tiny_datamodule)
    final, _, _ = dense_reference(model, tiny_datamodule)
    users, items = model()
    torch.testing.assert_close(users.detach(), final[:60].detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(items.detach(), final[60:].detach(), rtol=1e-5, atol=1e-6)


def test_training_loss_and_gradients_match_the_dense_reference(tiny_datamodule: RecDataModule):
    """BPR, L2 on the final representations, InfoNCE of side against user-item view over positives and
    users; every gradient (ID table, projections, gates, attention, fine-tuned features) as the reference's."""
    model = mgcn(tiny_datamodule, lambda_cl=0.3, reg_weight=0.1, tau=0.5)
    users, positives, negatives = next(iter(tiny_datamodule.train_dataloader()))
    losses = model.training_losses(users, positives, negatives)
    assert set(losses) == {"bpr", "reg", "cl"}
    sum(losses.values()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    final, side, content = dense_reference(model, tiny_datamodule)
    u, p, n = final[users], final[60 + positives], final[60 + negatives]
    bpr = -F.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean()
    reg = 0.1 * (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / (2 * len(users))

    def info_nce(a, b):  # -log(exp(cos(a_i, b_i)/t) / sum_j exp(cos(a_i, b_j)/t)), MMRec's InfoNCE
        similarity = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / 0.5
        return (-similarity.diag() + similarity.exp().sum(1).log()).mean()
    cl = 0.3 * (info_nce(side[60 + positives], content[60 + positives]) + info_nce(side[users], content[users]))
    (bpr + reg + cl).backward()
    torch.testing.assert_close(losses["bpr"], bpr)
    torch.testing.assert_close(losses["reg"], reg)
    torch.testing.assert_close(losses["cl"], cl)
    assert {"features.image", "purifiers.text.weight", "preferences.image.bias", "attention.0.weight"} <= set(grads)
    for name, param in model.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert grads["features.text"].abs().sum() > 0  # the raw features are fine-tuned


def test_components_change_what_the_model_computes(tiny_datamodule: RecDataModule):
    torch.manual_seed(0)
    base = mgcn(tiny_datamodule)
    batch = next(iter(tiny_datamodule.train_dataloader()))
    assert "cl" not in mgcn(tiny_datamodule, lambda_cl=0.0).training_losses(*batch)
    fixed = mgcn(tiny_datamodule, finetune_features=False)
    fixed.load_state_dict({k: v for k, v in base.state_dict().items() if not k.startswith("features")},
                          strict=False)
    assert not any(name.startswith("features") for name, _ in fixed.named_parameters())
    torch.testing.assert_close(fixed()[1], base()[1])  # the same until fine-tuning moves the features
    deeper = mgcn(tiny_datamodule, n_mm_layers=2)
    deeper.load_state_dict(base.state_dict())
    assert not torch.allclose(deeper()[1], base()[1])
    with pytest.raises(ValueError, match="at least one item feature modality"):
        MGCN(60, 40, {})
    with pytest.raises(ValueError, match="tau must be positive"):
        MGCN(60, 40, {"image": 8}, tau=0.0)


def test_one_modality_works(tmp_path, tiny_source):
    datamodule = RecDataModule(tiny_source, modalities=["text"], knn_k=3, cache_dir=str(tmp_path))
    datamodule.setup("fit")
    model = mgcn(datamodule)
    users, items = model()
    assert users.shape == (datamodule.n_users, 8) and torch.isfinite(items).all()


def test_mgcn_learns_beyond_random(tmp_path, tiny_source):
    datamodule = RecDataModule(tiny_source, knn_k=3, knn_weighting="similarity", cache_dir=str(tmp_path),
                               train_batch_size=64)
    model = MGCN(datamodule.n_users, datamodule.n_items, datamodule.feature_dims, embedding_dim=16,
                 lambda_cl=0.01, optimizer=lambda params: torch.optim.Adam(params, lr=0.02))
    before, after = validation_recall_before_and_after(model, datamodule, tmp_path)
    assert after > before + 0.05
