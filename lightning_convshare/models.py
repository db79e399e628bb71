"""``create_backbone``: a timm ViT plus a surgery variant, in one call."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import timm
from torch import nn

from .errors import ConfigError
from .surgery import SurgeryReport, apply_surgery

__all__ = ["Backbone", "create_backbone"]


class Backbone(NamedTuple):
    model: nn.Module
    report: SurgeryReport


def create_backbone(
    name: str,
    variant: Mapping[str, Any] | str = "vit",
    *,
    pretrained: bool = False,
    **timm_kwargs: Any,
) -> Backbone:
    """Create a timm model and apply a surgery variant to it.

    Args:
        name: timm model name, e.g. ``vit_tiny_patch16_224``.
        variant: surgery config (``{"name": "convshare", "padding": "same", ...}``) or a variant name.
        pretrained: load timm's pretrained weights (hub, or ``pretrained_cfg_overlay=dict(file=...)``).
        **timm_kwargs: passed to ``timm.create_model`` (``img_size``, ``embed_dim``, ``num_heads`` ...).

    Returns:
        ``Backbone(model, report)``.

    Raises:
        ConfigError: unknown timm model or arguments timm rejects.
        GeometryError: the surgery cannot build a layer (message lists what would work).
    """
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ConfigError(f"timm has no model {name!r}; similar names: {close or timm.list_models('vit_tiny*')}")
    try:
        model = timm.create_model(name, pretrained=pretrained, **timm_kwargs)
    except (TypeError, AssertionError) as e:  # timm rejects an argument or an inconsistent combination
        raise ConfigError(f"timm.create_model({name!r}, **{timm_kwargs}) failed: {e}") from None
    report = apply_surgery(model, variant)
    return Backbone(model, report)
