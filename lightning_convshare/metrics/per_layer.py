"""The token-aware, per-layer attention metrics: which rows and columns enter each metric, all layers at once.

:func:`attention_similarity` and :func:`attention_statistics` (and their ``_update``/``_compute``
helpers, which the torchmetrics classes of :mod:`~lightning_convshare.metrics.attention_metrics` use)
choose the tokens with a :class:`~lightning_convshare.metrics.tokens.TokenLayout` and apply the
metrics of :mod:`~lightning_convshare.metrics.functional` to every layer (and head) of ``(B, L, H, N, N)``
maps. The same conventions hold: per-image values summed into ``(sum, count)`` states.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import GeometryError
from .functional import (
    _EPS,
    States,
    _cka_grams,
    _constant,
    _entropy_update,
    _inner2,
    _js_values,
    _mean_compute,
    _normalised,
    _spearman_grams,
)
from .scratch import Scratch, _fresh
from .tokens import Index, TokenLayout, patch_distances

__all__ = ["attention_similarity", "attention_statistics"]


def _take(maps: torch.Tensor, rows: Index, cols: Index) -> torch.Tensor:
    """``maps[..., rows, cols]`` for slices or index tensors (views when both are slices)."""
    if isinstance(rows, torch.Tensor):
        maps = maps.index_select(-2, rows.to(maps.device))
        rows = slice(None)
    if isinstance(cols, torch.Tensor):
        maps = maps.index_select(-1, cols.to(maps.device))
        cols = slice(None)
    return maps[..., rows, cols]


def _kept_maps(maps: torch.Tensor, layout: TokenLayout, with_cls: bool) -> torch.Tensor:
    """Rows and columns of ``[cls] + patches``; rows renormalised if any key was dropped."""
    kept = layout.kept(with_cls)
    out = _take(maps, kept, kept)
    return out / out.sum(-1, keepdim=True).clamp_min(_EPS) if layout.drops(with_cls) else out


def _triple_weights(heads: int, target_heads: int, per_head: bool, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Wp (C*3, H), Wt (C*3, H'))``: the rows of the model-reference-mean triple as weights on the heads.

    For ``C`` columns (each head when ``per_head``, then the head-averaged map) the rows are the model's
    map, the reference's and their mean: ``triple = Wp @ heads(p) + Wt @ heads(t)``. The weights are 0, 1,
    1/2, 1/H and 1/(2H): a head is copied exactly, and the mean is the same sum of halves as ``(p + t) / 2``.
    """
    key = (heads, target_heads, per_head, like.device, like.dtype)
    found = _TRIPLE_WEIGHTS.get(key)
    if found is None:
        cols = heads + 1 if per_head else 1
        weights = []
        for slot, own in ((0, heads), (1, target_heads)):
            w = torch.zeros(cols, 3, own, dtype=torch.float64)
            if per_head:  # column c < H: head c
                w[:-1, slot] = w[:-1, 2] = torch.eye(own, dtype=torch.float64)
                w[:-1, 2] /= 2
            w[-1, slot], w[-1, 2] = 1.0 / own, 0.5 / own  # the last column: the head-averaged map
            weights.append(w.view(cols * 3, own).to(like.device, like.dtype))
        found = _TRIPLE_WEIGHTS[key] = (weights[0], weights[1])
    return found


