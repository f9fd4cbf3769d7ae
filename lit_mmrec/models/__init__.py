"""Recommender LightningModules: the shared base, the baselines (MGCN, MMGCN, GRCN, DualGNN, DRAGON, BM3, LATTICE, LGMRec, SLMRec and DiffMM among them), DiffCL and DASRec."""

from lit_mmrec.models.base import RecommenderModule
from lit_mmrec.models.bm3 import BM3
from lit_mmrec.models.bpr import BPRMF
from lit_mmrec.models.dasrec import DASRec
from lit_mmrec.models.diffcl import DiffCL
from lit_mmrec.models.diffmm import DiffMM
from lit_mmrec.models.dragon import DRAGON
from lit_mmrec.models.dualgnn import DualGNN
from lit_mmrec.models.freedom import FREEDOM
from lit_mmrec.models.grcn import GRCN
from lit_mmrec.models.lattice import LATTICE
from lit_mmrec.models.lgmrec import LGMRec
from lit_mmrec.models.lightgcn import LightGCN
from lit_mmrec.models.mgcn import MGCN
from lit_mmrec.models.mmgcn import MMGCN
from lit_mmrec.models.slmrec import SLMRec
from lit_mmrec.models.vbpr import VBPR

__all__ = ["BM3", "BPRMF", "DASRec", "DRAGON", "FREEDOM", "GRCN", "DiffCL", "DiffMM", "DualGNN", "LATTICE", "LGMRec", "LightGCN", "MGCN", "MMGCN", "RecommenderModule", "SLMRec", "VBPR"]
