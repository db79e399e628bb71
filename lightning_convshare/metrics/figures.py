"""Attention pictures: per-layer attention maps next to the image, and a layers x metrics heatmap.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend
switch), so they work headless and inside training processes.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .scores import METRIC_INFO
from .tokens import TokenLayout

__all__ = ["attention_grid", "attention_pictures", "metric_heatmap", "picture_kind", "save_figure"]


def attention_pictures(maps: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """What each layer looks at, as an image over the patch grid, averaged over heads.

    With a class token: the class token's attention to the patches (its row, patch columns).
    Without one: the mean attention each patch receives from the patch queries.

    Args:
        maps: ``(B, L, H, N, N)``.
        layout: the model's tokens.

    Returns:
        ``(B, L, rows, cols)``.
    """
    patches = layout.patch_slice
    if layout.has_cls:
        pics = maps[..., 0, patches]  # B, L, H, P
    else:
        pics = maps[..., patches, patches].mean(-2)  # B, L, H, P
    pics = pics.float().mean(2)  # B, L, P
    return pics.reshape(*pics.shape[:2], *layout.grid)  # B, L, rows, cols


def picture_kind(layout: TokenLayout) -> str:
    """What :func:`attention_pictures` shows for this layout, for titles."""
    return "class-token attention to the patches" if layout.has_cls else "mean attention each patch receives"


def _display(image: torch.Tensor) -> tuple[np.ndarray, Optional[str]]:
    """``(C, H, W)`` normalised image -> ``(H, W[, 3])`` in [0, 1] and a colour map for grey images."""
    img = image.detach().float().cpu()
    img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-12)
    if img.shape[0] == 1:
        return img[0].numpy(), "gray"
    return img[:3].permute(1, 2, 0).numpy(), None  # H, W, 3


def _clean(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def attention_grid(
    images: torch.Tensor,
    pictures: torch.Tensor,
    reference: Optional[torch.Tensor] = None,
    title: str = "",
    labels: Sequence[str] = ("model", "reference"),
) -> Figure:
    """One row per image (two with a reference): the image, then each layer's attention picture.

    Colours run from 0 to the largest weight of that image and layer in the model's and the
    reference's picture, so a flat (near-uniform) map looks flat and the two rows compare directly.

    Args:
        images: ``(K, C, H, W)``.
        pictures: ``(K, L, rows, cols)`` from :func:`attention_pictures`.
        reference: the reference's pictures of the same images, drawn in the row below the model's.
        title: figure title.
        labels: row labels of the model and the reference.
    """
    k, depth = pictures.shape[:2]
    sets = [(labels[0], pictures)] + ([(labels[1], reference)] if reference is not None else [])
    per = len(sets)
    fig = Figure(figsize=(1.25 * (depth + 1), 1.25 * k * per + 0.5), layout="constrained")
    axes = fig.subplots(k * per, depth + 1, squeeze=False)
    for i in range(k):
        img, cmap = _display(images[i])
        for r, (label, pics) in enumerate(sets):
            row = axes[i * per + r]
            row[0].imshow(img, cmap=cmap, interpolation="nearest")
            row[0].set_ylabel(label, fontsize=8)
            for layer in range(depth):
                top = max(float(p[i, layer].max()) for _, p in sets)  # one scale for model and reference, from 0
                row[layer + 1].imshow(pics[i, layer].cpu().numpy(), cmap="viridis", interpolation="nearest",
                                      vmin=0.0, vmax=top if top > 0 else 1.0)
                if i == 0 and r == 0:
                    row[layer + 1].set_title(f"layer {layer}", fontsize=8)
            for ax in row:
                _clean(ax)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def metric_heatmap(rows: list[dict[str, Any]], columns: Sequence[str], title: str = "") -> Figure:
    """Layers x metrics heatmap: colour scaled per metric (column), cells annotated with the values.

    Args:
        rows: per-layer rows (``AttentionScores.layer_rows()``), each with ``layer`` and the columns.
        columns: metric columns to draw.
        title: figure title.
    """
    values = np.array([[float(r[c]) for c in columns] for r in rows], dtype=float)
    values = values.reshape(len(rows), len(columns))  # layers, metrics
    defined = ~np.isnan(values)
    lo = np.min(values, 0, initial=np.inf, where=defined)
    hi = np.max(values, 0, initial=-np.inf, where=defined)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    scaled = np.where(hi - lo > 0, (values - lo) / span, 0.5)
    fig = Figure(figsize=(1.0 + 1.05 * len(columns), 0.8 + 0.42 * len(rows)), layout="constrained")
    ax = fig.subplots()
    ax.imshow(np.ma.masked_invalid(scaled), cmap="viridis", aspect="auto", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(values):
        text = "—" if math.isnan(v) else f"{v:.0e}" if 0 < abs(v) < 0.005 else f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"
        ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if scaled[i, j] < 0.6 else "black")

    def title_of(c: str) -> str:
        ref, name = c.startswith("ref_"), c[4:] if c.startswith("ref_") else c
        t, unit, _ = METRIC_INFO.get(name, (name, "", ""))
        return f"{'ref ' if ref else ''}{t}\n({unit})" if unit else t

    ax.set_xticks(range(len(columns)), [title_of(c) for c in columns], fontsize=7)
    ax.set_yticks(range(len(rows)), [f"layer {r['layer']}" for r in rows], fontsize=7)
    ax.xaxis.tick_top()
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Render ``fig`` to a PNG with the Agg canvas; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi)
    return path
