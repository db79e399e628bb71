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
    _TINY,
    _cka_grams,
    _constant,
    _inner2,
    _js_values,
    _mean_compute,
    _normalised,
    _row_sums,
    _spearman_grams,
)
from .scratch import Scratch, _fresh
from .tokens import Index, TokenLayout, patch_distances

__all__ = ["attention_similarity", "attention_statistics", "similarity_names", "statistic_names"]


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sums, counts)`` of ``(B, L, H, N, N)`` maps, each ``(k, L, C)``: for the ``k`` metrics of
    :func:`similarity_names` in order, the per-image values summed over the images where they are
    defined, and the number of those images. ``C = H + 1`` (``per_head``; the last column is the
    head-averaged map) or ``1``.

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
    for gram, ok in [_cka_grams(pair, scratch)] + ([_spearman_grams(pair[..., 0, 1:], scratch)] if with_cls else []):
        grams.append(gram)
        defined.append(ok)
    eps = _constant((_EPS, _EPS * _EPS, _EPS)[: len(grams)], js).view(-1, 1, 1, 1)
    values = _normalised(torch.stack(grams), eps)  # cosine, cka[, cls_spearman]: k - 1, B, L, C
    ok = torch.stack(defined)  # cka[, cls_spearman]: k - 2, B, L, C
    # cosine and JS are defined on every image; CKA and the class token's Spearman where ``ok``
    always = torch.stack((values[0], js)).sum(1)  # 2, L, C
    sums = torch.cat((always, torch.where(ok, values[1:], 0.0).sum(1)))
    counts = torch.cat((torch.full_like(always, b), ok.sum(1, dtype=values.dtype)))
    return sums, counts


def similarity_names(layout: TokenLayout, target_layout: TokenLayout) -> list[str]:
    """The similarity metrics two layouts give, in the order of :func:`_similarity_update`'s rows
    (``cls_spearman`` only when both have a class token)."""
    return ["cosine", "js", "cka"] + (["cls_spearman"] if layout.has_cls and target_layout.has_cls else [])


def _similarity_compute(
    names: list[str], sums: torch.Tensor, counts: torch.Tensor, per_head: bool = True
) -> dict[str, torch.Tensor]:
    """``{m: overall, m/layer: (L,), m/head: (L, H)}`` from :func:`_similarity_update`'s sums and counts.

    ``m/layer`` compares the head-averaged maps; ``m`` is the mean of ``m/layer`` over the layers.
    """
    values = _mean_compute(sums, counts)  # k, L, C
    out: dict[str, torch.Tensor] = {}
    for name, value in zip(names, values, strict=True):
        layer = value[:, -1]
        out[name] = layer.nanmean()
        out[f"{name}/layer"] = layer
        if per_head:
            out[f"{name}/head"] = value[:, :-1]
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
    sums, counts = _similarity_update(preds, target, layout, target_layout, per_head)
    return _similarity_compute(similarity_names(layout, target_layout), sums, counts, per_head)


def statistic_names(layout: TokenLayout) -> list[str]:
    """The intrinsic metrics of a layout, in the order of :func:`_statistics_update`'s rows
    (``to_cls`` only with a class token)."""
    return ["distance", "entropy", "to_self"] + (["to_cls"] if layout.has_cls else [])


def _map_weights(layout: TokenLayout, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(distances (N, N), patch keys (N,))`` over the whole map: the patch-centre distances in the
    patch rows and keys (0 elsewhere), and the indicator of the patch keys; made once per layout."""
    key = (layout, like.device, like.dtype)
    found = _MAP_WEIGHTS.get(key)
    if found is None:
        n, ps = layout.num_tokens, layout.patch_slice
        distances = like.new_zeros(n, n)
        distances[ps, ps] = patch_distances(layout.grid, layout.patch_size, like.device).to(like.dtype)
        keys = like.new_zeros(n)
        keys[ps] = 1.0
        found = _MAP_WEIGHTS[key] = (distances, keys)
    return found


_MAP_WEIGHTS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _statistics_update(maps: torch.Tensor, layout: TokenLayout, scratch: Scratch = _fresh) -> tuple[torch.Tensor, int]:
    """``(sums (k, L, H), images)`` of ``(B, L, H, N, N)`` maps: for the ``k`` metrics of
    :func:`statistic_names` in order, the per-image values summed over the ``B = images`` images.
    """
    kept = _take(maps, layout.kept(True), slice(None))  # class-token and patch queries, all keys
    # entropy per query, -sum_k a log a; the sum over images of the mean over queries, in one reduction
    logs = torch.log_(torch.clamp(kept, min=_TINY, out=scratch("b", kept.shape, kept)))
    neg_entropy = logs.mul_(kept).sum((0, -2, -1))  # L, H
    # per patch query: the distance-weighted attention over the patch keys, renormalised over them; one
    # product with the distances laid over the whole map, then row sums (matrix-vector products)
    distances, patch_keys = _map_weights(layout, maps)
    ps = layout.patch_slice
    weighted = _row_sums(torch.mul(maps, distances, out=scratch("weighted", maps.shape, maps)))[..., ps]  # B, L, H, P
    mass = _row_sums(maps, patch_keys)[..., ps]
    rows = [weighted.div_(mass.clamp_min_(_EPS)).sum((0, -1)), neg_entropy]
    # to_self and to_cls are linear in the maps: summed over the images first
    total = maps.sum(0)  # L, H, N, N
    rows.append(total[..., ps, ps].diagonal(dim1=-2, dim2=-1).sum(-1))
    if layout.has_cls:
        rows.append(total[..., ps, 0].sum(-1))
    # per image, the mean over the queries (patch queries; the kept queries for the entropy)
    p, q = 1.0 / layout.num_patches, -1.0 / kept.shape[-2]
    return torch.stack(rows).mul_(_constant((p, q, p, p)[: len(rows)], maps).view(-1, 1, 1)), maps.shape[0]


def _statistics_compute(names: list[str], sums: torch.Tensor, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{m: overall, m/layer: (L,), m/head: (L, H)}``; layer and overall values average the heads."""
    values = _mean_compute(sums, images.expand_as(sums))  # k, L, H
    out: dict[str, torch.Tensor] = {}
    for name, value in zip(names, values, strict=True):
        out[name] = value.nanmean()
        out[f"{name}/layer"] = value.nanmean(-1)
        out[f"{name}/head"] = value
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
    sums, images = _statistics_update(maps, layout)
    return _statistics_compute(statistic_names(layout), sums, torch.tensor(float(images), device=maps.device))
