"""Attention metrics as functions: the maths, on tensors of attention probabilities.

Conventions (all functions):

* Maps are attention probabilities with the images on dim 0 and ``(query, key)`` last:
  ``(B, *, Q, K)``, typically ``(B, L, H, N, N)`` for ``L`` layers and ``H`` heads. Rows sum to 1.
* A metric is a value per image (and per ``*`` index), averaged over the images. Each
  ``_<metric>_update`` returns ``(sum over images, number of images with a defined value)``, both
  shaped ``*``; :func:`_mean_compute` divides. Because the states are sums, several updates equal
  one update on the concatenated batch, and a DDP sum-reduction gives the single-process value.
* The plain metric functions (:func:`attention_cosine_similarity` ...) take the maps as given. The
  token-aware ones (:func:`attention_similarity`, :func:`attention_statistics`) first choose rows
  and columns with a :class:`~lightning_convshare.metrics.tokens.TokenLayout`; that choice is
  documented on each of them and in ``docs/attention.md``.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..errors import GeometryError
from .scratch import Scratch, _fresh
from .tokens import Index, TokenLayout, patch_distances

__all__ = [
    "SIMILARITY_METRICS",
    "STATISTIC_METRICS",
    "attention_cka",
    "attention_cosine_similarity",
    "attention_entropy",
    "attention_js_divergence",
    "attention_similarity",
    "attention_statistics",
    "mean_attention_distance",
    "spearman_corrcoef",
]

#: similarity metrics between a model's attention and a reference's, by log name
SIMILARITY_METRICS = ("cosine", "js", "cka", "cls_spearman")
#: intrinsic properties of one model's attention, by log name
STATISTIC_METRICS = ("distance", "entropy", "to_self", "to_cls")

_EPS = 1e-12
#: stands in for 0 inside logarithms (0 log 0 = 0): the smallest normal float32
_TINY = torch.finfo(torch.float32).tiny
#: a centred map whose squared Frobenius norm is below this has no variance across queries (CKA undefined)
_VAR_EPS = 1e-12
States = dict[str, tuple[torch.Tensor, torch.Tensor]]


def _all_images(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum over dim 0, count)`` of per-image values ``(B, *)`` that are all defined."""
    return values.sum(0), torch.full_like(values[0], values.shape[0])


def _defined_images(values: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum, count)`` over the images where ``valid`` holds."""
    return torch.where(valid, values, torch.zeros_like(values)).sum(0), valid.sum(0).to(values.dtype)


def _mean_compute(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``total / count``; ``nan`` where no image had a defined value."""
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


# ----------------------------------------------------------------------------- similarity maths
def _cosine_update(preds: torch.Tensor, target: torch.Tensor, scratch: Scratch = _fresh) -> tuple[torch.Tensor, torch.Tensor]:
    p, t = preds.flatten(-2), target.flatten(-2)  # B, *, Q*K
    dot = torch.mul(p, t, out=scratch("a", p.shape, p)).sum(-1)
    norms = torch.linalg.vector_norm(p, dim=-1) * torch.linalg.vector_norm(t, dim=-1)
    return _all_images(dot / norms.clamp_min(_EPS))  # B, *


