"""GRCN: edge softmax and weighted sums by hand, the refined graph, forward, loss and gradients against a dense
transcription of MMRec's GRCN, the paper's routing, the options."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lit_mmrec.data import RecDataModule
from lit_mmrec.models import GRCN
from lit_mmrec.models.components.edges import InteractionEdges, edge_softmax
from tests.conftest import validation_recall_before_and_after


def grcn(datamodule: RecDataModule, **options) -> GRCN:
    options.setdefault("embedding_dim", 8)
    options.setdefault("content_dim", 4)
    model = GRCN(datamodule.n_users, datamodule.n_items, datamodule.feature_dims, **options)
    model.graphs = datamodule.graphs
    model.on_graphs_ready()
    return model


def test_edges_softmax_and_weighted_sums_by_hand():
    # user 0 - items 1, 2; user 1 - item 0; user 2 - items 0, 2
    interactions = torch.tensor([[0, 1.0, 1.0], [1.0, 0, 0], [1.0, 0, 1.0]]).to_sparse_csr()
    edges = InteractionEdges.from_csr(interactions)
    assert edges.users.tolist() == [0, 0, 1, 2, 2] and edges.items.tolist() == [1, 2, 0, 0, 2]
    assert edges.by_item.tolist() == [2, 3, 0, 1, 4] and edges.item_offsets.tolist() == [0, 2, 3, 5]
    scores = torch.tensor([0.0, torch.log(torch.tensor(3.0)).item(), 5.0, 1.0, 1.0])
    by_user = edge_softmax(scores, edges.users, 3)
    torch.testing.assert_close(by_user, torch.tensor([0.25, 0.75, 1.0, 0.5, 0.5]))
    rows = torch.tensor([[1.0], [10.0], [100.0]])
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    torch.testing.assert_close(edges.to_users(rows, weights), torch.tensor([[210.0], [3.0], [504.0]]))
    torch.testing.assert_close(edges.to_items(rows, weights), torch.tensor([[30 + 400.0], [1.0], [2 + 500.0]]))


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=dim).nan_to_num(0.0)


def dense_reference(model: GRCN, datamodule: RecDataModule) -> torch.Tensor:
    """MMRec's GRCN.forward with every edge list written as a dense users x items matrix (no routing)."""
    graphs, n_users = datamodule.graphs, datamodule.n_users
    mask = graphs.train_interactions.to_dense() > 0
    contents, to_item, to_user = [], [], []
    for k, m in enumerate(("image", "text")):
        features = F.normalize(F.leaky_relu(model.projections[m](graphs.features[m])))
        preference = F.normalize(model.preferences[m])
        scores = preference @ features.T
        a_item = masked_softmax(scores, mask, dim=0)  # towards item i: over its users
        a_user = masked_softmax(scores, mask, dim=1)  # towards user u: over its items
        contents.append(torch.cat([preference + a_user @ features, features + a_item.T @ preference]))
        to_item.append(a_item * model.confidence[:n_users, k:k + 1])  # sender: the user
        to_user.append(a_user * model.confidence[n_users:, k][None, :])  # sender: the item
    w_item = F.relu(torch.maximum(*to_item)) * mask
    w_user = F.relu(torch.maximum(*to_user)) * mask
    x = F.normalize(model.embedding)
    layers = [x]
    for _ in range(2):
        users, items = layers[-1][:n_users], layers[-1][n_users:]
        layers.append(torch.cat([w_user @ items, w_item.T @ users]))
    return torch.cat([sum(layers), *contents], dim=1)


def test_forward_matches_a_dense_transcription_of_mmrec(tiny_datamodule: RecDataModule):
    model = grcn(tiny_datamodule, n_routing=0)
    expected = dense_reference(model, tiny_datamodule)
    users, items = model()
    assert users.shape == (60, 8 + 2 * 4)
    torch.testing.assert_close(users, expected[:60], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(items, expected[60:], rtol=1e-5, atol=1e-5)


def test_loss_and_gradients_match_mmrecs(tiny_datamodule: RecDataModule):
    model = grcn(tiny_datamodule, n_routing=0, reg_weight=0.1)
    users, positives, negatives = next(iter(tiny_datamodule.train_dataloader()))
    losses = model.training_losses(users, positives, negatives)
    sum(losses.values()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    out = dense_reference(model, tiny_datamodule)
    user_tensor = users.repeat_interleave(2)
    item_tensor = torch.stack((positives + 60, negatives + 60)).t().contiguous().view(-1)
    score = torch.sum(out[user_tensor] * out[item_tensor], dim=1).view(-1, 2)
    bpr = -torch.mean(torch.log(torch.sigmoid(score @ torch.tensor([[1.0], [-1.0]]))))
    reg = (model.embedding[user_tensor] ** 2 + model.embedding[item_tensor] ** 2).mean()
    for table in model.preferences.values():
        reg = reg + (table ** 2).mean() + (table[user_tensor] ** 2).mean()
    (bpr + 0.1 * reg).backward()
    torch.testing.assert_close(losses["bpr"], bpr)
    torch.testing.assert_close(losses["reg"], 0.1 * reg)
    for name, param in model.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert grads["confidence"].abs().sum() > 0 and grads["projections.text.weight"].abs().sum() > 0


def test_routing_moves_preferences_towards_attended_items(tiny_datamodule: RecDataModule):
    """One routing step: p_u <- normalize(p_u + sum_i softmax_i(p_u . f_i) f_i) over u's training items."""
    model = grcn(tiny_datamodule, n_routing=1)
    graphs = tiny_datamodule.graphs
    mask = graphs.train_interactions.to_dense() > 0
    features = F.normalize(F.leaky_relu(model.projections["image"](graphs.features["image"])))
    preference = F.normalize(model.preferences["image"])
    routed = F.normalize(preference + masked_softmax(preference @ features.T, mask, dim=1) @ features)
    content, _, _ = model.content_branch("image")
    scores = routed @ features.T
    expected_users = routed + masked_softmax(scores, mask, dim=1) @ features
    torch.testing.assert_close(content[:60], expected_users, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(grcn(tiny_datamodule, n_routing=0).content_branch("image")[0][:60], content[:60])


def test_options_change_what_the_model_computes(tiny_datamodule: RecDataModule):
    torch.manual_seed(0)
    base = grcn(tiny_datamodule)
    for options in ({"weight_mode": "max"}, {"weight_mode": "mean"}, {"n_id_layers": 1}):
        other = grcn(tiny_datamodule, **options)
        other.load_state_dict(base.state_dict())
        assert not torch.allclose(other()[0][:, :8], base()[0][:, :8]), options
    with pytest.raises(ValueError, match="weight_mode"):
        GRCN(60, 40, {"image": 8}, weight_mode="sum")
    with pytest.raises(ValueError, match="at least one item feature modality"):
        GRCN(60, 40, {})


def test_grcn_learns_beyond_random(tmp_path, tiny_source):
    datamodule = RecDataModule(tiny_source, knn_k=3, cache_dir=str(tmp_path), train_batch_size=64)
    model = GRCN(datamodule.n_users, datamodule.n_items, datamodule.feature_dims, embedding_dim=16, content_dim=8,
                 reg_weight=1e-4, optimizer=lambda params: torch.optim.Adam(params, lr=0.01))
    before, after = validation_recall_before_and_after(model, datamodule, tmp_path)
    assert after > before + 0.05
