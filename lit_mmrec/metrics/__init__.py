"""Full-ranking metrics and the callbacks that compute, log and write them."""

from lit_mmrec.metrics.callbacks import (
    BestAndLastCheckpoint,
    RankingEvaluator,
    TopKPredictionWriter,
    TrainingTelemetry,
)
from lit_mmrec.metrics.ranking import (
    TopKRankingMetrics,
    hit_matrix,
    mask_scores,
    ranking_metrics_at,
    ranking_metrics_per_user,
    top_k_items,
)

__all__ = [
    "BestAndLastCheckpoint",
    "RankingEvaluator",
    "TopKPredictionWriter",
    "TopKRankingMetrics",
    "TrainingTelemetry",
    "hit_matrix",
    "mask_scores",
    "ranking_metrics_at",
    "ranking_metrics_per_user",
    "top_k_items",
]
