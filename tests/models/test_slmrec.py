"""SLMRec: representations, the InfoNCE and FAC losses and every gradient against a dense transcription of
MMRec's SLMRec; its options."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lit_mmrec.data import RecDataModule
from lit_mmrec.models import SLMRec
from lit_mmrec.models.slmrec import dot_info_nce
from tests.conftest import validation_recall_before_and_after


def slmrec(datamodule: RecDataModule, **options) -> SLMRec:
    model = SLMRec(datamodule.n_users, datamodule.n_items, datamodule.feature_dims, embedding_dim=8, **options)
    model.graphs = datamodule.graphs
    model.on_graphs_ready()
    return model


def dense_views(model: SLMRec, datamodule: RecDataModule) -> list[torch.Tensor]:
    graphs, n_users = datamodule.graphs, datamodule.n_users
    a = graphs.norm_adjacency.to_dense()
    users = model.embedding[:n_users]
    starts = [model.embedding] + [torch.cat([users, model.projections[m](F.normalize(graphs.features[m], dim=1))])
                                  for m in ("image", "text")]
    return [(x + a @ x + a @ (a @ x) + a @ (a @ (a @ x))) / 4 for x in starts]


def test_representations_match_a_dense_reference(tiny_datamodule: RecDataModule):
    model = slmrec(tiny_datamodule)
    fused = torch.cat(dense_views(model, tiny_datamodule), dim=1)
    users, items = model()
    torch.testing.assert_close(users, model.user_head(fused[:60]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(items, model.item_head(fused[60:]), rtol=1e-5, atol=1e-6)
    assert model.id_maps[0].out_features == 8 and model.id_maps[1].out_features == 4  # MMRec's 64-d, then 32-d


def test_dot_info_nce_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    # logits a b^T / 0.5 = [[2, 0], [4, 4]]: row 0 keeps column 0, row 1 column 1 (a tie: log 2)
    row_0 = torch.log(1 + torch.exp(torch.tensor(-2.0)))
    expected = (row_0 + torch.log(torch.tensor(2.0))) / 2
    torch.testing.assert_close(dot_info_nce(a, b, 0.5), expected)


def test_training_loss_and_gradients_match_the_dense_reference(tiny_datamodule: RecDataModule):
    """InfoNCE of final users against positives (cosine); FAC: id -> image space, then -> text space, raw
    inner products; L2 on the batch's ID rows when asked for. Every gradient as the reference's."""
    model = slmrec(tiny_datamodule, ssl_weight=0.3, ssl_temperature=0.5, temperature=0.4, reg_weight=0.01)
    users, positives, negatives = next(iter(tiny_datamodule.train_dataloader()))
    losses = model.training_losses(users, positives, negatives)
    assert set(losses) == {"infonce", "fac", "reg"}
    sum(losses.values()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    views = dense_views(model, tiny_datamodule)
    fused = torch.cat(views, dim=1)
    u, p = model.user_head(fused[users]), model.item_head(fused[60 + positives])
    logits = F.normalize(u, dim=1) @ F.normalize(p, dim=1).T / 0.4
    target = torch.arange(len(users))
    main = F.cross_entropy(logits, target)
    z_id, z_image, z_text = (view[60 + positives] for view in views)
    x1 = model.id_maps[0](z_id)
    x2 = model.id_maps[1](x1)
    fac = F.cross_entropy(x1 @ model.modality_maps["image"](z_image).T / 0.5, target) \
        + F.cross_entropy(x2 @ model.modality_maps["text"](z_text).T / 0.5, target)
    e = model.embedding
    reg = (e[users].pow(2).sum() + e[60 + positives].pow(2).sum() + e[60 + negatives].pow(2).sum()) / (2 * len(users))
    (main + 0.3 * fac + 0.01 * reg).backward()
    torch.testing.assert_close(losses["infonce"], main)
    torch.testing.assert_close(losses["fac"], 0.3 * fac)
    torch.testing.assert_close(losses["reg"], 0.01 * reg)
    for name, param in model.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert grads["modality_maps.text.weight"].abs().sum() > 0 and grads["projections.image.weight"].abs().sum() > 0


def test_options_change_what_the_model_computes(tiny_datamodule: RecDataModule):
    torch.manual_seed(0)
    base = slmrec(tiny_datamodule)
    batch = next(iter(tiny_datamodule.train_dataloader()))
    assert set(slmrec(tiny_datamodule, ssl_weight=0.0).training_losses(*batch)) == {"infonce"}
    shallower = slmrec(tiny_datamodule, n_layers=1)
    shallower.load_state_dict(base.state_dict())
    assert not torch.allclose(shallower()[1], base()[1])
    mean = slmrec(tiny_datamodule, fusion="mean")
    assert mean.user_head.in_features == 8 and mean()[0].shape == (60, 8)
    with pytest.raises(ValueError, match="fusion"):
        SLMRec(60, 40, {"image": 8}, fusion="sum")
    with pytest.raises(ValueError, match="at least one item feature modality"):
        SLMRec(60, 40, {})


def test_one_modality_aligns_in_one_space(tmp_path, tiny_source):
    datamodule = RecDataModule(tiny_source, modalities=["text"], knn_k=3, cache_dir=str(tmp_path))
    datamodule.setup("fit")
    model = slmrec(datamodule)
    assert len(model.id_maps) == 1 and model.id_maps[0].out_features == 8
    losses = model.training_losses(*next(iter(datamodule.train_dataloader())))
    assert set(losses) == {"infonce", "fac"} and all(torch.isfinite(v) for v in losses.values())


def test_slmrec_learns_beyond_random(tmp_path, tiny_source):
    datamodule = RecDataModule(tiny_source, knn_k=3, cache_dir=str(tmp_path), train_batch_size=64)
    model = SLMRec(datamodule.n_users, datamodule.n_items, datamodule.feature_dims, embedding_dim=16,
                   optimizer=lambda params: torch.optim.Adam(params, lr=0.01))
    before, after = validation_recall_before_and_after(model, datamodule, tmp_path)
    assert after > before + 0.05
