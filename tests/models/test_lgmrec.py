"""LGMRec: hypergraph passing by hand, representations and loss against a dense reference of MMRec's forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lit_mmrec.data import RecDataModule
from lit_mmrec.models import LGMRec
from lit_mmrec.models.lgmrec import gumbel_softmax, hypergraph_embeddings
from tests.conftest import validation_recall_before_and_after


def lgmrec(datamodule: RecDataModule, **options) -> LGMRec:
    model = LGMRec(datamodule.n_users, datamodule.n_items, datamodule.feature_dims, embedding_dim=8, **options)
    model.graphs = datamodule.graphs
    model.on_graphs_ready()
    return model


def test_hypergraph_passing_by_hand():
    """Two items on hyperedge 0, one on hyperedge 1; a user half on each."""
    item_h = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    user_h = torch.tensor([[0.5, 0.5]])
    items = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    users, items_out = hypergraph_embeddings(item_h, user_h, items, n_layers=1)
    # hyperedges: [1,2]+[3,4] = [4,6] and [5,6]; items read their hyperedge; the user the mean of both
    torch.testing.assert_close(items_out, torch.tensor([[4.0, 6.0], [4.0, 6.0], [5.0, 6.0]]))
    torch.testing.assert_close(users, torch.tensor([[4.5, 6.0]]))
    users2, items2 = hypergraph_embeddings(item_h, user_h, items, n_layers=2)
    torch.testing.assert_close(items2, torch.tensor([[8.0, 12.0], [8.0, 12.0], [5.0, 6.0]]))
    torch.testing.assert_close(users2, torch.tensor([[6.5, 9.0]]))
    with pytest.raises(ValueError, match="at least one layer"):
        hypergraph_embeddings(item_h, user_h, items, n_layers=0)


def test_gumbel_softmax_draws_as_torch_does():
    logits = torch.randn(5, 4)
    torch.manual_seed(3)
    expected = F.gumbel_softmax(logits, tau=0.2, dim=1)
    torch.manual_seed(3)
    torch.testing.assert_close(gumbel_softmax(logits, 0.2), expected)


def reference(model: LGMRec, datamodule: RecDataModule, seed: int | None):
    """MMRec's LGMRec forward with dense matrices, drawing noise in its order from ``seed`` (from the global
    RNG's current state when ``None``)."""
    graphs, n_users = datamodule.graphs, datamodule.n_users
    a = graphs.norm_adjacency.to_dense()
    r = graphs.train_interactions.to_dense()
    e = model.embedding
    cge = (e + a @ e + a @ (a @ e)) / 3
    if seed is not None:
        torch.manual_seed(seed)
    hyper = {}
    for m in ("image", "text"):
        logits = graphs.features[m] @ model.hyperedges[m]
        hyper[m] = (F.gumbel_softmax(logits, 0.2, dim=1), F.gumbel_softmax(r @ logits, 0.2, dim=1))
    views, mge = {}, 0
    for m in ("image", "text"):
        item_h, user_h = (F.dropout(h, 1 - model.keep_rate, model.training) for h in hyper[m])
        lat = item_h.T @ cge[n_users:]
        views[m] = (user_h @ lat, item_h @ lat)
        items = graphs.features[m] @ model.projections[m]
        x = torch.cat([r @ items / (r.sum(1, keepdim=True) + 1e-7), items])
        mge = mge + F.normalize(a @ (a @ x), dim=1)
    ghe = torch.cat(views["image"]) + torch.cat(views["text"])
    return cge + mge + model.alpha * F.normalize(ghe, dim=1), views


