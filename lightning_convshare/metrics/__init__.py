"""Attention metrics: similarity to a reference ViT and intrinsic statistics (torchmetrics), figures, reports.

Sits between ``models`` and ``lit``: plain torch + torchmetrics + matplotlib, no Lightning.
See ``docs/attention.md`` for the definitions and which tokens enter each metric.
"""
from .attention_metrics import AttentionSimilarity, AttentionStatistics, attention_dims, stack_maps
from .evaluate import AttentionReport, evaluate_attention, load_reference, record_attention
from .figures import attention_grid, attention_pictures, metric_heatmap, picture_kind, save_figure
from .functional import (
    SIMILARITY_METRICS,
    STATISTIC_METRICS,
    attention_cka,
    attention_cosine_similarity,
    attention_entropy,
    attention_js_divergence,
    mean_attention_distance,
    spearman_corrcoef,
)
from .per_layer import attention_similarity, attention_statistics
from .scores import METRIC_INFO, AttentionScores, format_value, markdown_table, write_csv
from .tokens import TokenLayout, patch_distances

__all__ = [
    "METRIC_INFO",
    "SIMILARITY_METRICS",
    "STATISTIC_METRICS",
    "AttentionReport",
    "AttentionScores",
    "AttentionSimilarity",
    "AttentionStatistics",
    "TokenLayout",
    "attention_cka",
    "attention_cosine_similarity",
    "attention_dims",
    "attention_entropy",
    "attention_grid",
    "attention_js_divergence",
    "attention_pictures",
    "attention_similarity",
    "attention_statistics",
    "evaluate_attention",
    "format_value",
    "load_reference",
    "markdown_table",
    "mean_attention_distance",
    "metric_heatmap",
    "patch_distances",
    "picture_kind",
    "record_attention",
    "save_figure",
    "spearman_corrcoef",
    "stack_maps",
    "write_csv",
]
