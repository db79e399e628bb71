"""Attention metrics as functions: the maths, on tensors of attention probabilities.

Conventions (all functions):

* Maps are attention probabilities with the images on dim 0 and ``(query, key)`` last:
  ``(B, *, Q, K)``, typically ``(B, L, H, N, N)`` for ``L`` layers and ``H`` heads. Rows sum to 1.
* A metric is a value per image (and per ``*`` index), averaged over the images. Each
  ``_<metric>_update`` returns ``(sum over images, number of images with a defined value)``, both
  shaped ``*``; :func:`_mean_compute` divides. Because the states are sums, several updates equal
  one update on the concatenated batch, and a DDP sum-reduction gives the single-process value.
* The metric functions here (:func:`attention_cosine_similarity` ...) take the maps as given. The
  token-aware, per-layer ones (:mod:`~lightning_convshare.metrics.per_layer`: ``attention_similarity``,
  ``attention_statistics``) first choose rows and columns with a
  :class:`~lightning_convshare.metrics.tokens.TokenLayout`; that choice is documented on each of them
  and in ``docs/attention.md``.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..errors import GeometryError
from .scratch import Scratch, _fresh
from .tokens import patch_distances

__all__ = [
    "SIMILARITY_METRICS",
    "STATISTIC_METRICS",
    "attention_cka",
    "attention_cosine_similarity",
    "attention_entropy",
    "attention_js_divergence",
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


_CONSTANTS: dict[tuple, torch.Tensor] = {}


def _constant(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    """A small constant vector on ``like``'s device and dtype, made once (weights, epsilons, ones)."""
    key = (values, like.device, like.dtype)
    found = _CONSTANTS.get(key)
    if found is None:
        found = _CONSTANTS[key] = torch.tensor(values, device=like.device, dtype=like.dtype)
    return found


def _all_images(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum over dim 0, count)`` of per-image values ``(B, *)`` that are all defined."""
    return values.sum(0), torch.full_like(values[0], values.shape[0])


def _defined_images(values: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum, count)`` over the images where ``valid`` holds."""
    return torch.where(valid, values, 0.0).sum(0), valid.sum(0, dtype=values.dtype)


