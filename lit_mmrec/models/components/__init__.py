"""Reusable building blocks shared by every model: graph propagation, losses and full-ranking scores."""

from lit_mmrec.models.components.losses import (
    bpr_loss,
    info_nce,
    info_nce_against,
    l2_regularisation,
    mean_triplet_penalty,
    squared_norm,
)
from lit_mmrec.models.components.propagation import (
    LayerCombination,
    combine_layers,
    csr_rows,
    dense_rows,
    entry_rows,
    gather_rows,
    propagate,
    propagate_rows,
    row_block,
    sparse_matmul,
    weighted_graph_sum,
)
from lit_mmrec.models.components.scoring import inner_product_scores

__all__ = ["LayerCombination", "bpr_loss", "combine_layers", "csr_rows", "dense_rows", "entry_rows", "gather_rows", "info_nce", "info_nce_against", "inner_product_scores", "l2_regularisation", "mean_triplet_penalty", "propagate", "propagate_rows", "row_block", "sparse_matmul", "squared_norm", "weighted_graph_sum"]
