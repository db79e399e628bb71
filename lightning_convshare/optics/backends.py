"""Registry of conv backends (``direct`` here; the 4f simulations register alongside)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

from ..layers.backend import ConvBackend, DirectConv
from ..registry import Registry

__all__ = ["CONV_BACKENDS", "register_backend", "create_backend"]

CONV_BACKENDS: Registry[Callable[..., ConvBackend]] = Registry("conv backend")


def register_backend(name: str) -> Callable:
    """Decorator registering a :class:`ConvBackend` class (or factory) under ``name``."""
    return CONV_BACKENDS.register(name)


register_backend("direct")(DirectConv)


def create_backend(spec: str | Mapping[str, Any] | None) -> ConvBackend:
    """Build a backend from ``"name"`` or ``{name: ..., **options}`` (``None`` means ``direct``).

    Raises:
        UnknownNameError: for an unknown backend name (lists the available ones).
        ConfigError: when the options do not fit the backend's constructor.
    """
    return CONV_BACKENDS.create("direct" if spec is None else spec)
