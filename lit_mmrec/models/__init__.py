"""Recommender LightningModules: the shared base, baselines, and the DiffCL and DASRec models."""

from lit_mmrec.models.base import RecommenderModule
from lit_mmrec.models.bpr import BPRMF
from lit_mmrec.models.dasrec import DASRec
from lit_mmrec.models.diffcl import DiffCL
from lit_mmrec.models.freedom import FREEDOM
from lit_mmrec.models.lightgcn import LightGCN
from lit_mmrec.models.vbpr import VBPR

__all__ = ["BPRMF", "DASRec", "FREEDOM", "DiffCL", "LightGCN", "RecommenderModule", "VBPR"]
