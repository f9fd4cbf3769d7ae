"""DualGNN and DRAGON: the user co-occurrence aggregation by hand, their forwards, losses and gradients against
dense transcriptions of MMRec's (with the paper's weighted sum), DRAGON's homogeneous graphs, the options."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lit_mmrec.data import RecDataModule
from lit_mmrec.models import DRAGON, DualGNN
from lit_mmrec.models.dualgnn import user_graph_weights
from tests.conftest import validation_recall_before_and_after


def build(cls, datamodule: RecDataModule, **options):
    options.setdefault("embedding_dim", 8)
    model = cls(datamodule.n_users, datamodule.n_items, datamodule.feature_dims, **options)
    model.graphs = datamodule.graphs
    model.on_graphs_ready()
    return model


def test_user_graph_weights_by_hand():
    counts = torch.tensor([[0, 2.0, 1.0], [3.0, 0, 0], [0, 0, 0]]).to_sparse_csr()
    softmax, softmax_t = user_graph_weights(counts, "softmax")
    e = math.e
    expected = torch.tensor([[0, e / (e + 1), 1 / (e + 1)], [1.0, 0, 0], [0, 0, 0]])
    torch.testing.assert_close(softmax.to_dense(), expected)
    torch.testing.assert_close(softmax_t.to_dense(), expected.T)
    mean, _ = user_graph_weights(counts, "mean")
    torch.testing.assert_close(mean.to_dense(), torch.tensor([[0, 0.5, 0.5], [1.0, 0, 0], [0, 0, 0]]))


def dense_user_graph(datamodule: RecDataModule, k: int) -> torch.Tensor:
    """Softmax of co-occurrence counts over each user's top k (ties to the lower id), dense."""
    r = datamodule.graphs.train_interactions.to_dense()
    counts = r @ r.T
    counts.fill_diagonal_(0)
    n = counts.shape[0]
    # top k by count, ties broken by lower id: sort on count * n - id
    keys = counts * n - torch.arange(n, dtype=counts.dtype)[None, :]
    top = keys.topk(k, dim=1).indices
    mask = torch.zeros_like(counts, dtype=torch.bool).scatter_(1, top, True) & (counts > 0)
    return torch.softmax(counts.masked_fill(~mask, float("-inf")), dim=1).nan_to_num(0.0)


def dense_branches(model: DualGNN, datamodule: RecDataModule) -> list[torch.Tensor]:
    """MMRec's GCN.forward: normalize([P; MLP_1(leaky_relu(MLP(f)))]), then x + A x + A A x."""
    a = datamodule.graphs.norm_adjacency.to_dense()
    outputs = []
    for m in ("image", "text"):
        branch = model.branches[m]
        first, second = branch.mlp[0], branch.mlp[2]
        x = F.normalize(torch.cat([branch.preference, second(F.leaky_relu(first(datamodule.graphs.features[m])))]))
        h = a @ x
        outputs.append(h + x + a @ h)
    return outputs


def reference_loss(model, out_users, out_items, users, positives, negatives, reg_weight):
    pos = (out_users[users] * out_items[positives]).sum(1)
    neg = (out_users[users] * out_items[negatives]).sum(1)
    loss = -torch.mean(torch.log2(torch.sigmoid(pos - neg)))
    reg = sum((branch.preference[users] ** 2).mean() for branch in model.branches.values())
    return loss + reg_weight * (reg + (model.user_weights ** 2).mean())