_TRIPLE_WEIGHTS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _similarity_update(
    preds: torch.Tensor,
    target: torch.Tensor,
    layout: TokenLayout,
    target_layout: TokenLayout,
    per_head: bool = True,
    scratch: Scratch = _fresh,
) -> States:
    """States of :data:`SIMILARITY_METRICS` for ``(B, L, H, N, N)`` maps, shaped ``(L, H + 1)``
    (``per_head``; the last column is the head-averaged map) or ``(L, 1)``.

    The same values as the single metrics' updates, computed together (see the section comment).
    """
    with_cls = layout.has_cls and target_layout.has_cls
    p, t = _kept_maps(preds, layout, with_cls), _kept_maps(target, target_layout, with_cls)  # B, L, H, M, M
    if p.shape[-1] != t.shape[-1]:
        raise GeometryError(f"model ({layout.describe()}) and reference ({target_layout.describe()}) share no token grid")
    # the heads (per_head), then the head-averaged map (the layer's attention) as one more "head"; model,
    # reference and their mean side by side: B, L, C = H + 1 (or 1), 3, M, M, made by two batched products
    (b, layers, heads), target_heads, m = p.shape[:3], t.shape[2], p.shape[-1]
    wp, wt = _triple_weights(heads, target_heads, per_head and heads == target_heads, p)
    triple = scratch("triple", (b, layers, wp.shape[0] // 3, 3, m, m), p)
    flat = triple.view(b * layers, wp.shape[0], m * m)
    torch.bmm(wp.expand(b * layers, *wp.shape), p.reshape(b * layers, heads, m * m), out=flat)
    flat.baddbmm_(wt.expand(b * layers, *wt.shape), t.to(p.dtype).reshape(b * layers, target_heads, m * m))
    pair = triple[..., :2, :, :]  # B, L, C, 2, M, M
    js = _js_values(triple, scratch)  # B, L, C
    # cosine, CKA and Spearman: normalised inner products, normalised together
    grams, defined = [_inner2(pair.flatten(-2))], []
    for gram, ok in [_cka_grams(pair, scratch)] + ([_spearman_grams(pair[..., 0, 1:])] if with_cls else []):
        grams.append(gram)
        defined.append(ok)
    eps = _constant((_EPS, _EPS * _EPS, _EPS)[: len(grams)], js).view(-1, 1, 1, 1)
    values = _normalised(torch.stack(grams), eps)  # cosine, cka[, cls_spearman]: k, B, L, C
    defined = torch.stack(defined)  # k - 1, B, L, C
    totals = torch.where(defined, values[1:], 0.0).sum(1)  # k - 1, L, C
    counts = defined.sum(1, dtype=values.dtype)
    always = torch.stack((values[0], js)).sum(1)  # 2, L, C
    images = torch.full_like(always[0], preds.shape[0])
    out: States = {"cosine": (always[0], images), "js": (always[1], images), "cka": (totals[0], counts[0])}
    if with_cls:  # the class token's attention to the patches (position 0 of the kept tokens)
        out["cls_spearman"] = (totals[1], counts[1])
    return out


def _similarity_compute(states: States, per_head: bool = True) -> dict[str, torch.Tensor]:
    """``{m: overall, m/layer: (L,), m/head: (L, H)}`` from :func:`_similarity_update` states.

    ``m/layer`` compares the head-averaged maps; ``m`` is the mean of ``m/layer`` over the layers.
    """
    out: dict[str, torch.Tensor] = {}
    for name, (total, count) in states.items():
        values = _mean_compute(total, count)  # L, H + 1
        layer = values[:, -1]
        out[name] = layer.nanmean()
        out[f"{name}/layer"] = layer
        if per_head:
            out[f"{name}/head"] = values[:, :-1]
    return out


def attention_similarity(
    preds: torch.Tensor, target: torch.Tensor, layout: TokenLayout, target_layout: Optional[TokenLayout] = None
) -> dict[str, torch.Tensor]:
    """Cosine, JS, CKA and class-token Spearman between a model's and a reference's attention.

    Tokens: rows and columns are the class token (when both models have one) and the patches;
    register tokens are dropped and each row is renormalised over the kept keys (a no-op without
    registers). ``cls_spearman`` ranks the class token's attention to the patches (its row,
    patch columns). Per head, head ``h`` is compared with head ``h``; per layer, the
    head-averaged maps are compared (independent of how heads are ordered).

    Args:
        preds: ``(B, L, H, N, N)`` the model's attention.
        target: ``(B, L, H', N', N')`` the reference's attention on the same images.
        layout: the model's tokens.
        target_layout: the reference's tokens (default: ``layout``); same patch grid.

    Returns:
        ``{m: (), m/layer: (L,), m/head: (L, H)}`` for each metric ``m`` (no ``/head`` when
        ``H != H'``, no ``cls_spearman`` unless both have a class token).
    """
    target_layout = target_layout or layout
    per_head = preds.shape[2] == target.shape[2]
    return _similarity_compute(_similarity_update(preds, target, layout, target_layout, per_head), per_head)


def _statistics_update(
    maps: torch.Tensor,
    layout: TokenLayout,
    distances: torch.Tensor,
    scratch: Scratch = _fresh,
) -> States:
    """States of :data:`STATISTIC_METRICS` for ``(B, L, H, N, N)`` maps, shaped ``(L, H)``.

    ``distances``: the ``(P, P)`` patch-centre distances of the layout, in ``maps``' dtype.
    """
    entropy = _entropy_update(_take(maps, layout.kept(True), slice(None)), scratch)
    rows = maps[..., layout.patch_slice, :]  # patch queries: B, L, H, P, N (views, no copy)
    keys = rows[..., layout.patch_slice]  # their patch keys: B, L, H, P, P
    # per patch query: the distance-weighted attention over the patch keys, renormalised over them
    weighted = torch.mul(keys, distances, out=scratch("weighted", keys.shape, keys)).sum(-1)  # B, L, H, P
    ratio = weighted.div_(keys.sum(-1).clamp_min_(_EPS))
    per_query = [ratio, keys.diagonal(dim1=-2, dim2=-1)] + ([rows[..., 0]] if layout.has_cls else [])
    # distance, to_self[, to_cls]: per image, the mean over patch queries; summed over images
    per_image = torch.stack([v.sum((0, -1)) for v in per_query]).div_(layout.num_patches)  # 2 | 3, L, H
    count = entropy[1]
    out = {"distance": (per_image[0], count), "entropy": entropy, "to_self": (per_image[1], count)}
    if layout.has_cls:
        out["to_cls"] = (per_image[2], count)
    return out


def _statistics_compute(states: States) -> dict[str, torch.Tensor]:
    """``{m: overall, m/layer: (L,), m/head: (L, H)}``; layer and overall values average the heads."""
    out: dict[str, torch.Tensor] = {}
    for name, (total, count) in states.items():
        values = _mean_compute(total, count)  # L, H
        out[name] = values.nanmean()
        out[f"{name}/layer"] = values.nanmean(-1)
        out[f"{name}/head"] = values
    return out


def attention_statistics(maps: torch.Tensor, layout: TokenLayout) -> dict[str, torch.Tensor]:
    """Intrinsic attention properties of one model, comparable across runs.

    Tokens: ``distance`` uses patch queries and patch keys (renormalised; as Dosovitskiy et al.);
    ``entropy`` uses the class-token and patch queries over all keys (the softmax as computed);
    ``to_self`` is the attention a patch pays to itself and ``to_cls`` the attention a patch pays
    to the class token (only with a class token), both without renormalisation.

    Args:
        maps: ``(B, L, H, N, N)``.
        layout: the model's tokens.

    Returns:
        ``{m: (), m/layer: (L,), m/head: (L, H)}``; layer values are means over heads.
    """
    distances = patch_distances(layout.grid, layout.patch_size, maps.device).to(maps.dtype)
    return _statistics_compute(_statistics_update(maps, layout, distances))
