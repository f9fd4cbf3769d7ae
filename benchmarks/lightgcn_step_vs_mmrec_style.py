"""Same-process comparison of one LightGCN training epoch on Baby: an MMRec-style step vs lit_mmrec's.

The MMRec-style step keeps MMRec's choices (COO adjacency with autograd's own sparse backward, separate
user/item tables concatenated every step, stacked layer mean, unfused Adam); the lit_mmrec step uses
the project's propagation (CSR, precomputed-transpose backward, one table, running mean, fused Adam)
and its gathers (one ``index_select`` per table, ``gather_batch``).
Both run in one process on the same batches, so machine load affects them alike.

    LIT_MMREC_DATA=/path/to/shared/data python benchmarks/lightgcn_step_vs_mmrec_style.py
"""
import os
import sys
import time

import torch

from lit_mmrec.data import MMRecAtomic, RecDataModule
from lit_mmrec.models.base import gather_batch
from lit_mmrec.models.components import bpr_loss, l2_regularisation, sparse_matmul
from lit_mmrec.runtime import keep_freed_memory_for_reuse

keep_freed_memory_for_reuse()  # as the lit_mmrec command does
dm=RecDataModule(MMRecAtomic(os.path.join(os.environ['LIT_MMREC_DATA'], 'baby'), 'baby')); dm.setup('fit')
A=dm.graphs.norm_adjacency; nu=dm.n_users
coo=A.to_sparse_coo().coalesce(); coo=torch.sparse_coo_tensor(coo.indices().long(), coo.values(), coo.shape).coalesce()
batches=list(dm.train_dataloader())
def mmrec_epoch():
    ue=torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(nu,64))); ie=torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(dm.n_items,64)))
    opt=torch.optim.Adam([ue,ie],lr=1e-3)
    t=time.perf_counter()
    for u,p,n in batches:
        e=torch.cat([ue,ie]); L=[e]
        for _ in range(2): e=torch.sparse.mm(coo,e); L.append(e)
        f=torch.stack(L,1).mean(1); U,I=f[:nu],f[nu:]
        loss=bpr_loss((U[u]*I[p]).sum(1),(U[u]*I[n]).sum(1))+1e-4*l2_regularisation(ue[u],ie[p],ie[n])
        opt.zero_grad(); loss.backward(); opt.step()
    return time.perf_counter()-t
def ours_epoch():
    E=torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(nu+dm.n_items,64)))
    opt=torch.optim.Adam([E],lr=1e-3,fused=True)
    t=time.perf_counter()
    for u,p,n in batches:
        x1=sparse_matmul(A,E); x2=sparse_matmul(A,x1); f=(E+x1+x2)/3
        fu,fp,fn=gather_batch(f,nu,u,p,n)
        loss=bpr_loss((fu*fp).sum(1),(fu*fn).sum(1))+1e-4*l2_regularisation(*gather_batch(E,nu,u,p,n))
        opt.zero_grad(); loss.backward(); opt.step()
    return time.perf_counter()-t
for _ in range(3):
    print("mmrec-style %.2f s   lit_mmrec %.2f s" % (mmrec_epoch(), ours_epoch()))
