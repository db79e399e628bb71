"""The registered surgery variants. A new variant is one decorated function here."""
from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from functools import partial
from typing import Any, Sequence

from torch import nn

from ..errors import ConfigError
from ..layers import CastlingAttention, ConvShareLinear, CvTAttention
from ..optics import backend_spec_for, create_backend
from .core import ROLES, ReplacedLayer, count_params, register_variant, replace_module, selected_blocks, swap_attention
from .init import LAYER_INITS

__all__ = ["vit", "convshare", "castling", "cvt_proj"]


@register_variant("vit")
def vit(model: nn.Module) -> list[ReplacedLayer]:
    """Baseline: keep every ``nn.Linear``; use our attention so it records like the others."""
    return swap_attention(model)


def _roles(targets: Sequence[str]) -> list[str]:
    roles: list[str] = []
    for t in targets:
        if t in ROLES:
            roles += ROLES[t]
        elif any(t in r for r in ROLES.values()):
            roles.append(t)
        else:
            valid = list(ROLES) + [r for rs in ROLES.values() for r in rs]
            raise ConfigError(f"surgery.targets: unknown target {t!r}; use any of {valid}")
    return sorted(set(roles), key=roles.index)


def _layers(block: nn.Module, roles: Sequence[str]) -> list[tuple[str, str]]:
    """``(role, attribute)`` pairs; the ``qkv`` role is three linears in attention with split projections."""
    out = []
    for role in roles:
        split = role == "qkv" and not hasattr(block.attn, "qkv")
        out += [(role, a) for a in ("q", "k", "v")] if split else [(role, role)]
    return out


def _for_role(value: Any, role: str, key: str) -> Any:
    """A setting given once for all layers, or as a per-role mapping ``{qkv: 5, fc2: 9}``."""
    if not isinstance(value, Mapping):
        return value
    all_roles = [r for rs in ROLES.values() for r in rs]
    unknown = sorted(set(value) - set(all_roles))
    if unknown:
        raise ConfigError(f"surgery.{key}: unknown layer roles {unknown}; per-layer keys are {all_roles}")
    if role not in value:
        raise ConfigError(f"surgery.{key} is a per-layer mapping without an entry for {role!r}: {dict(value)}")
    return value[role]


@register_variant("convshare")
def convshare(
    model: nn.Module,
    *,
    targets: Sequence[str] = ("attn", "mlp"),
    padding: str = "valid",
    kernel_size: Any = "full",
    map_shape: Any = None,
    shared: bool = True,
    out_policy: str = "exact",
    blocks: Sequence[int] | None = None,
    init: str = "transfer",
    backend: Any = "direct",
    backend_overrides: Mapping[str, Any] | None = None,
) -> list[ReplacedLayer]:
    """ConvShareViT: q/k/v (timm's fused ``qkv``), ``proj``, ``fc1`` and ``fc2`` become
    :class:`~lightning_convshare.layers.ConvShareLinear`.

    Args:
        targets: ``attn``, ``mlp`` and/or single roles (``qkv``, ``proj``, ``fc1``, ``fc2``).
        padding: ``valid`` or ``same``.
        kernel_size: int, ``full``, ``[kh, kw]`` or a per-role mapping ``{qkv: 5, proj: 5, fc1: 5, fc2: 9}``.
        map_shape: ``None`` (most square) or a per-role mapping of ``[h, w]``.
        shared: one kernel bank for all tokens (ConvShare) or one per token position.
        out_policy: ``exact`` or ``crop`` (see :mod:`lightning_convshare.layers.geometry`).
        blocks: block indices to convert (negatives from the end); ``None`` converts all.
        init: how kernels are initialised from the replaced linear (``LAYER_INITS``).
        backend: conv backend name or ``{name: ..., **options}`` (``conf/optics/``).
        backend_overrides: per-layer backends, ``{fnmatch pattern on layer names: spec}``, e.g.
            ``{"blocks.*.mlp.fc2": {name: fourier}}``; the first matching pattern wins.
    """
    roles = _roles(targets)
    init_fn = LAYER_INITS.get(init)
    num_tokens = model.patch_embed.num_patches + model.num_prefix_tokens
    if not shared and getattr(model, "dynamic_img_size", False):
        raise ConfigError("surgery.shared=false needs a fixed token count; it cannot be used with dynamic_img_size")
    out = swap_attention(model)
    matched: set[str] = set()
    for i, blk in selected_blocks(model, blocks):
        for role, attr in _layers(blk, roles):
            parent = blk.attn if role in ROLES["attn"] else blk.mlp
            linear = getattr(parent, attr)
            if not isinstance(linear, nn.Linear):
                continue  # already converted (e.g. progressive conversion)
            name = f"blocks.{i}.{'attn' if parent is blk.attn else 'mlp'}.{attr}"
            layer_backend = backend_spec_for(name, backend, backend_overrides)
            matched.update(p for p in (backend_overrides or {}) if fnmatch.fnmatchcase(name, p))
            layer = ConvShareLinear(
                linear.in_features, linear.out_features, linear.bias is not None,
                kernel_size=_for_role(kernel_size, role, "kernel_size"), padding=padding,
                map_shape=_for_role(map_shape, role, "map_shape"), shared=shared, num_tokens=num_tokens,
                out_policy=out_policy, backend=create_backend(layer_backend), name=name,
                device=linear.weight.device, dtype=linear.weight.dtype,
            )
            init_fn(layer, linear)
            replace_module(model, name, layer)
            out.append(
                ReplacedLayer(name, role, f"Linear({linear.in_features}, {linear.out_features})",
                              layer.extra_repr(), count_params(linear), count_params(layer))
            )
    unmatched = sorted(set(backend_overrides or {}) - matched)
    if unmatched:
        raise ConfigError(
            f"surgery.backend_overrides patterns {unmatched} match no converted layer; names look like 'blocks.0.mlp.fc2'"
        )
    return out