def check_loss_and_gradients(model, reference, batch, reg_weight):
    losses = model.training_losses(*batch)
    assert set(losses) == {"bpr", "reg"}
    sum(losses.values()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    expected = reference_loss(model, *reference(), *batch, reg_weight)
    expected.backward()
    torch.testing.assert_close(sum(losses.values()), expected)
    for name, param in model.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert grads["user_weights"].abs().sum() > 0 and grads["branches.text.mlp.0.weight"].abs().sum() > 0


def test_dualgnn_matches_a_dense_transcription(tiny_datamodule: RecDataModule):
    model = build(DualGNN, tiny_datamodule, n_user_neighbours=5, reg_weight=0.1)
    assert torch.allclose(model.user_weights.sum(dim=1), torch.ones(60))  # softmax-initialised
    user_graph = dense_user_graph(tiny_datamodule, 5)

    def reference():
        image, text = dense_branches(model, tiny_datamodule)
        w = model.user_weights
        users = w[:, :1] * image[:60] + w[:, 1:] * text[:60]
        return users + user_graph @ users, image[60:] + text[60:]

    users, items = model()
    expected_users, expected_items = reference()
    torch.testing.assert_close(users, expected_users, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(items, expected_items, rtol=1e-5, atol=1e-5)
    check_loss_and_gradients(model, reference, next(iter(tiny_datamodule.train_dataloader())), 0.1)


def test_dragon_matches_a_dense_transcription(tiny_datamodule: RecDataModule):
    model = build(DRAGON, tiny_datamodule, n_user_neighbours=5, modality_weights={"image": 0.1, "text": 0.9},
                  reg_weight=0.01)
    user_graph = dense_user_graph(tiny_datamodule, 5)
    item_graph = 0.1 * tiny_datamodule.graphs.item_item["image"].to_dense() \
        + 0.9 * tiny_datamodule.graphs.item_item["text"].to_dense()

    def reference():
        image, text = dense_branches(model, tiny_datamodule)
        w = model.user_weights
        users = torch.cat([w[:, :1] * image[:60], w[:, 1:] * text[:60]], dim=1)
        items = torch.cat([image[60:], text[60:]], dim=1)
        return users + user_graph @ users, items + item_graph @ items

    users, items = model()
    assert users.shape == (60, 16) and items.shape == (40, 16)
    expected_users, expected_items = reference()
    torch.testing.assert_close(users, expected_users, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(items, expected_items, rtol=1e-5, atol=1e-5)
    check_loss_and_gradients(model, reference, next(iter(tiny_datamodule.train_dataloader())), 0.01)


def test_homogeneous_graphs_change_what_the_models_compute(tiny_datamodule: RecDataModule):
    torch.manual_seed(0)
    base = build(DRAGON, tiny_datamodule)
    for options in ({"n_mm_layers": 0}, {"n_mm_layers": 2}, {"modality_weights": {"image": 1.0, "text": 0.0}}):
        other = build(DRAGON, tiny_datamodule, **options)
        other.load_state_dict(base.state_dict())
        assert not torch.allclose(other()[1], base()[1]), options
        torch.testing.assert_close(other()[0], base()[0])  # the item graph never touches users
    fewer = build(DRAGON, tiny_datamodule, n_user_neighbours=2, user_aggregation="mean")
    fewer.load_state_dict(base.state_dict())
    assert not torch.allclose(fewer()[0], base()[0])
    assert fewer.user_graph.crow_indices().diff().max() <= 2
    with pytest.raises(ValueError, match="modality_weights"):
        DRAGON(60, 40, {"image": 8, "text": 6}, modality_weights={"image": 1.0})
    with pytest.raises(ValueError, match="user_aggregation"):
        DualGNN(60, 40, {"image": 8}, user_aggregation="max")
    with pytest.raises(ValueError, match="at least one item feature modality"):
        DualGNN(60, 40, {})


@pytest.mark.parametrize("cls", [DualGNN, DRAGON])
def test_learns_beyond_random(cls, tmp_path, tiny_source):
    datamodule = RecDataModule(tiny_source, knn_k=3, cache_dir=str(tmp_path), train_batch_size=64)
    model = cls(datamodule.n_users, datamodule.n_items, datamodule.feature_dims, embedding_dim=16,
                reg_weight=1e-4, optimizer=lambda params: torch.optim.Adam(params, lr=0.01))
    before, after = validation_recall_before_and_after(model, datamodule, tmp_path)
    assert after > before + 0.05
