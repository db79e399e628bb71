"""Conv backends for ConvShare layers (the electronic reference and the simulated 4f system),
noise stages and the 4f speed model, resolved from config strings at this one boundary."""
from .backends import (
    CONV_BACKENDS,
    backend_spec_for,
    create_backend,
    load_noise_state,
    noise_disabled,
    noise_state,
    physical_backends,
    register_backend,
    reset_noise,
    set_backend,
)
from .fourier import FourierConv
from .layout import PlaneLayout
from .noise import NOISE_STAGES, NoiseStage, create_noise, register_noise
from .optical import OpticalConv
from .physical import PhysicalBackend
from .wave import WaveConv

__all__ = [
    "CONV_BACKENDS",
    "FourierConv",
    "NOISE_STAGES",
    "NoiseStage",
    "OpticalConv",
    "PhysicalBackend",
    "PlaneLayout",
    "WaveConv",
    "backend_spec_for",
    "create_backend",
    "load_noise_state",
    "noise_state",
    "create_noise",
    "noise_disabled",
    "physical_backends",
    "register_backend",
    "register_noise",
    "reset_noise",
    "set_backend",
]
