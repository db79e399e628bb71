"""How a new ConvShare layer's kernels are initialised from the linear layer it replaces.

``init(layer, linear) -> None`` functions in one registry, chosen by ``surgery.init``.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..layers import ConvShareLinear
from ..registry import Registry

__all__ = ["LAYER_INITS", "register_init"]

LAYER_INITS: Registry[Callable[[ConvShareLinear, nn.Linear], None]] = Registry("layer init")


def register_init(name: str) -> Callable:
    """Decorator registering ``fn(layer, linear)`` under ``name``."""
    return LAYER_INITS.register(name)


@register_init("transfer")
def _transfer(layer: ConvShareLinear, linear: nn.Linear) -> None:
    """Exact copy where one exists (whole-map valid kernels, biases); fresh kernels otherwise."""
    layer.copy_linear_(linear)


@register_init("random")
def _random(layer: ConvShareLinear, linear: nn.Linear) -> None:
    """Keep the fresh init of ``ConvShareLinear.reset_parameters`` (nothing copied)."""
