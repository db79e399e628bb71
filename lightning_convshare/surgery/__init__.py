"""Layer surgery: registered variants turn timm ViTs into ConvShare (or baseline) models."""
from . import variants  # noqa: F401  (registers the built-in variants)
from .core import (
    ROLES,
    VARIANTS,
    ReplacedLayer,
    SurgeryReport,
    apply_surgery,
    check_supported,
    register_variant,
    variant_options,
)
from .init import LAYER_INITS, register_init

__all__ = [
    "LAYER_INITS",
    "ROLES",
    "VARIANTS",
    "ReplacedLayer",
    "SurgeryReport",
    "apply_surgery",
    "check_supported",
    "register_init",
    "register_variant",
    "variant_options",
]
