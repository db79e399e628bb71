"""Layer surgery on timm Vision Transformers: the variant registry and ``apply_surgery``.

A variant is a function ``variant(model, **options) -> list[ReplacedLayer]`` that edits a timm
``VisionTransformer`` in place. Its keyword arguments *are* its options: a config's keys are
checked against them, so a misspelt option fails with the list of valid ones. Registering a
new variant is a decorated function in :mod:`lightning_convshare.surgery.variants`.
"""
from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..errors import ConfigError
from ..layers import Attention
from ..registry import Registry

__all__ = [
    "VARIANTS",
    "ROLES",
    "ReplacedLayer",
    "SurgeryReport",
    "apply_surgery",
    "check_supported",
    "count_params",
    "register_variant",
    "replace_module",
    "selected_blocks",
    "swap_attention",
    "variant_options",
]

VARIANTS: Registry[Callable[..., list[ReplacedLayer]]] = Registry("surgery variant")
#: The four linear layers of a ViT block, by role.
ROLES = {"attn": ("qkv", "proj"), "mlp": ("fc1", "fc2")}
SUPPORTED = "timm VisionTransformer models (vit_*, deit_*, deit3_*, with class token, registers or qk_norm)"


def register_variant(name: str) -> Callable:
    """Decorator registering a surgery variant function under ``name``."""
    return VARIANTS.register(name)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass
class ReplacedLayer:
    """One edit made by a variant."""

    name: str
    role: str
    before: str
    after: str
    params_before: int
    params_after: int


@dataclass
class SurgeryReport:
    """What a surgery variant replaced, with parameter counts before and after."""

    variant: str
    options: dict[str, Any]
    layers: list[ReplacedLayer] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def rows(self) -> list[tuple[str, str, str, str, str]]:
        """Table rows ``(layer, role, before, after, params before -> after)``."""
        return [
            (r.name, r.role, r.before, r.after, f"{r.params_before:,} -> {r.params_after:,}") for r in self.layers
        ]

    def __str__(self) -> str:
        head = (
            f"surgery '{self.variant}': {len(self.layers)} layers replaced, "
            f"params {self.params_before:,} -> {self.params_after:,}"
        )
        width = max((len(r.name) for r in self.layers), default=0)
        return "\n".join([head] + [f"  {r.name:<{width}}  {r.after}" for r in self.layers])


def check_supported(model: nn.Module) -> None:
    """Raise a clear error unless ``model`` is a timm ViT whose blocks surgery understands."""
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise ConfigError(
            f"layer surgery supports {SUPPORTED}; got {type(model).__name__}. "
            "Pick a ViT, e.g. model.name=vit_tiny_patch16_224 or deit_tiny_patch16_224"
        )
    for i, blk in enumerate(model.blocks):
        attn, mlp = getattr(blk, "attn", None), getattr(blk, "mlp", None)
        if not hasattr(attn, "qkv") or not isinstance(getattr(mlp, "fc1", None), nn.Module):
            raise ConfigError(
                f"block {i} of {type(model).__name__} has {type(attn).__name__}/{type(mlp).__name__}; "
                f"surgery needs timm's fused-qkv Attention and an fc1/fc2 Mlp ({SUPPORTED})"
            )


def selected_blocks(model: nn.Module, blocks: Sequence[int] | None) -> Iterator[tuple[int, nn.Module]]:
    """Yield ``(index, block)`` for the selected blocks; ``None`` selects all, negatives count from the end."""
    depth = len(model.blocks)
    if blocks is None:
        idx = list(range(depth))
    else:
        bad = [b for b in blocks if not -depth <= int(b) < depth]
        if bad:
            raise ConfigError(f"surgery.blocks {list(blocks)}: {bad} out of range for a {depth}-block model")
        idx = sorted({int(b) % depth for b in blocks})
    for i in idx:
        yield i, model.blocks[i]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Replace the submodule at dotted path ``name``; the new one goes to the old one's device."""
    old = model.get_submodule(name)
    ref = next(old.parameters(), None)
    if ref is not None:
        new = new.to(device=ref.device)
    model.set_submodule(name, new)
    return old


def swap_attention(
    model: nn.Module,
    factory: Callable[[nn.Module], Attention] | None = None,
    blocks: Sequence[int] | None = None,
    label: str = "Attention (records on demand)",
) -> list[ReplacedLayer]:
    """Swap block attention modules for ours.

    Args:
        model: a timm ViT.
        factory: ``factory(old_attention) -> new attention``; ``None`` wraps timm's ``Attention`` in ours
            (same submodules, recording on demand) and leaves modules that are ours already.
        blocks: selected blocks (see :func:`selected_blocks`); ``None`` means all.
        label: how the report describes the new module.
    """
    out = []
    for i, blk in selected_blocks(model, blocks):
        if factory is None and isinstance(blk.attn, Attention):
            continue
        name = f"blocks.{i}.attn"
        old = blk.attn
        new = (factory or Attention.from_timm)(old)
        replace_module(model, name, new)
        out.append(ReplacedLayer(name, "attn", type(old).__name__, label, count_params(old), count_params(new)))
    return out


def variant_options(name: str) -> dict[str, Any]:
    """Options of a variant with their defaults."""
    sig = inspect.signature(VARIANTS.get(name))
    return {k: p.default for k, p in list(sig.parameters.items())[1:]}


def _plain(value: Any) -> Any:
    """Config containers (e.g. OmegaConf) -> dicts and lists, so variants see plain Python."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(v) for v in value]
    return value


def apply_surgery(model: nn.Module, cfg: Mapping[str, Any] | str) -> SurgeryReport:
    """Apply the variant named by ``cfg["name"]`` with the remaining keys as its options.

    Args:
        model: a timm ``VisionTransformer``; edited in place.
        cfg: ``{"name": "convshare", "padding": "same", ...}`` or just the variant name.

    Returns:
        A :class:`SurgeryReport`. The global random state is the same afterwards as before.

    Raises:
        UnknownNameError: unknown variant (lists the registered ones).
        ConfigError: unsupported model, or options the variant does not take.
        GeometryError: a ConvShare layer cannot be built with the requested geometry.
    """
    options = {"name": cfg} if isinstance(cfg, str) else _plain(cfg)
    name = options.pop("name", None)
    if name is None:
        raise ConfigError(f"surgery config needs a 'name' (one of {VARIANTS.names()})")
    fn = VARIANTS.get(name)
    accepted = variant_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        hints = {k: difflib.get_close_matches(k, accepted, n=1) for k in unknown}
        said = ", ".join(f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in hints.items())
        raise ConfigError(f"surgery variant {name!r} does not take {said}; its options are {sorted(accepted)}")
    check_supported(model)
    before = count_params(model)
    # fresh kernels draw random numbers; forking keeps the caller's random stream (data order,
    # augmentation, dropout) identical to a run without surgery, so variants compare like for like
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        layers = fn(model, **options)
    return SurgeryReport(name, {**accepted, **options}, layers, before, count_params(model))
