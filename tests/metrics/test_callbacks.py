"""The metric callbacks: checkpointing (``last.ckpt`` follows every training epoch, even when the monitored
metric stalls), and the full-ranking and per-user metrics against hand-computed values."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from lit_mmrec.metrics import BestAndLastCheckpoint


class StalledModel(BoringModel):
    """Logs the same validation value every epoch: only the first epoch is ever the best."""

    def on_validation_epoch_end(self) -> None:
        self.log("val/flat", 1.0)


@pytest.mark.parametrize("callback_class, last_step", [(ModelCheckpoint, 4), (BestAndLastCheckpoint, 12)])
def test_last_checkpoint_is_the_latest_state(tmp_path: Path, callback_class, last_step: int):
    checkpoint = callback_class(dirpath=tmp_path, monitor="val/flat", mode="max", save_last=True)
    trainer = L.Trainer(default_root_dir=tmp_path, max_epochs=3, limit_train_batches=4, limit_val_batches=1,
                        callbacks=[checkpoint], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(StalledModel())
    assert Path(checkpoint.best_model_path).name == "epoch=0-step=4.ckpt"
    state = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)
    # Lightning's own callback leaves last.ckpt at the best epoch (step 4); ours holds the final state
    assert state["global_step"] == last_step


def test_resuming_after_an_epoch_without_improvement_goes_on_with_the_next_epoch(tmp_path: Path):
    # early stopping needs the validation metric at every epoch end: a last.ckpt written inside an
    # epoch would make the resumed run re-enter that epoch's end without it
    def trainer(max_epochs: int) -> tuple[L.Trainer, EarlyStopping]:
        stopping = EarlyStopping(monitor="val/flat", mode="max", patience=5)
        checkpoint = BestAndLastCheckpoint(dirpath=tmp_path, monitor="val/flat", mode="max", save_last=True)
        return L.Trainer(default_root_dir=tmp_path, max_epochs=max_epochs, limit_train_batches=4,
                         limit_val_batches=1, callbacks=[stopping, checkpoint], logger=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0), stopping

    first, _ = trainer(2)
    first.fit(StalledModel())
    resumed, stopping = trainer(4)
    resumed.fit(StalledModel(), ckpt_path=tmp_path / "last.ckpt")
    assert resumed.current_epoch == 4 and resumed.global_step == 16
    assert stopping.wait_count == 3  # epochs 1, 2 and 3 did not improve on epoch 0


def test_cut_offs_beyond_the_catalogue_rank_every_item():
    from lit_mmrec.data.sampling import RankingBatch
    from lit_mmrec.metrics import RankingEvaluator

    evaluator = RankingEvaluator(ks=[2, 50], monitor="recall@2")  # 4 items only
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.0], [0.0, 0.1, 0.2, 0.3]])
    # user 0: held-out items 2 and 3; user 1: held-out item 0 (ranked last); nothing excluded
    batch = RankingBatch(torch.tensor([0, 1]), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long),
                         torch.tensor([0, 0, 1]), torch.tensor([2, 3, 0]), torch.tensor([2, 1]))
    evaluator._update("val", scores, batch)
    results = evaluator.metrics["val"].compute()
    assert float(results["recall@2"]) == 0.0
    assert float(results["recall@50"]) == 1.0  # every item is within the top 50 of a 4-item catalogue
    assert float(results["precision@50"]) == pytest.approx((2 / 50 + 1 / 50) / 2)


def test_per_user_metrics_by_hand_sorted_by_user(tmp_path):
    from lit_mmrec.data.sampling import RankingBatch
    from lit_mmrec.metrics import PerUserMetrics

    collector = PerUserMetrics(k=2, output_dir=str(tmp_path / "per_user"))
    trainer = SimpleNamespace(world_size=1, is_global_zero=True)  # one process
    module = SimpleNamespace(device=torch.device("cpu"))
    collector.on_validation_epoch_start(None, None)
    # users 5 and 1; user 5 has item 0 known (masked), held-out items 1 and 3; user 1 held-out item 2
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.7], [0.0, 0.1, 0.2, 0.3]])
    batch = RankingBatch(torch.tensor([5, 1]), torch.tensor([0]), torch.tensor([0]),
                         torch.tensor([0, 0, 1]), torch.tensor([1, 3, 2]), torch.tensor([2, 1]))
    collector.on_validation_batch_end(None, None, scores, batch, 0)
    # a second batch: user 0 with its held-out item 0 ranked first
    second = RankingBatch(torch.tensor([0]), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long),
                          torch.tensor([0]), torch.tensor([0]), torch.tensor([1]))
    collector.on_validation_batch_end(None, None, torch.tensor([[1.0, 0.0, 0.0, 0.0]]), second, 1)
    collector.on_validation_epoch_end(trainer, module)
    result = collector.results["val"]
    assert result["users"].tolist() == [0, 1, 5]
    # user 5 ranks items 1, 3 (both held out); user 1 ranks 3, 2 (one of one, at position 2)
    assert result["recall"].tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert result["precision"].tolist() == pytest.approx([0.5, 0.5, 1.0])
    assert result["ndcg"].tolist() == pytest.approx([1.0, 1 / math.log2(3), 1.0])
    assert result["hit"].tolist() == [1.0, 1.0, 1.0]
    # rank 0 writes the same values, one row per user
    lines = (tmp_path / "per_user" / "per_user_val@2.csv").read_text().splitlines()
    assert lines[0] == "userID,recall,ndcg,precision,hit"
    assert [line.split(",")[0] for line in lines[1:]] == ["0", "1", "5"]
    assert float(lines[2].split(",")[2]) == pytest.approx(1 / math.log2(3))
    assert float(lines[2].split(",")[3]) == 0.5
