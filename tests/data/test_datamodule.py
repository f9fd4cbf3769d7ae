"""The data module: lazily read facts, graphs built once, and loaders with the right contents."""

from __future__ import annotations

import torch

from lit_mmrec.data import RecDataModule


def test_facts_and_graphs(tiny_datamodule: RecDataModule):
    dm = tiny_datamodule
    assert (dm.n_users, dm.n_items) == (60, 40)
    assert dm.feature_dims == {"image": 8, "text": 6}
    graphs = dm.graphs
    assert graphs.norm_adjacency.shape == (100, 100)
    assert graphs.norm_adjacency.layout == torch.sparse_csr
    assert set(graphs.item_item) == {"image", "text"}
    assert graphs.item_item["image"].shape == (40, 40)
    # every item keeps exactly knn_k = 3 neighbours
    assert (graphs.item_item["image"].crow_indices().diff() == 3).all()
    assert graphs.features["text"].dtype == torch.float32


def test_modality_selection(tiny_source, tmp_path):
    dm = RecDataModule(tiny_source, modalities=["text"], cache_dir=str(tmp_path))
    assert dm.feature_dims == {"text": 6}


def test_train_loader_yields_triplets(tiny_datamodule: RecDataModule):
    batches = list(tiny_datamodule.train_dataloader())
    total = sum(batch.shape[1] for batch in batches)
    assert total == tiny_datamodule.data.train.nnz
    assert all(batch.shape[0] == 3 for batch in batches)


def test_test_batches_exclude_train_and_valid(tiny_datamodule: RecDataModule):
    data = tiny_datamodule.data
    known = (data.train + data.valid).tocsr()
    for batch in tiny_datamodule.test_dataloader():
        for row, user in enumerate(batch.users.tolist()):
            excluded = sorted(batch.exclude_cols[batch.exclude_rows == row].tolist())
            assert excluded == known[user].indices.tolist()
            targets = sorted(batch.target_cols[batch.target_rows == row].tolist())
            assert targets == data.test[user].indices.tolist()


def test_predict_covers_all_users(tiny_datamodule: RecDataModule):
    users = torch.cat([batch.users for batch in tiny_datamodule.predict_dataloader()])
    assert users.tolist() == list(range(60))


def test_auto_eval_batch_size_fits_the_available_memory(tiny_source, tmp_path, monkeypatch):
    """With ``auto``, a batch holds a quarter of the available memory at three float32 rows of 40 items per
    user: 192,000 bytes give 100 users, 19,200 give 10 (so the 31 or so validation users come in 4 batches),
    and a huge host is capped at 8,192 users per batch."""
    import lit_mmrec.data.datamodule as module

    dm = RecDataModule(tiny_source, cache_dir=str(tmp_path), eval_batch_size="auto")
    monkeypatch.setattr(module, "available_memory_bytes", lambda device: 192_000)
    assert dm.eval_users_per_batch() == 100
    monkeypatch.setattr(module, "available_memory_bytes", lambda device: 19_200)
    dm.setup("fit")
    sizes = [len(batch.users) for batch in dm.val_dataloader()]
    assert max(sizes) == 10 and sum(sizes) == (dm.data.valid.getnnz(axis=1) > 0).sum()
    monkeypatch.setattr(module, "available_memory_bytes", lambda device: 10**15)
    assert dm.eval_users_per_batch() == 8192
    monkeypatch.setattr(module, "available_memory_bytes", lambda device: 1)
    assert dm.eval_users_per_batch() == 1
    assert RecDataModule(tiny_source, cache_dir=str(tmp_path), eval_batch_size=7).eval_users_per_batch() == 7


def _auto_size_worker(rank: int, port: int, results) -> None:
    import torch.distributed as dist

    import lit_mmrec.data.datamodule as module
    from lit_mmrec.data import Synthetic

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        module.available_memory_bytes = lambda device: (19_200, 192_000)[rank]  # 10 and 100 users on their own
        dm = RecDataModule(Synthetic(n_users=60, n_items=40, n_interactions=900, seed=3), eval_batch_size="auto",
                           use_cache=False)
        results.put((rank, dm.eval_users_per_batch()))
    finally:
        dist.destroy_process_group()


def test_auto_eval_batch_size_is_the_smallest_over_processes():
    """Under DDP every process must cut the users into the same batches: both take the smaller size."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    results = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_auto_size_worker, args=(port, results), nprocs=2, start_method="spawn")
    assert sorted(results.get() for _ in range(2)) == [(0, 10), (1, 10)]
