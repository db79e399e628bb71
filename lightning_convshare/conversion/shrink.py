"""Shrinking conversion: a linear layer annealed into its small-kernel ConvShare layer (plain torch).

A ConvShare layer computes ``y = x @ M(w).T + b`` where ``M(w)`` (``D_out x D_in``) is the matrix of its
convolution (:func:`~lightning_convshare.surgery.init.conv_matrix`): row ``o = i * P + p`` is kernel ``i``
placed at output position ``p``, zero outside that position's ``k x k`` window. A trained linear layer ``W``
is such a matrix only for whole-map valid kernels; a ``k x k`` bank holds a few dozen of its thousands of
numbers, so no conversion keeps the layer's function (least squares keeps almost nothing).

:class:`ShrinkingLayer` never leaves a working layer: it starts as the linear layer and ends as the
ConvShare layer, computing in between

``y = (1 - blend) * (x @ (mask(radius) * V).T + b_V) + blend * conv(x)``,  i.e. the linear map
``W_eff = (1 - blend) * mask(radius) * V + blend * M(w)``, ``b_eff = (1 - blend) * b_V + blend * b_w``

* ``V, b_V``: the trainable linear layer (initialised to the ViT's, so the network starts as the ViT:
  same logits);
* ``mask(radius)[o, d] = clamp(radius + 1 - dist(o, d), 0, 1)`` with ``dist`` the Chebyshev distance (in
  pixels of the ``h x w`` map) from input pixel ``d`` to output ``o``'s target window: at the largest
  distance every weight counts, at ``radius = 0`` only those inside the window. The support of every
  output's weights shrinks ring by ring from the whole map to its ``k x k`` window (the linear layer
  becomes a locally connected one);
* ``w, b_w``: the ConvShare layer's own shared kernels and bias, trained all along (initialised by the
  surgery's ``init``, e.g. the least-squares fit); ``blend`` hands the output over to them.

The ConvShare part runs through the layer's own forward (its conv backend, optical ones included). At
``blend = 1`` the layer *is* the target ConvShare layer, and :meth:`ShrinkingLayer.convert_` marks it so
for good; fine-tuning goes on in the target architecture. :class:`ShrinkSchedule` says when
the support shrinks and the blend moves, as fractions of the fine-tune.

Tying the per-output kernels into the shared ones instead (``blend * Pi(V)`` with ``Pi`` the
least-squares projection of ``V``, so no second set of kernels) was tried and is not offered: the
network collapsed to chance as the tie closed and recovered more slowly than a one-shot conversion
(docs/finetune.md).
"""
from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..layers import ConvGeometry, ConvShareLinear
from ..surgery import SurgeryReport
from ..surgery.init import conv_matrix
from .progressive import CONV_ROLES, ProgressiveLayer

__all__ = ["EASES", "ShrinkSchedule", "ShrinkingLayer", "as_target", "make_shrinking", "shrink_metrics", "shrink_state",
           "shrinking_layers", "tap_index", "window_distance"]

log = logging.getLogger(__name__)


def _cosine(u: float) -> float:
    return 0.5 - 0.5 * math.cos(math.pi * u)


#: how an anneal moves from 0 to 1 over its interval
EASES = {"linear": lambda u: u, "cosine": _cosine}
_KEYS = ("support", "blend", "ease")


def _interval(value: Any, key: str) -> tuple[float, float]:
    try:
        start, end = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"distill.shrink.{key} must be [start, end] (fractions of the fine-tune), got {value!r}") from None
    if not 0.0 <= start <= end <= 1.0:
        raise ConfigError(f"distill.shrink.{key} = [{start}, {end}] must satisfy 0 <= start <= end <= 1")
    return start, end


