"""FREEDOM: representations against a dense reference, training against the full tables, its options."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lit_mmrec.data import RecDataModule
from lit_mmrec.models import FREEDOM
from tests.conftest import validation_recall_before_and_after


def freedom(datamodule: RecDataModule, **options) -> FREEDOM:
    model = FREEDOM(datamodule.n_users, datamodule.n_items, datamodule.feature_dims, embedding_dim=8, **options)
    model.graphs = datamodule.graphs
    model.on_graphs_ready()
    return model


def test_representations_match_a_dense_reference(tiny_datamodule: RecDataModule):
    """users: mean of A^l E over l = 0..2; items: the same plus S E_i, S = 0.25 S_image + 0.75 S_text."""
    model = freedom(tiny_datamodule, modality_weights={"image": 0.25, "text": 0.75})
    a = tiny_datamodule.graphs.norm_adjacency.to_dense()
    s = 0.25 * tiny_datamodule.graphs.item_item["image"].to_dense() \
        + 0.75 * tiny_datamodule.graphs.item_item["text"].to_dense()
    e = model.embedding.detach()
    mean = (e + a @ e + a @ (a @ e)) / 3
    users, items = model()
    torch.testing.assert_close(users.detach(), mean[:60], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(items.detach(), mean[60:] + s @ e[60:], rtol=1e-5, atol=1e-6)


def test_training_loss_and_gradients_match_the_full_tables(tiny_datamodule: RecDataModule):
    """Training propagates only the batch's rows of the epoch's pruned graph and of S; the loss (BPR,
    modality BPR on the projected, fine-tuned features) and every gradient are the full tables'."""
    model = freedom(tiny_datamodule, lambda_modality=0.3, reg_weight=0.1, edge_dropout=0.5)
    model.train_graph = model.pruned_graph(epoch=3)
    users, positives, negatives = next(iter(tiny_datamodule.train_dataloader()))
    losses = model.training_losses(users, positives, negatives)
    assert set(losses) == {"bpr", "reg", "modality"}
    sum(losses.values()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    a, s = model.train_graph.to_dense(), model.item_graph.to_dense()
    e = model.embedding
    final = (e + a @ e + a @ (a @ e)) / 3
    items = final[60:] + s @ e[60:]
    u, p, n = final[users], items[positives], items[negatives]

    def bpr(pos, neg):
        return -F.logsigmoid((u * pos).sum(1) - (u * neg).sum(1)).mean()
    modality = sum(bpr(model.projections[m](model.features[m])[positives],
                       model.projections[m](model.features[m])[negatives]) for m in ("image", "text"))
    rows = (e[users], e[60 + positives], e[60 + negatives])
    reg = 0.1 * sum(r.pow(2).sum() for r in rows) / (2 * len(users))
    (bpr(p, n) + 0.3 * modality + reg).backward()
    torch.testing.assert_close(losses["bpr"], bpr(p, n))
    torch.testing.assert_close(losses["modality"], 0.3 * modality)
    torch.testing.assert_close(losses["reg"], reg)
    assert {"features.image", "features.text", "projections.image.weight"} <= set(grads)
    for name, param in model.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, msg=name)
    assert grads["features.image"].abs().sum() > 0  # the raw features are fine-tuned


def test_the_pruned_graph_depends_on_the_epoch_only(tiny_datamodule: RecDataModule):
    model = freedom(tiny_datamodule, edge_dropout=0.8)
    n_edges = tiny_datamodule.data.train.nnz
    first, again, other = (model.pruned_graph(epoch).to_dense() for epoch in (2, 2, 3))
    assert torch.equal(first, again)  # every DDP process draws the same graph
    assert not torch.equal(first, other)
    assert int((first[:60] > 0).sum()) == int(n_edges * 0.2)
    no_dropout = freedom(tiny_datamodule, edge_dropout=0.0)
    assert no_dropout.pruned_graph(0) is tiny_datamodule.graphs.norm_adjacency


def test_features_are_filled_once_and_optional(tiny_datamodule: RecDataModule):
    model = freedom(tiny_datamodule)
    torch.testing.assert_close(model.features["text"].detach(), tiny_datamodule.graphs.features["text"])
    with torch.no_grad():
        model.features["text"].add_(1.0)  # as fine-tuning (or a restored checkpoint) would change them
    model.on_graphs_ready()  # a later setup keeps them
    torch.testing.assert_close(model.features["text"].detach(), tiny_datamodule.graphs.features["text"] + 1.0)
    fixed = freedom(tiny_datamodule, finetune_features=False)
    assert not any(name.startswith("features") for name, _ in fixed.named_parameters())
    users, positives, negatives = next(iter(tiny_datamodule.train_dataloader()))
    assert "modality" in fixed.training_losses(users, positives, negatives)


def test_bad_options_name_the_fix(tiny_datamodule: RecDataModule):
    with pytest.raises(ValueError, match="at least one item feature modality"):
        FREEDOM(60, 40, {})
    with pytest.raises(ValueError, match="every modality"):
        FREEDOM(60, 40, {"image": 8, "text": 6}, modality_weights={"image": 1.0})
    with pytest.raises(ValueError, match="edge_dropout"):
        FREEDOM(60, 40, {"image": 8, "text": 6}, edge_dropout=1.0)
    model = FREEDOM(60, 40, {"text": 6, "image": 8})  # the data's order is image, text
    with pytest.raises(ValueError, match="--data.modalities"):
        model.check_data_modalities(tiny_datamodule.graphs)


def test_freedom_learns_beyond_random(tmp_path, tiny_source):
    datamodule = RecDataModule(tiny_source, knn_k=3, cache_dir=str(tmp_path), train_batch_size=64)
    model = FREEDOM(datamodule.n_users, datamodule.n_items, datamodule.feature_dims, embedding_dim=16,
                    edge_dropout=0.5, optimizer=lambda params: torch.optim.Adam(params, lr=0.02))
    before, after = validation_recall_before_and_after(model, datamodule, tmp_path)
    assert after > before + 0.05
