"""MMGCN: mean aggregation by hand, the forward, loss and gradients against a dense transcription of MMRec's
MMGCN, MMRec's frozen tables, the options."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lit_mmrec.data import RecDataModule
from lit_mmrec.models import MMGCN
from lit_mmrec.models.mmgcn import mean_aggregation
from tests.conftest import validation_recall_before_and_after


def mmgcn(datamodule: RecDataModule, **options) -> MMGCN:
    options.setdefault("embedding_dim", 8)
    model = MMGCN(datamodule.n_users, datamodule.n_items, datamodule.feature_dims, **options)
    model.graphs = datamodule.graphs
    model.on_graphs_ready()
    return model


def test_mean_aggregation_by_hand():
    # path 0 - 1 - 2 and an isolated node 3; the values of the input are ignored
    adjacency = torch.tensor([[0, 5.0, 0, 0], [5.0, 0, 2.0, 0], [0, 2.0, 0, 0], [0, 0, 0, 0]]).to_sparse_csr()
    forward, backward = mean_aggregation(adjacency)
    expected = torch.tensor([[0, 1.0, 0, 0], [0.5, 0, 0.5, 0], [0, 1.0, 0, 0], [0, 0, 0, 0]])
    torch.testing.assert_close(forward.to_dense(), expected)
    torch.testing.assert_close(backward.to_dense(), expected.T)
    x = torch.tensor([[1.0], [2.0], [4.0], [8.0]])
    torch.testing.assert_close(forward @ x, torch.tensor([[2.0], [2.5], [2.0], [0.0]]))


def dense_branch(model: MMGCN, modality: str, datamodule: RecDataModule) -> torch.Tensor:
    """MMRec's GCN.forward with PyG's mean aggregation written as a dense row-normalised adjacency."""
    a = (datamodule.graphs.norm_adjacency.to_dense() != 0).float()
    mean = a / a.sum(dim=1, keepdim=True).clamp(min=1)
    branch = model.branches[modality]
    features = datamodule.graphs.features[modality]
    temp = branch.mlp(features) if branch.mlp is not None else features
    x = F.normalize(torch.cat([branch.preference, temp]))
    for weight, linear, g in zip(branch.conv_weights, branch.linears, branch.combiners):
        h = F.leaky_relu(mean @ (x @ weight))
        x_hat = F.leaky_relu(linear(x)) + model.embedding
        x = F.leaky_relu(g(torch.cat((h, x_hat), dim=1)))
    return x


def test_forward_matches_a_dense_transcription_of_mmrec(tiny_datamodule: RecDataModule):
    model = mmgcn(tiny_datamodule)
    assert model.branches["image"].mlp.out_features == 256 and model.branches["text"].mlp is None  # MMRec's rule
    assert len(model.branches["image"].conv_weights) == 3
    expected = (dense_branch(model, "image", tiny_datamodule) + dense_branch(model, "text", tiny_datamodule)) / 2
    users, items = model()
    torch.testing.assert_close(users, expected[:60], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(items, expected[60:], rtol=1e-5, atol=1e-6)


def test_loss_and_gradients_match_mmrecs(tiny_datamodule: RecDataModule):
    model = mmgcn(tiny_datamodule, reg_weight=0.1)
    users, positives, negatives = next(iter(tiny_datamodule.train_dataloader()))
    losses = model.training_losses(users, positives, negatives)
    assert set(losses) == {"bpr", "reg"}
    sum(losses.values()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    out = (dense_branch(model, "image", tiny_datamodule) + dense_branch(model, "text", tiny_datamodule)) / 2
    user_tensor = users.repeat_interleave(2)
    item_tensor = torch.stack((positives + 60, negatives + 60)).t().contiguous().view(-1)
    score = torch.sum(out[user_tensor] * out[item_tensor], dim=1).view(-1, 2)
    bpr = -torch.mean(torch.log(torch.sigmoid(score @ torch.tensor([[1.0], [-1.0]]))))
    reg = (model.embedding[user_tensor] ** 2 + model.embedding[item_tensor] ** 2).mean()
    reg = reg + sum((branch.preference ** 2).mean() for branch in model.branches.values())
    (bpr + 0.1 * reg).backward()
    torch.testing.assert_close(losses["bpr"], bpr)
    torch.testing.assert_close(losses["reg"], 0.1 * reg)
    for name, param in model.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert grads["embedding"].abs().sum() > 0 and grads["branches.text.preference"].abs().sum() > 0


def test_frozen_tables_reproduce_mmrec(tiny_datamodule: RecDataModule):
    """With ``learn_embeddings: false`` only the layers learn: an optimizer step leaves the ID and preference
    tables as initialised and moves the layers."""
    model = mmgcn(tiny_datamodule, learn_embeddings=False)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    sum(model.training_losses(*next(iter(tiny_datamodule.train_dataloader()))).values()).backward()
    optimizer.step()
    after = dict(model.named_parameters())
    for name in ("embedding", "branches.image.preference", "branches.text.preference"):
        assert after[name].grad is None and torch.equal(after[name], before[name])
    assert not torch.equal(after["branches.image.conv_weights.0"], before["branches.image.conv_weights.0"])


def test_options_change_what_the_model_computes(tiny_datamodule: RecDataModule):
    torch.manual_seed(0)
    base = mmgcn(tiny_datamodule)
    add = mmgcn(tiny_datamodule, combination="add")
    assert add.branches["image"].combiners[0].in_features == 256 and add.branches["text"].combiners[1].in_features == 8
    assert not torch.allclose(add()[0], base()[0])
    raw = mmgcn(tiny_datamodule, latent_dims={"text": 4})
    assert raw.branches["image"].mlp is None and raw.branches["text"].preference.shape == (60, 4)
    one_layer = mmgcn(tiny_datamodule, n_layers=1)
    assert len(one_layer.branches["text"].linears) == 1 and one_layer()[1].shape == (40, 8)
    with pytest.raises(ValueError, match="combination"):
        MMGCN(60, 40, {"image": 8}, combination="max")
    with pytest.raises(ValueError, match="latent_dims names modalities"):
        MMGCN(60, 40, {"image": 8}, latent_dims={"audio": 16})
    with pytest.raises(ValueError, match="at least one item feature modality"):
        MMGCN(60, 40, {})


def test_mmgcn_learns_beyond_random(tmp_path, tiny_source):
    datamodule = RecDataModule(tiny_source, knn_k=3, cache_dir=str(tmp_path), train_batch_size=64)
    model = MMGCN(datamodule.n_users, datamodule.n_items, datamodule.feature_dims, embedding_dim=16,
                  optimizer=lambda params: torch.optim.Adam(params, lr=0.005))
    before, after = validation_recall_before_and_after(model, datamodule, tmp_path)
    assert after > before + 0.05