@dataclass(frozen=True)
class ShrinkSchedule:
    """When the support shrinks and the output is handed to the ConvShare layer, as fractions
    ``[start, end]`` of the fine-tune's optimiser steps.

    Attributes:
        support: the linear weights' support falls from the whole map to each output's ``k x k`` window.
        blend: the share of the ConvShare layer in the output rises from 0 to 1; its end ends the
            schedule (every layer is its ConvShare layer from then on).
        ease: ``cosine`` (slow at both ends) or ``linear``.
    """

    support: tuple[float, float] = (0.0, 0.3)
    blend: tuple[float, float] = (0.0, 0.5)
    ease: str = "cosine"

    @classmethod
    def create(cls, options: Mapping[str, Any]) -> ShrinkSchedule:
        """Checked construction from the ``distill.shrink`` options (``support``, ``blend``, ``ease``).

        Raises:
            ConfigError: unknown options, an interval outside ``0 <= start <= end <= 1``, a support that
                ends after the blend, or an unknown ease.
        """
        defaults = cls()
        unknown = sorted(set(options) - set(_KEYS))
        if unknown:
            raise ConfigError(f"unknown distill.shrink options {unknown}; the options are {sorted(_KEYS)}")
        ease = options.get("ease", defaults.ease)
        if ease not in EASES:
            raise ConfigError(f"distill.shrink.ease {ease!r} is not one of {list(EASES)}")
        support = _interval(options.get("support", defaults.support), "support")
        blend = _interval(options.get("blend", defaults.blend), "blend")
        if support[1] > blend[1]:
            raise ConfigError(f"distill.shrink.support must end by the end of the blend ({blend[1]}), got {list(support)}: "
                              "after the blend the linear weights no longer count")
        return cls(support, blend, ease)

    @property
    def end(self) -> float:
        """Fraction of the fine-tune from which every layer is its ConvShare layer."""
        return self.blend[1]

    def _fraction(self, interval: tuple[float, float], progress: float) -> float:
        start, end = interval
        if progress >= end:
            return 1.0
        if progress <= start:
            return 0.0
        return EASES[self.ease]((progress - start) / (end - start))

    def at(self, progress: float) -> tuple[float, float]:
        """``(shrunk, blend)`` at ``progress`` in [0, 1]: how far the support has shrunk (0: the whole map,
        1: the target window) and the ConvShare layer's share of the output."""
        return self._fraction(self.support, progress), self._fraction(self.blend, progress)


def tap_index(geometry: ConvGeometry) -> torch.Tensor:
    """Which kernel tap every entry of the layer's conv matrix holds: ``(D_out, D_in)`` longs.

    Entry ``[o, d]`` is ``i * kh * kw + a * kw + b`` when input pixel ``d`` meets tap ``(a, b)`` of kernel
    ``i`` at output ``o``'s position, and ``-1`` where the conv matrix is zero. Computed with the layer's
    own :func:`conv_matrix` on a bank whose taps are numbered, so padding, stride and cropping are the
    layer's by construction.
    """
    g = geometry
    taps = g.num_kernels * g.kernel[0] * g.kernel[1]
    numbered = torch.arange(1, taps + 1, dtype=torch.float64).reshape(g.num_kernels, *g.kernel)
    return conv_matrix(numbered, g).round().long() - 1  # D_out, D_in