def test_representations_match_a_dense_reference(tiny_datamodule: RecDataModule):
    model = lgmrec(tiny_datamodule).train()
    torch.manual_seed(7)
    users, items = model()
    expected, _ = reference(model, tiny_datamodule, seed=7)
    torch.testing.assert_close(users.detach(), expected[:60].detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(items.detach(), expected[60:].detach(), rtol=1e-5, atol=1e-6)


def test_evaluation_noise_comes_from_the_epoch_generator(tiny_datamodule: RecDataModule):
    """Ranking draws its Gumbel noise from a generator of the seed and the epoch: repeatable, and the global
    random stream is left where it was; without the noise, the softmax alone."""
    model = lgmrec(tiny_datamodule).eval()
    torch.manual_seed(0)
    users, items = model()
    global_state = torch.get_rng_state()
    torch.testing.assert_close(model()[1], items)
    assert torch.equal(torch.get_rng_state(), global_state)
    torch.set_rng_state(model.epoch_generator(-1).get_state())
    expected, _ = reference(model, tiny_datamodule, seed=None)
    torch.testing.assert_close(items, expected[60:].detach(), rtol=1e-5, atol=1e-6)
    noise_free = lgmrec(tiny_datamodule, eval_gumbel_noise=False).eval()
    noise_free.load_state_dict(model.state_dict())
    assert not torch.allclose(noise_free()[1], items)


def test_training_loss_and_gradients_match_the_dense_reference(tiny_datamodule: RecDataModule):
    """BPR, MMRec's norm penalty and the summed hypergraph InfoNCE (users, then positive items; image against
    text over every row); every gradient as the reference's, under the same Gumbel and dropout draws."""
    model = lgmrec(tiny_datamodule, cl_weight=0.05, reg_weight=0.1, tau=0.5).train()
    users, positives, negatives = next(iter(tiny_datamodule.train_dataloader()))
    torch.manual_seed(11)
    losses = model.training_losses(users, positives, negatives)
    assert set(losses) == {"bpr", "reg", "cl"}
    sum(losses.values()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    final, views = reference(model, tiny_datamodule, seed=11)
    u, p, n = final[users], final[60 + positives], final[60 + negatives]
    bpr = -F.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean()
    reg = 0.1 * (u.norm() + p.norm() + n.norm()) / len(users)

    def triple(anchor, positive, every):  # MMRec's ssl_triple_loss, a sum over the batch
        similarity = F.normalize(anchor, dim=1) @ F.normalize(every, dim=1).T / 0.5
        own = (F.normalize(anchor, dim=1) * F.normalize(positive, dim=1)).sum(1) / 0.5
        return -(own - similarity.exp().sum(1).log()).sum()
    (ui, ii), (ut, it) = views["image"], views["text"]
    cl = 0.05 * (triple(ui[users], ut[users], ut) + triple(ii[positives], it[positives], it))
    (bpr + reg + cl).backward()
    torch.testing.assert_close(losses["bpr"], bpr)
    torch.testing.assert_close(losses["reg"], reg)
    torch.testing.assert_close(losses["cl"], cl)
    assert {"embedding", "projections.image", "hyperedges.text"} <= set(grads)
    for name, param in model.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert grads["hyperedges.image"].abs().sum() > 0


def test_components_change_what_the_model_computes(tiny_datamodule: RecDataModule):
    torch.manual_seed(0)
    base = lgmrec(tiny_datamodule).eval()
    batch = next(iter(tiny_datamodule.train_dataloader()))
    assert "cl" not in lgmrec(tiny_datamodule, cl_weight=0.0).training_losses(*batch)
    for option in ({"alpha": 0.0}, {"cf_model": "mf"}, {"n_hyper_layers": 2}, {"n_mm_layers": 1},
                   {"eval_gumbel_noise": False}):
        variant = lgmrec(tiny_datamodule, **option).eval()
        variant.load_state_dict(base.state_dict())
        assert not torch.allclose(variant()[1], base()[1]), option
    with pytest.raises(ValueError, match="at least one item feature modality"):
        LGMRec(60, 40, {})
    with pytest.raises(ValueError, match="keep_rate"):
        LGMRec(60, 40, {"image": 8}, keep_rate=0.0)
    with pytest.raises(ValueError, match="cf_model"):
        LGMRec(60, 40, {"image": 8}, cf_model="ngcf")


def test_one_modality_trains_without_the_contrastive_term(tmp_path, tiny_source):
    datamodule = RecDataModule(tiny_source, modalities=["text"], knn_k=3, cache_dir=str(tmp_path))
    datamodule.setup("fit")
    model = lgmrec(datamodule)
    losses = model.training_losses(*next(iter(datamodule.train_dataloader())))
    assert set(losses) == {"bpr", "reg"} and all(torch.isfinite(v) for v in losses.values())


def test_lgmrec_learns_beyond_random(tmp_path, tiny_source):
    """The untrained model already ranks by its modality embeddings (the synthetic features carry the planted
    factors), so the check is the BPR loss falling and the ranking staying far above chance (0.25 at 10 of 40)."""
    torch.manual_seed(0)
    datamodule = RecDataModule(tiny_source, knn_k=3, cache_dir=str(tmp_path), train_batch_size=64)
    model = LGMRec(datamodule.n_users, datamodule.n_items, datamodule.feature_dims, embedding_dim=16,
                   optimizer=lambda params: torch.optim.Adam(params, lr=0.02))
    datamodule.setup("fit")
    model.graphs = datamodule.graphs
    model.on_graphs_ready()
    batch = next(iter(datamodule.train_dataloader()))

    def bpr() -> float:
        torch.manual_seed(1)
        return model.training_losses(*batch)["bpr"].item()
    loss_before = bpr()
    _, after = validation_recall_before_and_after(model, datamodule, tmp_path)
    model.train()
    assert bpr() < 0.7 * loss_before
    assert after > 0.6