_convshare = convshare  # the castling/cvt_proj option named `convshare` shadows the function


def _grid(model: nn.Module, variant: str) -> dict[str, Any]:
    if getattr(model, "dynamic_img_size", False):
        raise ConfigError(f"surgery '{variant}' convolves the token grid and needs a fixed image size (no dynamic_img_size)")
    return {"grid_size": tuple(model.patch_embed.grid_size), "num_prefix_tokens": model.num_prefix_tokens}


@register_variant("castling")
def castling(
    model: nn.Module,
    *,
    dw_kernel: int = 3,
    aux_softmax: bool = True,
    mask_init: float = 1.0,
    mask_weight: float = 1e-3,
    mask_decay: Sequence[float] = (0.25, 0.75),
    blocks: Sequence[int] | None = None,
    convshare: Mapping[str, Any] | None = None,
) -> list[ReplacedLayer]:
    """Castling-ViT linear-angular attention (:mod:`lightning_convshare.layers.castling`).

    ``convshare``: options of the ``convshare`` variant to also turn the linears into ConvShare layers.
    """
    factory = partial(CastlingAttention.from_timm, dw_kernel=dw_kernel, aux_softmax=aux_softmax,
                      mask_init=mask_init, mask_weight=mask_weight, mask_decay=tuple(mask_decay),
                      **_grid(model, "castling"))
    out = swap_attention(model) + swap_attention(model, factory, blocks, "CastlingAttention (linear-angular)")
    return out + (_convshare(model, **convshare) if convshare else [])


@register_variant("cvt_proj")
def cvt_proj(
    model: nn.Module,
    *,
    kernel_size: int = 3,
    kv_stride: int = 1,
    norm: bool = True,
    blocks: Sequence[int] | None = None,
    convshare: Mapping[str, Any] | None = None,
) -> list[ReplacedLayer]:
    """CvT convolutional projections for q/k/v (:mod:`lightning_convshare.layers.cvt`).

    ``convshare``: options of the ``convshare`` variant to also turn the linears into ConvShare layers.
    """
    factory = partial(CvTAttention.from_timm, kernel_size=kernel_size, kv_stride=kv_stride, norm=norm,
                      **_grid(model, "cvt_proj"))
    label = f"CvTAttention (dw {kernel_size}x{kernel_size}, kv stride {kv_stride})"
    out = swap_attention(model) + swap_attention(model, factory, blocks, label)
    return out + (_convshare(model, **convshare) if convshare else [])
