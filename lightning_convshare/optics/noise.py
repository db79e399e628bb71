"""Noise and non-ideality stages of the 4f pipeline, one registry.

A stage is an ``nn.Module`` that acts where its effect happens in the hardware:

* ``input(x, gen)``: SLM values of one pass, normalised to the SLM's full scale ``[0, 1]``;
* ``kernel(k, gen)``: Fourier-plane filter values (the kernel), normalised to ``[0, 1]``;
* ``output(I, gen, valid)``: camera intensity in full-scale units (the brightest read pixel of
  the plane is 1). A stage that mixes neighbouring pixels (``context > 0``) is given ``context``
  extra pixels around every read pixel when ``valid`` is true, or a whole camera plane otherwise.

Configs list stages in order, e.g. ``[{name: shot, photons: 1e4}, {name: adc, bits: 8}]``.
``mode`` chooses how random stages sample: ``surrogate`` (differentiable: straight-through
quantisation, reparameterised Gaussian shot noise), ``exact`` (Poisson photon counts) or ``auto``
(surrogate while training, exact in eval). A stage at zero strength (``photons: null``,
``sigma: 0``, ``bits: null``) returns its input unchanged, so noise off is exactly noise-free.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..registry import Registry
from .encoding import gaussian_noise, quantize

__all__ = [
    "NOISE_STAGES",
    "NoiseStage",
    "ShotNoise",
    "ReadNoise",
    "AdcQuantization",
    "SlmQuantization",
    "PsfBlur",
    "create_noise",
    "device_stages",
    "register_noise",
]

NOISE_STAGES: Registry[Callable[..., NoiseStage]] = Registry("noise stage")
MODES = ("auto", "surrogate", "exact")


def register_noise(name: str) -> Callable:
    """Decorator registering a :class:`NoiseStage` class under ``name``."""
    return NOISE_STAGES.register(name)


def _number(value: Any, what: str, cast: Callable = float, allow_none: bool = True) -> Any:
    """YAML reads ``1e4`` as a string; accept it, and say clearly when a value is no number."""
    if value is None and allow_none:
        return None
    try:
        return cast(float(value)) if cast is int else cast(value)
    except (TypeError, ValueError):
        raise ConfigError(f"noise option {what}={value!r} is not a number") from None


class NoiseStage(nn.Module):
    """Base class: identity everywhere; subclasses override where they act.

    Attributes:
        acts_on: the places the stage changes (``input``, ``kernel``, ``output``).
        context: camera pixels of neighbourhood the output stage reads.
        level_param: the option that ``convshare robustness --levels`` sweeps.
    """

    acts_on: frozenset[str] = frozenset()
    context: int = 0
    level_param: str = ""

    def __init__(self, mode: str = "auto") -> None:
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"noise mode {mode!r} is not one of {list(MODES)}")
        self.mode = mode

    @property
    def exact(self) -> bool:
        """Sample exactly (Poisson, hard rounding gradients) rather than with the training surrogate."""
        return self.mode == "exact" or (self.mode == "auto" and not self.training)

    def input(self, x: torch.Tensor, gen: Optional[torch.Generator]) -> torch.Tensor:
        return x

    def kernel(self, k: torch.Tensor, gen: Optional[torch.Generator]) -> torch.Tensor:
        return k

    def output(self, intensity: torch.Tensor, gen: Optional[torch.Generator], valid: bool = False) -> torch.Tensor:
        return intensity

    def gaussian(self) -> Optional[tuple[float, float]]:
        """``(a, b)`` when this stage currently adds ``N(0, a I + b)`` noise (consecutive such stages
        are drawn as one Gaussian with the summed variance), else ``None``."""
        return None

    @property
    def is_identity(self) -> bool:
        """At zero strength the stage returns its input unchanged (the backends then skip it)."""
        return False


@register_noise("shot")
class ShotNoise(NoiseStage):
    """Poisson photon noise at ``photons`` photo-electrons per full-scale pixel.

    Exact: ``Poisson(photons * I) / photons``. Surrogate: ``I + sqrt(I / photons) * N(0, 1)``
    (same mean and variance; differentiable in ``I``). The variance is ``I / photons``:
    proportional to the signal.
    """

    acts_on = frozenset({"output"})
    level_param = "photons"

    def __init__(self, photons: Optional[float] = 1e4, mode: str = "auto") -> None:
        super().__init__(mode)
        self.photons = _number(photons, "photons")
        if self.photons is not None and self.photons <= 0:
            raise ConfigError(f"shot noise photons={self.photons} must be positive (or null for no shot noise)")

    def output(self, intensity, gen, valid=False):
        if self.photons is None or math.isinf(self.photons):
            return intensity
        if self.exact:
            counts = torch.poisson((intensity.detach().clamp_min(0) * self.photons), generator=gen)
            # keep the graph (gradient 1) so a model can be evaluated under torch.enable_grad
            return intensity + (counts / self.photons - intensity).detach()
        return gaussian_noise(intensity, 1.0 / self.photons, 0.0, gen)

    def gaussian(self):
        return None if self.is_identity or self.exact else (1.0 / self.photons, 0.0)

    @property
    def is_identity(self) -> bool:
        return self.photons is None or math.isinf(self.photons)

    def extra_repr(self) -> str:
        return f"photons={self.photons}, mode={self.mode!r}"


@register_noise("read")
class ReadNoise(NoiseStage):
    """Gaussian read noise of ``sigma`` in full-scale units (e.g. 2 e- read noise on a 10k e- full well: 2e-4)."""

    acts_on = frozenset({"output"})
    level_param = "sigma"

    def __init__(self, sigma: float = 1e-3, mode: str = "auto") -> None:
        super().__init__(mode)
        self.sigma = _number(sigma, "sigma", allow_none=False)
        if self.sigma < 0:
            raise ConfigError(f"read noise sigma={self.sigma} must be >= 0")

    def output(self, intensity, gen, valid=False):
        if self.sigma == 0:
            return intensity
        return gaussian_noise(intensity, 0.0, self.sigma**2, gen)

    def gaussian(self):
        return None if self.sigma == 0 else (0.0, self.sigma**2)

    @property
    def is_identity(self) -> bool:
        return self.sigma == 0

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


@register_noise("adc")
class AdcQuantization(NoiseStage):
    """Camera bit depth: clip to ``[0, range]`` and round to ``2**bits`` levels (straight-through).

    Args:
        bits: ADC bit depth (``null``: no quantisation).
        range: the ADC's full range in units of the signal's full scale: 1 when the brightest read
            pixel fills the well, ``full_well / e_fs`` when the light does not (the ADC still spans the
            well, so the signal uses fewer codes; set by a 4f device, see docs/optics.md).
    """

    acts_on = frozenset({"output"})
    level_param = "bits"

    def __init__(self, bits: Optional[int] = 8, range: float = 1.0, mode: str = "auto") -> None:  # noqa: A002
        super().__init__(mode)
        self.bits = _number(bits, "bits", int)
        if self.bits is not None and not 1 <= self.bits <= 24:
            raise ConfigError(f"adc bits={self.bits} must be between 1 and 24 (or null for no quantisation)")
        self.range = _number(range, "range", allow_none=False)
        if not self.range > 0:
            raise ConfigError(f"adc range={self.range} must be positive (the ADC span in full scales, usually >= 1)")

    @property
    def levels(self) -> int:
        """ADC codes (0: no quantisation)."""
        return 0 if self.bits is None else 2**self.bits

    @property
    def is_identity(self) -> bool:
        return self.bits is None

    def output(self, intensity, gen, valid=False):
        if self.bits is None:
            return intensity
        return quantize(intensity, 2**self.bits, 0.0, self.range)

    def extra_repr(self) -> str:
        return f"bits={self.bits}" + (f", range={self.range:.4g}" if self.range != 1 else "")


@register_noise("slm")
class SlmQuantization(NoiseStage):
    """Finite SLM levels: input values and filter (kernel) values quantised (straight-through).

    Args:
        input_levels: levels of the input SLM (256 for 8 bits); ``null`` keeps inputs exact.
        kernel_levels: levels of the kernel values on the filter; ``null`` keeps kernels exact.
        levels: shorthand setting both (what ``convshare robustness --noise slm`` sweeps).
    """

    acts_on = frozenset({"input", "kernel"})
    level_param = "levels"

    def __init__(
        self,
        input_levels: Optional[int] = 256,
        kernel_levels: Optional[int] = 256,
        levels: Optional[int] = None,
        mode: str = "auto",
    ) -> None:
        super().__init__(mode)
        if levels is not None:
            input_levels = kernel_levels = levels
        self.input_levels = _number(input_levels, "input_levels", int)
        self.kernel_levels = _number(kernel_levels, "kernel_levels", int)
        for what, v in (("input_levels", self.input_levels), ("kernel_levels", self.kernel_levels)):
            if v is not None and v < 2:
                raise ConfigError(f"slm {what}={v} must be at least 2 (or null)")

    @staticmethod
    def _q(x: torch.Tensor, levels: Optional[int]) -> torch.Tensor:
        """``levels`` values over ``[0, 1]``, or over ``[-1, 1]`` when the values are signed (a field-readout
        pass); the range is chosen in tensor code (no host sync), the gradient straight-through."""
        if levels is None:
            return x
        with torch.no_grad():
            lo = (x.detach().amin() < 0).to(x.dtype).neg()  # -1 (signed) or 0
            step = (1 - lo) / (levels - 1)
            q = torch.round((x.detach().clamp(min=-1, max=1).maximum(lo) - lo) / step) * step + lo
        return x + (q - x).detach() if x.requires_grad else q

    @property
    def is_identity(self) -> bool:
        return self.input_levels is None and self.kernel_levels is None

    def input(self, x, gen):
        return self._q(x, self.input_levels)

    def kernel(self, k, gen):
        return self._q(k, self.kernel_levels)

    def extra_repr(self) -> str:
        return f"input_levels={self.input_levels}, kernel_levels={self.kernel_levels}"


@register_noise("psf")
class PsfBlur(NoiseStage):
    """Camera-side blur and crosstalk between neighbouring pixels and tiles: a Gaussian PSF on intensity.

    Args:
        sigma: PSF standard deviation in camera pixels (0: none).
        radius: truncation radius (default ``ceil(3 sigma)``); the kernel is normalised to sum 1.
    """

    acts_on = frozenset({"output"})
    level_param = "sigma"

    def __init__(self, sigma: float = 0.5, radius: Optional[int] = None) -> None:
        super().__init__("auto")
        self.sigma = _number(sigma, "sigma", allow_none=False)
        if self.sigma < 0:
            raise ConfigError(f"psf sigma={self.sigma} must be >= 0")
        r = _number(radius, "radius", int)
        self.context = 0 if self.sigma == 0 else (r if r is not None else max(1, math.ceil(3 * self.sigma)))

    @property
    def is_identity(self) -> bool:
        return self.context == 0

    def weights(self, dtype=torch.float32, device=None) -> torch.Tensor:
        r = torch.arange(-self.context, self.context + 1, dtype=torch.float64)
        g = torch.exp(-(r**2) / (2 * self.sigma**2))
        w = g[:, None] * g[None, :]
        return (w / w.sum()).to(dtype=dtype, device=device)

    def output(self, intensity, gen, valid=False):
        if self.context == 0:
            return intensity
        *lead, H, W = intensity.shape
        x = intensity.reshape(-1, 1, H, W)  # K, 1, H, W
        out = F.conv2d(x, self.weights(x.dtype, x.device)[None, None], padding=0 if valid else self.context)
        return out.reshape(*lead, *out.shape[-2:])

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, radius={self.context}"


def device_stages(noise: Any, device: Any = None, efficiency: float = 1.0) -> list[Any]:
    """The stage list with a ``device`` entry expanded into the 4f device's stages in physical units
    (:meth:`~lightning_convshare.optics.device.FourFDevice.noise_stages`).

    A stage named explicitly elsewhere in the list replaces the device's stage of that name, at the
    device's position (``[device, {name: shot, photons: 100}]``: the device's SLM, read and ADC stages
    with 100 photo-electrons of shot noise, in the hardware's order; what ``convshare robustness`` does).

    Raises:
        ConfigError: a ``device`` entry without a device.
    """
    entries = [noise] if isinstance(noise, (str, Mapping)) else list(noise or [])

    def name(e: Any) -> Any:
        return e if isinstance(e, str) else (e.get("name") if isinstance(e, Mapping) else None)

    def is_device(e: Any) -> bool:
        return name(e) == "device" and (isinstance(e, str) or len(e) == 1)

    if not any(is_device(e) for e in entries):
        return entries
    if device is None:
        raise ConfigError("the noise list has a `device` entry (the stages of a 4f device) but no device is set: "
                          "give one, e.g. optics.device=lcos-scmos, or list the stages explicitly")
    derived = device.noise_stages(efficiency)
    explicit = {name(e): e for e in entries if not is_device(e) and name(e) in {d["name"] for d in derived}}
    out: list[Any] = []
    for e in entries:
        if is_device(e):
            out += [explicit.get(d["name"], d) for d in derived]
        elif name(e) not in explicit:
            out.append(e)
    return out


def create_noise(
    spec: Sequence[Any] | Mapping[str, Any] | str | None, device: Any = None, efficiency: float = 1.0
) -> nn.ModuleList:
    """Stages from a config list (``[{name: shot, photons: 1e4}, "adc"]``), a single spec, or ``None``.

    Args:
        spec: the stages in order; a ``device`` entry stands for ``device``'s stages (:func:`device_stages`).
        device: a :class:`~lightning_convshare.optics.device.FourFDevice`, for ``device`` entries.
        efficiency: the Fourier-plane filter's light efficiency (fewer photons reach the camera).

    Raises:
        UnknownNameError: an unknown stage (lists the registered ones).
        ConfigError: options a stage does not take, bad values, a ``device`` entry without a device.
    """
    if spec is None:
        return nn.ModuleList()
    stages = []
    for entry in device_stages(spec, device, efficiency):
        if isinstance(entry, NoiseStage):
            stages.append(entry)
        else:
            stages.append(NOISE_STAGES.create(dict(entry) if isinstance(entry, Mapping) else entry))
    return nn.ModuleList(stages)
