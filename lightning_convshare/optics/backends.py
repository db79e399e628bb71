"""Registry of conv backends and the helpers that put them into models.

``direct`` is the electronic reference; ``fourier`` (literal tiled-plane FFT simulation),
``optical`` (fast physical pipeline for training) and ``wave`` (wave-optics reference through
``torchoptics``) simulate the 4f system. Strings from configs become backends here only.
"""
from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Iterator, Mapping
from typing import Any, Callable, Optional

from torch import nn

from ..errors import ConfigError
from ..layers.backend import ConvBackend, DirectConv
from ..layers.convshare import ConvShareLinear
from ..registry import Registry
from .fourier import FourierConv
from .optical import OpticalConv
from .physical import PhysicalBackend
from .wave import WaveConv

__all__ = [
    "CONV_BACKENDS",
    "backend_spec_for",
    "create_backend",
    "load_noise_state",
    "noise_disabled",
    "noise_state",
    "physical_backends",
    "register_backend",
    "reset_noise",
    "set_backend",
]

CONV_BACKENDS: Registry[Callable[..., ConvBackend]] = Registry("conv backend")


def register_backend(name: str) -> Callable:
    """Decorator registering a :class:`ConvBackend` class (or factory) under ``name``."""
    return CONV_BACKENDS.register(name)


register_backend("direct")(DirectConv)
register_backend("fourier")(FourierConv)
register_backend("optical")(OpticalConv)
register_backend("wave")(WaveConv)


def create_backend(spec: str | Mapping[str, Any] | ConvBackend | None) -> ConvBackend:
    """Build a backend from ``"name"`` or ``{name: ..., **options}`` (``None`` means ``direct``).

    Raises:
        UnknownNameError: for an unknown backend name (lists the available ones).
        ConfigError: when the options do not fit the backend's constructor.
    """
    if isinstance(spec, ConvBackend):
        return spec
    return CONV_BACKENDS.create("direct" if spec is None else spec)


def backend_spec_for(
    name: str, default: Any, overrides: Optional[Mapping[str, Any]] = None
) -> Any:
    """The backend spec of layer ``name``: the first ``overrides`` pattern (fnmatch) that matches, else ``default``."""
    for pattern, spec in (overrides or {}).items():
        if fnmatch.fnmatchcase(name, pattern):
            return spec
    return default


def set_backend(
    model: nn.Module, spec: Any, overrides: Optional[Mapping[str, Any]] = None, *, keep_direct: bool = False
) -> int:
    """Give every ConvShare layer of ``model`` a fresh backend (weights untouched).

    Args:
        model: any model containing :class:`~lightning_convshare.layers.ConvShareLinear` layers.
        spec: backend spec for all layers.
        overrides: ``{fnmatch pattern on layer names: spec}``; the first match wins.
        keep_direct: leave layers whose current backend is ``direct`` alone.

    Returns:
        The number of layers changed.

    Raises:
        ConfigError: when the model has no ConvShare layer, or an override matches none.
    """
    layers = {n: m for n, m in model.named_modules() if isinstance(m, ConvShareLinear)}
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no ConvShare layers to give a conv backend; apply surgery=convshare")
    _check_patterns(overrides, layers)
    changed = 0
    for name, layer in layers.items():
        if keep_direct and isinstance(layer.backend, DirectConv):
            continue
        device = layer.weight.device
        layer.backend = create_backend(backend_spec_for(name, spec, overrides)).to(device)
        changed += 1
    return changed


def _check_patterns(overrides: Optional[Mapping[str, Any]], layers: Mapping[str, Any]) -> None:
    for pattern in overrides or {}:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in layers):
            example = next(iter(layers))
            raise ConfigError(f"backend override pattern {pattern!r} matches no ConvShare layer (names look like {example!r})")


def physical_backends(model: nn.Module) -> Iterator[PhysicalBackend]:
    """Every simulated 4f backend in ``model``."""
    return (m for m in model.modules() if isinstance(m, PhysicalBackend))


@contextlib.contextmanager
def noise_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Switch every noise/non-ideality stage off inside the block (the exact noise-free forward)."""
    backends = list(physical_backends(model))
    previous = [b.noise_enabled for b in backends]
    for b in backends:
        b.noise_enabled = False
    try:
        yield model
    finally:
        for b, p in zip(backends, previous, strict=True):
            b.noise_enabled = p


def reset_noise(model: nn.Module) -> None:
    """Restart every backend's noise stream from its seed."""
    for b in physical_backends(model):
        b.reset_noise()


def noise_state(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The position of every physical backend's noise streams, by module name (for exact resumption)."""
    out: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        if isinstance(module, PhysicalBackend):
            out[name] = {key: gen.get_state() for key, gen in module._generators.items()}
    return out


def load_noise_state(model: nn.Module, state: Mapping[str, Mapping[str, Any]]) -> None:
    """Continue every physical backend's noise streams from :func:`noise_state` (unknown names are ignored)."""
    import torch

    modules = dict(model.named_modules())
    for name, streams in state.items():
        module = modules.get(name)
        if not isinstance(module, PhysicalBackend):
            continue
        module.reset_noise()
        for key, gen_state in streams.items():
            module._generators[key] = torch.Generator(device="cpu")
            module._generators[key].set_state(gen_state)
