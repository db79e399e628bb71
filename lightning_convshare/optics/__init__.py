"""Conv backends for ConvShare layers, resolved from config strings at this one boundary."""
from .backends import CONV_BACKENDS, create_backend, register_backend

__all__ = ["CONV_BACKENDS", "create_backend", "register_backend"]
