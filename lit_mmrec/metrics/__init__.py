"""Full-ranking metrics and the callbacks that compute, log and write them."""

from lit_mmrec.metrics.callbacks import (
    BestAndLastCheckpoint,
    PerUserMetrics,
    RandomStateCheckpoint,
    RankingEvaluator,
    TopKPredictionWriter,
    TrainingTelemetry,
)
from lit_mmrec.metrics.ranking import (
    TopKRankingMetrics,
    hit_matrix,
    mask_scores,
    ranked_hits,
    ranking_metrics_at,
    ranking_metrics_per_user,
    top_k_items,
)
from lit_mmrec.metrics.significance import PairedComparison, paired_comparison

__all__ = [
    "BestAndLastCheckpoint",
    "PairedComparison",
    "PerUserMetrics",
    "RandomStateCheckpoint",
    "RankingEvaluator",
    "TopKPredictionWriter",
    "TopKRankingMetrics",
    "TrainingTelemetry",
    "hit_matrix",
    "mask_scores",
    "paired_comparison",
    "ranked_hits",
    "ranking_metrics_at",
    "ranking_metrics_per_user",
    "top_k_items",
]