def attention_cosine_similarity(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of two attention maps, each flattened to one vector, mean over images.

    ``cos(A, R) = <vec A, vec R> / (|vec A| |vec R|)``; 1 for identical maps, 0 for maps with
    disjoint support.

    Args:
        preds: ``(B, *, Q, K)`` attention probabilities.
        target: the same shape.

    Returns:
        ``(*)`` mean over the ``B`` images.

    Example:
        >>> a = torch.tensor([[[1.0, 0.0], [0.5, 0.5]]])  # B=1, Q=2, K=2
        >>> r = torch.tensor([[[0.5, 0.5], [0.5, 0.5]]])
        >>> attention_cosine_similarity(a, r)  # 1 / sqrt(1.5)
        tensor(0.8165)
    """
    return _mean_compute(*_cosine_update(preds, target))


def _neg_entropy_rows(
    x: torch.Tensor, log: Callable[[torch.Tensor], torch.Tensor] = torch.log_, work: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``sum_k x log x`` over the last dim (``0 log 0 = 0``); ``log`` is in place, ``work`` a buffer like ``x``."""
    return log(torch.clamp(x, min=_TINY, out=work) if work is not None else x.clamp_min(_TINY)).mul_(x).sum(-1)


def _js_update(preds: torch.Tensor, target: torch.Tensor, scratch: Scratch = _fresh) -> tuple[torch.Tensor, torch.Tensor]:
    # JS = H(m) - (H(p) + H(r)) / 2 with m = (p + r) / 2, in bits: three logarithms per entry
    mid = torch.add(preds, target, out=scratch("a", preds.shape, preds)).mul_(0.5)
    work = scratch("b", preds.shape, preds)
    h = _neg_entropy_rows(preds, torch.log2_, work).add_(_neg_entropy_rows(target, torch.log2_, work)).mul_(0.5)
    js = h.sub_(_neg_entropy_rows(mid, torch.log2_, work))  # B, *, Q
    return _all_images(js.clamp_min_(0.0).mean(-1))


def attention_js_divergence(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence in bits between each query's key distributions, mean over queries and images.

    ``JS(p, r) = KL(p || m) / 2 + KL(r || m) / 2`` with ``m = (p + r) / 2`` and log base 2, so
    ``0 <= JS <= 1``: 0 for identical distributions, 1 for disjoint ones.

    Args:
        preds: ``(B, *, Q, K)``; every row a distribution over the ``K`` keys.
        target: the same shape.

    Returns:
        ``(*)``.

    Example:
        >>> a = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
        >>> attention_js_divergence(a, a), attention_js_divergence(a, a.flip(-1))
        (tensor(0.), tensor(1.))
    """
    return _mean_compute(*_js_update(preds, target))


def _cka_update(preds: torch.Tensor, target: torch.Tensor, scratch: Scratch = _fresh) -> tuple[torch.Tensor, torch.Tensor]:
    # centred over the queries: B, *, Q, K
    pc = torch.sub(preds, preds.mean(-2, keepdim=True), out=scratch("a", preds.shape, preds))
    tc = torch.sub(target, target.mean(-2, keepdim=True), out=scratch("b", target.shape, target))
    gram_shape = (*preds.shape[:-1], preds.shape[-2])  # B, *, Q, Q
    gram_p = torch.matmul(pc, pc.transpose(-2, -1), out=scratch("gram_p", gram_shape, preds))
    gram_t = torch.matmul(tc, tc.transpose(-2, -1), out=scratch("gram_t", gram_shape, preds))
    work = scratch("gram_work", gram_shape, preds)
    cross = torch.mul(gram_p, gram_t, out=work).sum((-2, -1))  # B, *   HSIC(P, T) up to a constant
    norm = (torch.mul(gram_p, gram_p, out=work).sum((-2, -1)) * torch.mul(gram_t, gram_t, out=work).sum((-2, -1))).sqrt()
    # ||Pc||_F^2 = trace(Pc Pc^T): the variance across queries
    valid = (gram_p.diagonal(dim1=-2, dim2=-1).sum(-1) > _VAR_EPS) & (gram_t.diagonal(dim1=-2, dim2=-1).sum(-1) > _VAR_EPS)
    return _defined_images(cross / norm.clamp_min(_EPS * _EPS), valid)


def attention_cka(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Linear CKA between two attention maps, with the queries as examples and the keys as features.

    For one image and head, ``P`` and ``T`` are ``Q x K`` and ``Pc``, ``Tc`` are centred over the
    queries: ``CKA = ||Tc^T Pc||_F^2 / (||Pc^T Pc||_F ||Tc^T Tc||_F)`` (Kornblith et al. 2019),
    computed through the ``Q x Q`` Gram matrices. It is 1 when the maps agree up to a rotation and
    scaling of the key space, 0 when their query structures are unrelated. A map whose rows are
    all equal has no variance across queries; its CKA is undefined and the image is left out
    of the mean (``nan`` if no image is left).

    Args:
        preds: ``(B, *, Q, K)``.
        target: the same shape.

    Returns:
        ``(*)``.

    Example:
        >>> a = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
        >>> r = torch.tensor([[[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]])
        >>> attention_cka(a, a), attention_cka(a, r)  # 1 and 1/sqrt(2)
        (tensor(1.), tensor(0.7071))
    """
    return _mean_compute(*_cka_update(preds, target))


def _tied_ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks by pairwise comparison: exact with ties, O(n^2) per vector."""
    smaller = (x.unsqueeze(-2) < x.unsqueeze(-1)).sum(-1)  # ..., n   values below x_i
    equal = (x.unsqueeze(-2) == x.unsqueeze(-1)).sum(-1)  # ..., n   values equal to x_i (itself included)
    return smaller.to(x.dtype) + 0.5 * (equal.to(x.dtype) + 1.0)


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n along the last dim, ties sharing their average rank (one sort; pairwise only if ties exist)."""
    ordered, order = x.sort(-1)
    if bool((ordered[..., 1:] == ordered[..., :-1]).any()):
        return _tied_ranks(x)
    ranks = torch.arange(1, x.shape[-1] + 1, dtype=x.dtype, device=x.device).expand_as(x)
    return torch.empty_like(x).scatter_(-1, order, ranks)


def _spearman_update(preds: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rp, rt = _average_ranks(preds), _average_ranks(target)  # B, *, n
    rp, rt = rp - rp.mean(-1, keepdim=True), rt - rt.mean(-1, keepdim=True)
    vp, vt = rp.square().sum(-1), rt.square().sum(-1)  # B, *
    rho = (rp * rt).sum(-1) / (vp * vt).sqrt().clamp_min(_EPS)
    return _defined_images(rho, (vp > 0) & (vt > 0))


def spearman_corrcoef(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of two vectors per image (average ranks for ties), mean over images.

    Images where either vector is constant (correlation undefined) are left out of the mean.

    Args:
        preds: ``(B, *, n)``.
        target: the same shape.

    Returns:
        ``(*)``.

    Example:
        >>> spearman_corrcoef(torch.tensor([[0.1, 0.2, 0.7]]), torch.tensor([[0.3, 0.3, 0.4]]))
        tensor(0.8660)
    """
    return _mean_compute(*_spearman_update(preds, target))


# ----------------------------------------------------------------------------- one model's attention
def _distance_update(
    attn: torch.Tensor, distances: torch.Tensor, scratch: Scratch = _fresh
) -> tuple[torch.Tensor, torch.Tensor]:
    weights = torch.div(attn, attn.sum(-1, keepdim=True).clamp_min(_EPS), out=scratch("a", attn.shape, attn))  # B, *, P, P
    return _all_images(weights.mul_(distances).sum(-1).mean(-1))  # renormalised over patch keys, then weighted


def mean_attention_distance(
    attn: torch.Tensor, grid: tuple[int, int], patch_size: tuple[int, int] = (1, 1)
) -> torch.Tensor:
    """Mean attention distance in pixels (Dosovitskiy et al. 2021, Fig. 7).

    For every query patch, the distances in pixels to the key patches' centres weighted by its
    attention (renormalised over the patch keys), averaged over query patches and images. A map
    that attends only to itself gives 0; a uniform map gives the mean distance between two
    patch centres of the grid.

    Args:
        attn: ``(B, *, P, P)`` attention among the ``P = rows * cols`` patch tokens (row-major).
        grid: patch grid ``(rows, cols)``.
        patch_size: patch size in pixels ``(height, width)``.

    Returns:
        ``(*)`` in pixels.

    Example:
        >>> uniform = torch.full((1, 3, 3), 1 / 3)  # 1x3 grid of 4-pixel patches
        >>> mean_attention_distance(uniform, (1, 3), (4, 4))  # (0+4+8 + 4+0+4 + 8+4+0) / 9
        tensor(3.5556)
    """
    if attn.shape[-1] != grid[0] * grid[1]:
        raise GeometryError(f"attention over {attn.shape[-1]} patch tokens does not fit a {grid[0]}x{grid[1]} grid")
    return _mean_compute(*_distance_update(attn, patch_distances(grid, patch_size, attn.device).to(attn.dtype)))


def _entropy_update(attn: torch.Tensor, scratch: Scratch = _fresh) -> tuple[torch.Tensor, torch.Tensor]:
    return _all_images(-_neg_entropy_rows(attn, torch.log_, scratch("b", attn.shape, attn)).mean(-1))


def attention_entropy(attn: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats of each query's attention, mean over queries and images.

    0 when every query attends to one key; ``ln K`` when it attends uniformly to ``K`` keys.

    Args:
        attn: ``(B, *, Q, K)``.

    Returns:
        ``(*)``.

    Example:
        >>> attention_entropy(torch.full((1, 2, 4), 0.25))  # ln 4
        tensor(1.3863)
    """
    return _mean_compute(*_entropy_update(attn))


# ----------------------------------------------------------------------------- token-aware composites
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


def _similarity_update(
    preds: torch.Tensor,
    target: torch.Tensor,
    layout: TokenLayout,
    target_layout: TokenLayout,
    per_head: bool = True,
    scratch: Scratch = _fresh,
) -> States:
    """States of :data:`SIMILARITY_METRICS` for ``(B, L, H, N, N)`` maps, shaped ``(L, H + 1)``
    (``per_head``; the last column is the head-averaged map) or ``(L, 1)``."""
    with_cls = layout.has_cls and target_layout.has_cls
    p, t = _kept_maps(preds, layout, with_cls), _kept_maps(target, target_layout, with_cls)  # B, L, H, M, M
    if p.shape[-1] != t.shape[-1]:
        raise GeometryError(f"model ({layout.describe()}) and reference ({target_layout.describe()}) share no token grid")
    # the heads, then the head-averaged map (the layer's attention) as one more "head": B, L, H + 1, M, M
    heads = p.shape[2] if per_head else 0
    shape = (*p.shape[:2], heads + 1, *p.shape[3:])
    p_all, t_all = scratch("heads_p", shape, p), scratch("heads_t", shape, t)
    for src, dst in ((p, p_all), (t, t_all)):
        if per_head:
            dst[:, :, :heads].copy_(src)
        torch.mean(src, 2, keepdim=True, out=dst[:, :, heads:])
    out: States = {
        "cosine": _cosine_update(p_all, t_all, scratch),
        "js": _js_update(p_all, t_all, scratch),
        "cka": _cka_update(p_all, t_all, scratch),
    }
    if with_cls:  # the class token's attention to the patches (position 0 of the kept tokens)
        out["cls_spearman"] = _spearman_update(p_all[..., 0, 1:], t_all[..., 0, 1:])
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
    maps: torch.Tensor, layout: TokenLayout, distances: torch.Tensor, scratch: Scratch = _fresh
) -> States:
    """States of :data:`STATISTIC_METRICS` for ``(B, L, H, N, N)`` maps, shaped ``(L, H)``."""
    patches = layout.patch_slice
    patch_map = maps[..., patches, patches]  # B, L, H, P, P
    out = {
        "distance": _distance_update(patch_map, distances, scratch),
        "entropy": _entropy_update(_take(maps, layout.kept(True), slice(None)), scratch),
        "to_self": _all_images(torch.diagonal(patch_map, dim1=-2, dim2=-1).mean(-1)),
    }
    if layout.has_cls:
        out["to_cls"] = _all_images(maps[..., patches, 0].mean(-1))
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
