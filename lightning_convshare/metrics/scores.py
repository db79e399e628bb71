"""Computed attention metrics of one model, as log scalars, per-layer and per-head tables.

The log names are stable (W&B, CSV and ``metrics.json`` use the same ones)::

    <prefix>/<metric>                       overall value              e.g. val/attn/cosine
    <prefix>/layer<l>/<metric>              layer l (blocks.l, 0-based) e.g. val/attn/layer3/js
    <prefix>/layer<l>/head<h>/<metric>      head h of layer l           e.g. val/attn/layer3/head1/js
    <prefix>/ref/<metric>, /ref/layer<l>/.. the reference's own statistics
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .functional import SIMILARITY_METRICS, STATISTIC_METRICS

__all__ = ["AttentionScores", "METRIC_INFO", "format_value", "markdown_table", "write_csv"]

#: metric -> (column title, unit / direction, description)
METRIC_INFO: dict[str, tuple[str, str, str]] = {
    "cosine": ("cosine", "1 = same", "cosine similarity of the model's and the reference's attention maps"),
    "js": ("JS", "bits, 0 = same", "Jensen-Shannon divergence of each query's attention"),
    "cka": ("CKA", "1 = same", "linear CKA of the maps (queries as examples)"),
    "cls_spearman": ("cls rank", "1 = same", "Spearman correlation of the class token's attention to the patches"),
    "distance": ("distance", "px", "mean attention distance in pixels (Dosovitskiy et al. 2021)"),
    "entropy": ("entropy", "nats", "entropy of each query's attention"),
    "to_self": ("to self", "weight", "attention a patch pays to itself"),
    "to_cls": ("to cls", "weight", "attention a patch pays to the class token"),
}


def _scalar(value: torch.Tensor) -> float:
    return float(value.detach().cpu())


def _shaped(group: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``m``: (), ``m/layer``: (L,), ``m/head``: (L, H)."""
    layers = next((v.numel() for k, v in group.items() if k.endswith("/layer")), 0)
    out = {}
    for key, value in group.items():
        shape = (-1,) if key.endswith("/layer") else (layers, -1) if key.endswith("/head") else ()
        out[key] = value.reshape(shape)  # (), (L,) or (L, H)
    return out


@dataclass
class AttentionScores:
    """Results of :class:`AttentionSimilarity` / :class:`AttentionStatistics` ``compute()`` for one model.

    Attributes:
        similarity: similarity to the reference (empty without one).
        statistics: the model's own statistics.
        reference: the reference's statistics (empty without one).
    """

    similarity: dict[str, torch.Tensor] = field(default_factory=dict)
    statistics: dict[str, torch.Tensor] = field(default_factory=dict)
    reference: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # copies with the shapes restored that torchmetrics squeezes away for one layer or head
        self.similarity, self.statistics, self.reference = (
            _shaped(g) for g in (self.similarity, self.statistics, self.reference))

    def _groups(self) -> list[tuple[str, dict[str, torch.Tensor]]]:
        return [("", self.similarity), ("", self.statistics), ("ref/", self.reference)]

    @property
    def num_layers(self) -> int:
        for _, group in self._groups():
            for key, value in group.items():
                if key.endswith("/layer"):
                    return int(value.numel())
        return 0

    def scalars(self, prefix: str = "val/attn", per_head: bool = True) -> dict[str, float]:
        """Flat ``{log name: value}`` (see the module docstring); undefined (``nan``) values are left out."""
        out: dict[str, float] = {}
        for sub, group in self._groups():
            for key, value in group.items():
                name, _, level = key.partition("/")
                if level == "head" and not (per_head and not sub):  # the reference's heads: per layer only
                    continue
                values = value.detach().cpu().tolist()  # one transfer per tensor, not one per value
                if level == "":
                    out[f"{prefix}/{sub}{name}"] = values
                elif level == "layer":
                    out.update({f"{prefix}/{sub}layer{i}/{name}": v for i, v in enumerate(values)})
                else:
                    for i, row in enumerate(values):
                        out.update({f"{prefix}/{sub}layer{i}/head{h}/{name}": v for h, v in enumerate(row)})
        return {k: v for k, v in out.items() if not math.isnan(v)}

    def columns(self) -> list[str]:
        """Metric columns present: similarity, statistics, then the reference's statistics as ``ref_<m>``."""
        cols = [m for m in SIMILARITY_METRICS if m in self.similarity]
        cols += [m for m in STATISTIC_METRICS if m in self.statistics]
        return cols + [f"ref_{m}" for m in STATISTIC_METRICS if m in self.reference]

    def _value(self, column: str, level: str, index: tuple[int, ...]) -> float:
        group, name = (self.reference, column[4:]) if column.startswith("ref_") else (
            self.similarity if column in SIMILARITY_METRICS else self.statistics, column)
        value = group.get(name if level == "" else f"{name}/{level}")
        if value is None:
            return float("nan")
        for i in index:
            value = value[i]
        return _scalar(value)

    def overall(self) -> dict[str, float]:
        """``{column: overall value}``."""
        return {c: self._value(c, "", ()) for c in self.columns()}

    def layer_rows(self) -> list[dict[str, Any]]:
        """One row per layer: ``{"layer": l, <column>: value, ...}``."""
        layers = self.num_layers
        columns = {c: self._layer_values(c, layers) for c in self.columns()}  # one transfer per tensor
        return [{"layer": i, **{c: values[i] for c, values in columns.items()}} for i in range(layers)]

    def _layer_values(self, column: str, layers: int) -> list[float]:
        group, name = (self.reference, column[4:]) if column.startswith("ref_") else (
            self.similarity if column in SIMILARITY_METRICS else self.statistics, column)
        value = group.get(f"{name}/layer")
        return [float("nan")] * layers if value is None else [float(v) for v in value.detach().cpu().tolist()]

    def head_rows(self) -> list[dict[str, Any]]:
        """One row per (layer, head) with the metrics that have per-head values."""
        rows = []
        heads = next((v.shape[1] for _, g in self._groups() for k, v in g.items() if k.endswith("/head")), 0)
        cols = [c for c in self.columns() if not c.startswith("ref_")]
        for i in range(self.num_layers):
            for h in range(heads):
                rows.append({"layer": i, "head": h, **{c: self._value(c, "head", (i, h)) for c in cols}})
        return rows


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write dict rows as CSV (columns from the first row)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    return path


def format_value(value: Any) -> str:
    """Floats with 3 decimals (small ones in scientific notation), ``None``/``nan`` as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.1e}" if 0 < abs(value) < 0.005 else f"{value:.3f}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]], titles: dict[str, str] | None = None) -> str:
    """A GitHub markdown table of dict rows (floats with 3 decimals, ``nan`` as a dash)."""
    if not rows:
        return ""
    cols = list(rows[0])
    head = [(titles or {}).get(c, c) for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(cols))) + "|"]
    lines += ["| " + " | ".join(format_value(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"