def window_distance(geometry: ConvGeometry) -> torch.Tensor:
    """Chebyshev distance in pixels from every input pixel to the window of every output: ``(D_out, D_in)``.

    0 inside the ``kh x kw`` window that output ``o`` (position ``o % P`` of its kernel) reads, 1 on the
    ring around it, and so on; for same padding the window may extend over the zero padding.
    """
    g = geometry
    (h, w), (kh, kw), (sh, sw), (_, ow) = g.map_shape, g.kernel, g.stride, g.out_shape
    top, _, left, _ = g.pad
    p = torch.arange(g.out_features) % g.positions
    r0, c0 = (p // ow) * sh - top, (p % ow) * sw - left  # D_out: window's top-left pixel
    rows, cols = torch.arange(h), torch.arange(w)
    dy = torch.clamp(torch.maximum(r0[:, None] - rows, rows - (r0[:, None] + kh - 1)), min=0)  # D_out, h
    dx = torch.clamp(torch.maximum(c0[:, None] - cols, cols - (c0[:, None] + kw - 1)), min=0)  # D_out, w
    return torch.maximum(dy[:, :, None], dx[:, None, :]).flatten(1).float()  # D_out, h*w


class ShrinkingLayer(ProgressiveLayer):
    """A linear layer annealed into its ConvShare layer (see the module docstring).

    Until :meth:`convert_` the forward is ``F.linear(x, W_eff, b_eff)``; :meth:`set_state` moves the
    support radius and the blend. ``convert_`` switches to the ConvShare layer's own forward.

    Args:
        linear: the linear layer it starts as (trainable: ``V, b_V``).
        conv: the target ConvShare layer (shared kernels, already initialised: ``w, b_w``).

    Raises:
        ConfigError: per-token kernel banks (``shared: false``), which no single matrix describes.
    """

    def __init__(self, linear: nn.Linear, conv: ConvShareLinear) -> None:
        if not conv.shared:
            raise ConfigError(f"{conv.name}: distill.shrink needs shared kernels (surgery.shared=true)")
        super().__init__(linear, conv, init="shrink")
        g = conv.geometry
        index = tap_index(g)
        taps = g.num_kernels * g.kernel[0] * g.kernel[1]
        self.register_buffer("index", torch.where(index < 0, taps, index), persistent=False)  # -1 -> a zero slot
        self.register_buffer("inside", index >= 0, persistent=False)
        self.register_buffer("distance", window_distance(g), persistent=False)
        self.max_radius = float(self.distance.max())
        self.radius, self.blend = self.max_radius, 0.0
        self.target_only = False  # as_target(): compute with the ConvShare layer alone
        self.to(linear.weight.device)

    def set_state(self, shrunk: float, blend: float) -> None:
        """Support shrunk by ``shrunk`` in [0, 1] (0: the whole map, 1: the target window); ConvShare share ``blend``."""
        self.radius, self.blend = self.max_radius * (1.0 - float(shrunk)), float(blend)

    @property
    def support(self) -> float:
        """Side in pixels of the linear weights' support: the map's at the start, the kernel's at the end."""
        return min(self.conv.geometry.kernel[0] + 2 * self.radius, float(max(self.conv.geometry.padded_shape)))

    def conv_weight(self) -> torch.Tensor:
        """``M(w)``, the ConvShare layer's matrix ``(D_out, D_in)`` (a differentiable gather of its kernels)."""
        return F.pad(self.conv.weight.flatten(), (0, 1))[self.index]

    def mask(self) -> torch.Tensor:
        """``clamp(radius + 1 - distance, 0, 1)``: 1 inside the current support, 0 beyond it."""
        return (self.radius + 1.0 - self.distance).clamp(0.0, 1.0)

    def linear_part(self) -> torch.Tensor:
        """``mask(radius) * V``."""
        v = self.linear.weight
        return v if self.radius >= self.max_radius else v * self.mask()

    def effective(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(W_eff, b_eff)``, what the layer applies now as one linear map (exactly so with the electronic
        ``direct`` backend; the forward runs the ConvShare part through the layer's own backend)."""
        a = self.blend
        if a <= 0.0:
            return self.linear_part(), self.linear.bias
        weight = (1.0 - a) * self.linear_part() + a * self.conv_weight()
        if self.linear.bias is None or self.conv.bias is None:
            return weight, self.linear.bias if self.conv.bias is None else self.conv.bias
        return weight, (1.0 - a) * self.linear.bias + a * self.conv.bias

    @torch.no_grad()
    def gaps(self) -> dict[str, float]:
        """How far the layer is from its ConvShare layer, relative to ``||W_eff||``: ``outside`` (weights
        outside the target windows) and ``linear`` (the linear weights' part of ``W_eff``)."""
        if self.converted:
            return {"outside": 0.0, "linear": 0.0}
        w, _ = self.effective()
        norm = w.norm().clamp_min(1e-12)
        return {"outside": float((w * ~self.inside).norm() / norm),
                "linear": float((1.0 - self.blend) * self.linear_part().norm() / norm)}

    @torch.no_grad()
    def convert_(self) -> None:
        """Become the ConvShare layer (exactly what the layer computes at ``blend = 1``)."""
        self.radius, self.blend, self.converted = 0.0, 1.0, True

    def export_state(self) -> dict[str, torch.Tensor]:
        """The layer as it computes now: ``{weight, bias}`` of a linear layer (``W_eff, b_eff``) or its ConvShare layer's."""
        if self.converted:
            return super().export_state()
        weight, bias = self.effective()
        return {"weight": weight.detach()} | ({} if bias is None else {"bias": bias.detach()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.blend
        if self.converted or self.target_only or a >= 1.0:
            return self.conv(x)
        y = F.linear(x, self.linear_part(), self.linear.bias)
        return y if a <= 0.0 else torch.lerp(y, self.conv(x), a)  # (1 - a) * linear + a * ConvShare (its backend)

    def extra_repr(self) -> str:
        return f"converted={self.converted}, support={self.support:.2f}px, blend={self.blend:.3f}"


def shrinking_layers(net: nn.Module) -> dict[str, ShrinkingLayer]:
    """Every :class:`ShrinkingLayer` of ``net`` by name."""
    return {n: m for n, m in net.named_modules() if isinstance(m, ShrinkingLayer)}


def make_shrinking(net: nn.Module, linear_source: nn.Module, report: SurgeryReport) -> list[str]:
    """Put every converted layer of ``net`` back in linear form, as a :class:`ShrinkingLayer` of its ConvShare layer.

    Args:
        net: the converted network (edited in place; its ConvShare layers keep their initialised kernels).
        linear_source: the unconverted network whose linear layers the student starts from (copied, trainable).
        report: the surgery report of ``net`` (which layers were converted).

    Returns:
        The names of the wrapped layers.

    Raises:
        ConfigError: the surgery converted no layers, or converted them with per-token banks.
    """
    names = [r.name for r in report.layers if r.role in CONV_ROLES]
    if not names:
        raise ConfigError("distill.shrink needs a surgery that converts layers (e.g. surgery=convshare)")
    for name in names:
        linear = copy.deepcopy(linear_source.get_submodule(name)).requires_grad_(True)
        net.set_submodule(name, ShrinkingLayer(linear, net.get_submodule(name)))
    return names


def shrink_state(net: nn.Module, schedule: ShrinkSchedule, progress: float) -> list[str]:
    """Set every shrinking layer's support and blend for ``progress`` in [0, 1]; convert them all once the
    schedule has ended. Returns the names of the layers converted by this call."""
    shrunk, blend = schedule.at(progress)
    done = []
    for name, layer in shrinking_layers(net).items():
        if layer.converted:
            continue
        if progress >= schedule.end:
            layer.convert_()
            done.append(name)
        else:
            layer.set_state(shrunk, blend)
    if done:
        log.info("shrink schedule ended at %.3f of the fine-tune: %d layers are ConvShare layers now", progress, len(done))
    return done


@contextmanager
def as_target(net: nn.Module) -> Iterator[nn.Module]:
    """Within the block every shrinking layer computes with its ConvShare layer alone: ``net`` is the target
    architecture with the kernels it has now (what converting now would give)."""
    layers = list(shrinking_layers(net).values())
    for layer in layers:
        layer.target_only = True
    try:
        yield net
    finally:
        for layer in layers:
            layer.target_only = False


def shrink_metrics(net: nn.Module) -> dict[str, float]:
    """Means over the shrinking layers of ``support`` (px), ``blend``, ``outside`` and ``linear`` (see
    :meth:`ShrinkingLayer.gaps`); empty without shrinking layers."""
    layers = list(shrinking_layers(net).values())
    if not layers:
        return {}
    gaps = [layer.gaps() for layer in layers]
    n = len(layers)
    return {"support": sum(m.support for m in layers) / n, "blend": sum(m.blend for m in layers) / n,
            "outside": sum(g["outside"] for g in gaps) / n, "linear": sum(g["linear"] for g in gaps) / n}
