"""torchmetrics ``Metric`` classes over recorded attention: similarity to a reference, intrinsic statistics.

Both accumulate sum states (``dist_reduce_fx="sum"``) per layer and head, so several updates give
the result of one update on the concatenated batches, and a DDP run gives the single-process
value. ``update`` takes what :class:`~lightning_convshare.layers.AttentionRecorder` records: a
mapping ``{module name: (B, H, N, N)}`` in depth order (or a sequence of such tensors, or one
stacked ``(B, L, H, N, N)`` tensor). On the CPU a batch is processed in cache-sized chunks of
images and layers, with reused scratch buffers; the result is the same (the states are sums).
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Optional, Union

import torch
from torch import nn
from torchmetrics import Metric

from ..errors import ConfigError, GeometryError
from ..layers import recording_modules
from .per_layer import (
    _similarity_compute,
    _similarity_update,
    _statistics_compute,
    _statistics_update,
    similarity_names,
    statistic_names,
)
from .scratch import ScratchBuffers
from .tokens import TokenLayout

__all__ = ["AttentionSimilarity", "AttentionStatistics", "Maps", "attention_dims", "stack_maps"]

Maps = Union[torch.Tensor, Mapping[str, torch.Tensor], Sequence[torch.Tensor]]


#: map entries processed at once on the CPU: cache-sized chunks of images and layers (exact: the states are sums)
CHUNK_NUMEL = 1 << 19


def _chunks(maps: torch.Tensor, numel: Optional[int] = None) -> Iterator[tuple[slice, slice]]:
    """``(images, layers)`` slices of a ``(B, L, H, N, N)`` batch, about ``numel`` entries each (one on GPUs)."""
    numel = numel or CHUNK_NUMEL
    b, depth = maps.shape[:2]
    if maps.device.type != "cpu":
        yield slice(0, b), slice(0, depth)
        return
    per_layer = max(math.prod(maps.shape[2:]), 1)  # H * N * N
    layers = max(1, min(depth, numel // per_layer))
    images = max(1, numel // (per_layer * layers)) if layers == depth else 1
    for i in range(0, b, images):
        for j in range(0, depth, layers):
            yield slice(i, i + images), slice(j, j + layers)


def _add_to_state(metric: Metric, name: str, value: torch.Tensor | float, layers: slice = slice(None)) -> None:
    """``metric.<name>[:, layers] += value`` (``value`` covering every layer, or a number: ``+= value``), in
    place unless the state is an inference tensor outside inference mode (then a normal copy takes its place)."""
    state = getattr(metric, name)
    if state.is_inference() and not torch.is_inference_mode_enabled():
        state = state.clone()
        setattr(metric, name, state)
    if isinstance(value, torch.Tensor) and value.shape != state.shape:
        state[:, layers] += value
    else:
        state.add_(value)


def _batch(maps: torch.Tensor, images: slice, layers: slice) -> torch.Tensor:
    """``maps[images, layers]``, the tensor itself when both slices take everything."""
    b, depth = maps.shape[:2]
    return maps if images == slice(0, b) and layers == slice(0, depth) else maps[images, layers]


def attention_dims(model: nn.Module) -> tuple[int, int]:
    """``(layers, heads)`` of the attention modules that can record.

    Raises:
        ConfigError: the model has no recording attention (no surgery applied).
    """
    modules = list(recording_modules(model).values())
    if not modules:
        raise ConfigError(
            f"{type(model).__name__} has no attention module that can record; build it with a surgery variant "
            "(e.g. models.create_network(ModelSpec(name, kwargs, 'vit'))) to swap in lightning_convshare's Attention"
        )
    return len(modules), int(modules[0].num_heads)


def stack_maps(maps: Maps, num_layers: int, num_heads: int, layout: TokenLayout, what: str = "attention") -> torch.Tensor:
    """Recorded maps as one float ``(B, L, H, N, N)`` tensor, checked against the expected shape.

    Raises:
        GeometryError: wrong number of layers, heads or tokens (with the shapes seen and expected).
    """
    if isinstance(maps, Mapping):
        maps = list(maps.values())
    if not isinstance(maps, torch.Tensor):
        if not maps:
            raise GeometryError(f"no {what} maps were recorded; run the forward inside AttentionRecorder")
        maps = torch.stack(list(maps), dim=1)  # B, L, H, N, N
    if maps.dim() != 5 or maps.shape[1] != num_layers or maps.shape[2] != num_heads:
        raise GeometryError(
            f"{what} maps have shape {tuple(maps.shape)}; expected (B, {num_layers} layers, {num_heads} heads, N, N)"
        )
    layout.check(maps, f"{what} maps")
    return maps.float() if maps.dtype in (torch.float16, torch.bfloat16) else maps


class AttentionSimilarity(Metric):
    """Similarity of a model's attention to a reference model's on the same images.

    Metrics (per layer and head, and aggregated; see :mod:`~lightning_convshare.metrics.functional`):
    ``cosine`` (cosine similarity of the maps), ``js`` (Jensen-Shannon divergence, bits), ``cka``
    (linear CKA, queries as examples) and ``cls_spearman`` (rank correlation of the class token's
    attention to the patches; only when both models have a class token).

    Tokens: the class token (if both have one) and the patches; registers are dropped and rows
    renormalised over the kept keys. ``m/head`` pairs head ``h`` with head ``h`` (meaningful when
    one model was derived from the other); ``m/layer`` compares the head-averaged maps, and the
    overall ``m`` is the mean of ``m/layer`` over layers.

    Args:
        num_layers: attention layers ``L`` (both models).
        num_heads: the model's heads ``H``.
        layout: the model's tokens.
        target_layout: the reference's tokens (default: ``layout``); it must have the same patch grid.
        target_num_heads: the reference's heads (default ``H``); if it differs only layer values are computed.
        per_head: compute per-head values (``False``: layer values only, about ``H + 1`` times cheaper).
        kwargs: passed to ``torchmetrics.Metric``.

    States: ``sums`` and ``counts``, ``(k, L, H + 1)`` for the ``k`` metrics in ``names`` (the last column:
    head-averaged maps; ``(k, L, 1)`` with layer values only): per-image values summed over the images
    where they are defined, and those images' number; reduced with ``sum`` across processes.

    Example:
        >>> layout = TokenLayout(grid=(1, 2))
        >>> a = torch.tensor([[1.0, 0.0], [0.5, 0.5]]).expand(3, 1, 1, 2, 2)  # B, L, H, N, N
        >>> metric = AttentionSimilarity(num_layers=1, num_heads=1, layout=layout)
        >>> metric.update(a, a)
        >>> {k: round(v.item(), 4) for k, v in metric.compute().items() if "/" not in k}
        {'cosine': 1.0, 'js': 0.0, 'cka': 1.0}
    """

    is_differentiable = False
    higher_is_better: Optional[bool] = None
    full_state_update = False

    def __init__(
        self,
        num_layers: int,
        num_heads: int,
        layout: TokenLayout,
        target_layout: Optional[TokenLayout] = None,
        target_num_heads: Optional[int] = None,
        per_head: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.layout, self.target_layout = layout, target_layout or layout
        if self.layout.grid != self.target_layout.grid:
            raise GeometryError(
                f"model ({self.layout.describe()}) and reference ({self.target_layout.describe()}) have different "
                "patch grids; give the reference the model's img_size and patch_size"
            )
        self.num_layers, self.num_heads = int(num_layers), int(num_heads)
        self.target_num_heads = int(target_num_heads or num_heads)
        self.per_head = bool(per_head) and self.target_num_heads == self.num_heads
        self.names = similarity_names(self.layout, self.target_layout)
        self._scratch = ScratchBuffers()  # reused CPU temporaries (not a state)
        shape = (len(self.names), self.num_layers, self.num_heads + 1 if self.per_head else 1)
        self.add_state("sums", torch.zeros(shape), dist_reduce_fx="sum")
        self.add_state("counts", torch.zeros(shape), dist_reduce_fx="sum")

    @classmethod
    def from_models(cls, model: nn.Module, reference: nn.Module, **kwargs: Any) -> AttentionSimilarity:
        """Shapes and token layouts read from two timm ViTs with recording attention.

        Raises:
            ConfigError: either model cannot record, or their depths differ.
            GeometryError: their patch grids differ.
        """
        (layers, heads), (ref_layers, ref_heads) = attention_dims(model), attention_dims(reference)
        if layers != ref_layers:
            raise ConfigError(
                f"the model has {layers} attention layers and the reference {ref_layers}; attention is compared "
                "layer by layer, so pick a reference of the same depth"
            )
        return cls(layers, heads, TokenLayout.from_model(model), TokenLayout.from_model(reference), ref_heads,
                   **kwargs)

    def update(self, preds: Maps, target: Maps) -> None:
        """Add a batch: the model's maps and the reference's maps on the same images."""
        p = stack_maps(preds, self.num_layers, self.num_heads, self.layout, "model attention")
        t = stack_maps(target, self.num_layers, self.target_num_heads, self.target_layout, "reference attention")
        if p.shape[0] != t.shape[0]:
            raise GeometryError(f"model maps cover {p.shape[0]} images and reference maps {t.shape[0]}; use the same batch")
        with torch.no_grad():
            for bs, ls in _chunks(p):
                sums, counts = _similarity_update(_batch(p, bs, ls), _batch(t, bs, ls), self.layout, self.target_layout,
                                                  self.per_head, self._scratch)
                _add_to_state(self, "sums", sums, ls)
                _add_to_state(self, "counts", counts, ls)

    def compute(self) -> dict[str, torch.Tensor]:
        """``{m: (), m/layer: (L,), m/head: (L, H)}`` for each metric ``m``."""
        return _similarity_compute(self.names, self.sums, self.counts, self.per_head)


class AttentionStatistics(Metric):
    """Intrinsic properties of one model's attention, comparable across runs.

    Metrics: ``distance`` (mean attention distance in pixels, patch queries and keys),
    ``entropy`` (nats; class-token and patch queries, all keys), ``to_self`` (attention of a patch
    to itself) and ``to_cls`` (attention of a patch to the class token; with a class token only).
    Per head; layer and overall values are means over heads (and layers).

    Args:
        num_layers: attention layers ``L``.
        num_heads: heads ``H``.
        layout: the model's tokens.
        kwargs: passed to ``torchmetrics.Metric``.

    States: ``sums`` ``(k, L, H)`` for the ``k`` metrics in ``names`` (per-image values summed over the
    images) and ``images`` ``()``, reduced with ``sum``.

    Example:
        >>> layout = TokenLayout(grid=(1, 3), patch_size=(4, 4), num_prefix=1, has_cls=True)
        >>> uniform = torch.full((2, 1, 1, 4, 4), 0.25)  # B, L, H, N, N
        >>> metric = AttentionStatistics(num_layers=1, num_heads=1, layout=layout)
        >>> metric.update(uniform)
        >>> {k: round(v.item(), 4) for k, v in metric.compute().items() if "/" not in k}
        {'distance': 3.5556, 'entropy': 1.3863, 'to_self': 0.25, 'to_cls': 0.25}
    """

    is_differentiable = False
    higher_is_better: Optional[bool] = None
    full_state_update = False

    def __init__(self, num_layers: int, num_heads: int, layout: TokenLayout, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.layout, self.num_layers, self.num_heads = layout, int(num_layers), int(num_heads)
        self._scratch = ScratchBuffers()  # reused CPU temporaries (not a state)
        self.names = statistic_names(layout)
        self.add_state("sums", torch.zeros(len(self.names), self.num_layers, self.num_heads), dist_reduce_fx="sum")
        self.add_state("images", torch.zeros(()), dist_reduce_fx="sum")

    @classmethod
    def from_model(cls, model: nn.Module, **kwargs: Any) -> AttentionStatistics:
        """Shapes and token layout read from a timm ViT with recording attention."""
        layers, heads = attention_dims(model)
        return cls(layers, heads, TokenLayout.from_model(model), **kwargs)

    def update(self, maps: Maps) -> None:
        """Add a batch of one model's maps."""
        m = stack_maps(maps, self.num_layers, self.num_heads, self.layout)
        with torch.no_grad():
            for bs, ls in _chunks(m):
                sums, _ = _statistics_update(_batch(m, bs, ls), self.layout, self._scratch)
                _add_to_state(self, "sums", sums, ls)
            _add_to_state(self, "images", m.shape[0])

    def compute(self) -> dict[str, torch.Tensor]:
        """``{m: (), m/layer: (L,), m/head: (L, H)}`` for each metric ``m``."""
        return _statistics_compute(self.names, self.sums, self.images)
