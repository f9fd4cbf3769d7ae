"""Same-process comparison of one LightGCN training epoch on Baby: an MMRec-style step vs lit_mmrec's.

The MMRec-style step keeps MMRec's choices (COO adjacency with autograd's own sparse backward, separate
user/item tables concatenated every step, stacked layer mean, unfused Adam); the lit_mmrec step uses
the project's propagation (CSR, precomputed-transpose backward, one table, running mean, fused Adam)
and its gathers (one ``index_select`` per table, ``gather_batch``).
Both run in one process on the same batches, so machine load affects them alike.

    LIT_MMREC_DATA=/path/to/shared/data python benchmarks/lightgcn_step_vs_mmrec_style.py
"""

from __future__ import annotations

import os
import time

import torch
from torch import nn

from lit_mmrec.data import MMRecAtomic, RecDataModule
from lit_mmrec.models.base import gather_batch
from lit_mmrec.models.components import bpr_loss, l2_regularisation, sparse_matmul
from lit_mmrec.runtime import keep_freed_memory_for_reuse

DIM, LAYERS, REG = 64, 2, 1e-4


def mmrec_style_epoch(adjacency_coo: torch.Tensor, n_users: int, n_items: int, batches: list) -> float:
    users_table = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_users, DIM)))
    items_table = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_items, DIM)))
    optimizer = torch.optim.Adam([users_table, items_table], lr=1e-3)
    start = time.perf_counter()
    for users, positives, negatives in batches:
        embeddings = torch.cat([users_table, items_table])
        layers = [embeddings]
        for _ in range(LAYERS):
            embeddings = torch.sparse.mm(adjacency_coo, embeddings)
            layers.append(embeddings)
        final = torch.stack(layers, dim=1).mean(dim=1)
        u, i = final[:n_users], final[n_users:]
        loss = bpr_loss((u[users] * i[positives]).sum(1), (u[users] * i[negatives]).sum(1)) \
            + REG * l2_regularisation(users_table[users], items_table[positives], items_table[negatives])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def lit_mmrec_epoch(adjacency: torch.Tensor, n_users: int, n_items: int, batches: list) -> float:
    table = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_users + n_items, DIM)))
    optimizer = torch.optim.Adam([table], lr=1e-3, fused=True)
    start = time.perf_counter()
    for users, positives, negatives in batches:
        first = sparse_matmul(adjacency, table)
        second = sparse_matmul(adjacency, first)
        final = (table + first + second) / 3
        fu, fp, fn = gather_batch(final, n_users, users, positives, negatives)
        loss = bpr_loss((fu * fp).sum(1), (fu * fn).sum(1)) \
            + REG * l2_regularisation(*gather_batch(table, n_users, users, positives, negatives))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    keep_freed_memory_for_reuse()  # as the lit_mmrec command does
    datamodule = RecDataModule(MMRecAtomic(os.path.join(os.environ["LIT_MMREC_DATA"], "baby"), "baby"))
    datamodule.setup("fit")
    adjacency = datamodule.graphs.norm_adjacency
    coo = adjacency.to_sparse_coo().coalesce()
    coo = torch.sparse_coo_tensor(coo.indices().long(), coo.values(), coo.shape).coalesce()
    batches = list(datamodule.train_dataloader())
    sizes = (datamodule.n_users, datamodule.n_items, batches)
    for _ in range(3):
        print(f"mmrec-style {mmrec_style_epoch(coo, *sizes):.2f} s   lit_mmrec {lit_mmrec_epoch(adjacency, *sizes):.2f} s")


if __name__ == "__main__":
    main()