def _mean_compute(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``total / count``; ``nan`` where no image had a defined value."""
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


# ----------------------------------------------------------------------------- similarity maths
# The similarity maths works on the model's and the reference's maps side by side, ``(B, *, 2, Q, K)``
# (with their mean, the JS midpoint, as a third: ``(B, *, 3, Q, K)``), so that every step that treats
# both alike (logarithms, centring, Gram matrices, ranks) is one operation over both; and cosine, CKA
# and Spearman are each a normalised inner product ``<a, b> / (|a| |b|)``, read off one batched
# ``2 x 2`` Gram matrix ``[[a.a, a.b], [b.a, b.b]]`` (exactly 1 when ``a == b``). On attention maps of
# tens of tokens an update costs what its operations cost, so the composite update below makes few.
def _pair(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(B, *, 2, Q, K)``: the maps side by side."""
    return torch.stack((preds, target.to(preds.dtype)), dim=-3)


def _triple(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(B, *, 3, Q, K)``: the maps and their mean."""
    target = target.to(preds.dtype)
    return torch.stack((preds, target, (preds + target).mul_(0.5)), dim=-3)


def _inner2(vectors: torch.Tensor) -> torch.Tensor:
    """``(..., 2, 2)`` Gram matrix of ``vectors = (..., 2, D)``."""
    return torch.matmul(vectors, vectors.transpose(-2, -1))


def _normalised(gram2: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    """``<a, b> / max(|a| |b|, eps)`` from :func:`_inner2`'s Gram matrix."""
    return gram2[..., 0, 1] / (gram2[..., 0, 0] * gram2[..., 1, 1]).sqrt_().clamp_min_(eps)


def _cosine_update(pair: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _all_images(_normalised(_inner2(pair.flatten(-2)), _EPS))  # B, *


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
    return _mean_compute(*_cosine_update(_pair(preds, target)))


def _row_sums(x: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``(x * weights).sum(-1)`` (``weights`` over the last dim; default: ones) as a matrix-vector product:
    for short rows (tens of keys) a GEMV is twice as fast as a reduction."""
    if not x.is_contiguous():
        return x.sum(-1) if weights is None else (x * weights).sum(-1)
    weights = _constant((1.0,) * x.shape[-1], x) if weights is None else weights
    return torch.mv(x.view(-1, x.shape[-1]), weights).view(x.shape[:-1])


def _neg_entropy_rows(
    x: torch.Tensor, log: Callable[[torch.Tensor], torch.Tensor] = torch.log_, work: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``sum_k x log x`` over the last dim (``0 log 0 = 0``); ``log`` is in place, ``work`` a buffer like ``x``."""
    logs = log(torch.clamp(x, min=_TINY, out=work) if work is not None else x.clamp_min(_TINY))
    return _row_sums(logs.mul_(x))


def _js_values(triple: torch.Tensor, scratch: Scratch = _fresh) -> torch.Tensor:
    """JS in bits per image, ``(B, *)``, from ``(B, *, 3, Q, K)`` (model, reference, their mean)."""
    # JS = H(m) - (H(p) + H(r)) / 2 per query: three logarithms per entry, in one pass
    neg_h = _neg_entropy_rows(triple, torch.log2_, scratch("b", triple.shape, triple))  # B, *, 3, Q
    js = _constant((0.5, 0.5, -1.0), triple) @ neg_h  # B, *, Q
    return js.clamp_min_(0.0).mean(-1)


def _js_update(triple: torch.Tensor, scratch: Scratch = _fresh) -> tuple[torch.Tensor, torch.Tensor]:
    return _all_images(_js_values(triple, scratch))


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
    return _mean_compute(*_js_update(_triple(preds, target)))


def _cka_grams(pair: torch.Tensor, scratch: Scratch = _fresh) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Gram matrix of the two maps' Gram matrices (B, *, 2, 2), defined (B, *))`` for CKA."""
    q = pair.shape[-2]
    centred = torch.sub(pair, pair.mean(-2, keepdim=True), out=scratch("a", pair.shape, pair))  # B, *, 2, Q, K
    gram = torch.matmul(centred, centred.transpose(-2, -1), out=scratch("gram", (*pair.shape[:-1], q), pair))
    # CKA = <Gp, Gt> / (|Gp| |Gt|) with Gp = Pc Pc^T (HSIC up to a constant); undefined without
    # variance across queries, ||Pc||_F^2 = trace(Pc Pc^T)
    variance = gram.diagonal(dim1=-2, dim2=-1).sum(-1)  # B, *, 2
    return _inner2(gram.flatten(-2)), (variance > _VAR_EPS).all(-1)


def _cka_update(pair: torch.Tensor, scratch: Scratch = _fresh) -> tuple[torch.Tensor, torch.Tensor]:
    grams, defined = _cka_grams(pair, scratch)
    return _defined_images(_normalised(grams, _EPS * _EPS), defined)


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
    return _mean_compute(*_cka_update(_pair(preds, target)))


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


#: up to this many values per vector, ranks come from pairwise signs (n^2 work, no sort); above it from a sort
PAIRWISE_RANKS_MAX = 64


def _centred_ranks(x: torch.Tensor, scratch: Scratch = _fresh) -> torch.Tensor:
    """Average ranks along the last dim (ties share theirs) minus their mean ``(n + 1) / 2``; exact.

    Short vectors (a class token's attention to tens of patches): ``rank_i - (n + 1) / 2 =
    sum_j sign(x_i - x_j) / 2``, one comparison per pair, no sort, no test for ties and no
    synchronisation; the values are multiples of 1/2 either way (so the row sums are exact).
    """
    n = x.shape[-1]
    if n <= PAIRWISE_RANKS_MAX:
        signs = torch.sub(x.unsqueeze(-1), x.unsqueeze(-2), out=scratch("signs", (*x.shape, n), x)).sign_()
        return _row_sums(signs, _constant((0.5,) * n, x))
    return _average_ranks(x).sub_((n + 1) / 2)


def _spearman_grams(pair: torch.Tensor, scratch: Scratch = _fresh) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Gram matrix of the centred ranks (B, *, 2, 2), defined (B, *))`` of vectors ``(B, *, 2, n)``."""
    grams = _inner2(_centred_ranks(pair, scratch))
    return grams, (grams.diagonal(dim1=-2, dim2=-1) > 0).all(-1)  # a constant vector has no rank correlation


def _spearman_update(pair: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    grams, defined = _spearman_grams(pair)
    return _defined_images(_normalised(grams, _EPS), defined)


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
    return _mean_compute(*_spearman_update(torch.stack((preds, target.to(preds.dtype)), dim=-2)))


# ----------------------------------------------------------------------------- one model's attention
def _distance_update(
    attn: torch.Tensor, distances: torch.Tensor, scratch: Scratch = _fresh
) -> tuple[torch.Tensor, torch.Tensor]:
    # per query: sum_k a_k d_k / sum_k a_k (renormalised over the patch keys)
    weighted = torch.einsum("...qk,qk->...q", attn, distances)  # B, *, P
    return _all_images(weighted.div_(attn.sum(-1).clamp_min_(_EPS)).mean(-1))


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
    # the sum over images of the mean over queries, in one reduction over images, queries and keys
    logs = torch.log_(torch.clamp(attn, min=_TINY, out=scratch("b", attn.shape, attn)))
    total = logs.mul_(attn).sum((0, -2, -1)).div_(-attn.shape[-2])  # *
    return total, torch.full_like(total, attn.shape[0])


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
