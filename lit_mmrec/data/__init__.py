"""Data readers, synthetic data, graph building and batching for lit_mmrec."""

from lit_mmrec.data.datamodule import RecDataModule
from lit_mmrec.data.graphs import RecGraphs, item_item_knn_graph, sym_norm_adjacency
from lit_mmrec.data.interactions import DataFormatError, InteractionData
from lit_mmrec.data.readers import DatasetSource, DiffMMPickles, MMRecAtomic, Resplit
from lit_mmrec.data.sampling import BPRTriplets, RankingBatch, RankingBatches
from lit_mmrec.data.synthetic import Synthetic

__all__ = [
    "BPRTriplets",
    "DataFormatError",
    "DatasetSource",
    "DiffMMPickles",
    "InteractionData",
    "MMRecAtomic",
    "RankingBatch",
    "RankingBatches",
    "RecDataModule",
    "RecGraphs",
    "Resplit",
    "Synthetic",
    "item_item_knn_graph",
    "sym_norm_adjacency",
]
