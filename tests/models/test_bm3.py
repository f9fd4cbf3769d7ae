"""BM3: losses against a dense reference of MMRec's formulas, the target dropout, scoring through the predictor."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lit_mmrec.data import RecDataModule
from lit_mmrec.models import BM3
from tests.conftest import validation_recall_before_and_after


def bm3(datamodule: RecDataModule, **options) -> BM3:
    torch.manual_seed(0)
    model = BM3(datamodule.n_users, datamodule.n_items, datamodule.feature_dims, embedding_dim=8, **options)
    model.graphs = datamodule.graphs
    model.on_graphs_ready()
    return model


def test_losses_and_gradients_match_the_dense_reference(tiny_datamodule: RecDataModule):
    model = bm3(tiny_datamodule, dropout=0.0, n_layers=2, cl_weight=0.5, reg_weight=0.2)
    users, positives, negatives = next(iter(tiny_datamodule.train_dataloader()))
    losses = model.training_losses(users, positives, negatives)
    assert set(losses) == {"rec", "reg", "cl"}
    sum(losses.values()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    a, e = tiny_datamodule.graphs.norm_adjacency.to_dense(), model.embedding
    final = (e + a @ e + a @ (a @ e)) / 3
    h_users, h_items = final[:60], final[60:] + e[60:]
    p = model.predictor

    def loss(x, y):
        return 1 - F.cosine_similarity(x, y, dim=-1).mean()
    rec = loss(p(h_users[users]), h_items[positives].detach()) + loss(p(h_items[positives]), h_users[users].detach())
    reg = 0.2 * (h_users.norm() + h_items.norm()) / 40
    cl = 0.0
    for m in ("image", "text"):
        f = model.projections[m](model.features[m])[positives]
        cl = cl + loss(p(f), h_items[positives].detach()) + loss(p(f), f.detach())
    (rec + reg + 0.5 * cl).backward()
    torch.testing.assert_close(losses["rec"], rec)
    torch.testing.assert_close(losses["reg"], reg)
    torch.testing.assert_close(losses["cl"], 0.5 * cl)
    for name, param in model.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert grads["features.image"].abs().sum() > 0 and grads["predictor.weight"].abs().sum() > 0
    users_out, items_out = model()  # scores through the predictor
    torch.testing.assert_close(users_out.detach(), p(h_users).detach())
    torch.testing.assert_close(items_out.detach(), p(h_items).detach())


def test_target_dropout_changes_the_losses(tiny_datamodule: RecDataModule):
    batch = next(iter(tiny_datamodule.train_dataloader()))
    plain = bm3(tiny_datamodule, dropout=0.0).training_losses(*batch)
    dropped = bm3(tiny_datamodule, dropout=0.5).training_losses(*batch)
    assert not torch.allclose(plain["rec"], dropped["rec"]) and not torch.allclose(plain["cl"], dropped["cl"])
    assert "cl" not in bm3(tiny_datamodule, cl_weight=0.0).training_losses(*batch)
    with pytest.raises(ValueError, match="dropout must be in"):
        BM3(60, 40, {"image": 8}, dropout=1.0)


def test_bm3_learns_beyond_random(tmp_path, tiny_source):
    datamodule = RecDataModule(tiny_source, knn_k=3, cache_dir=str(tmp_path), train_batch_size=64)
    model = BM3(datamodule.n_users, datamodule.n_items, datamodule.feature_dims, embedding_dim=16,
                optimizer=lambda params: torch.optim.Adam(params, lr=0.01))
    before, after = validation_recall_before_and_after(model, datamodule, tmp_path)
    assert after > before + 0.05
