"""The Fourier-plane filter: what a real modulator holds in place of the kernel's spectrum.

The ideal 4f filter holds each pass's kernel spectrum ``H(u)`` (conjugated: a matched filter),
normalised to the modulator's range ``|H| <= Hmax``. A real modulator has a modulation and a
number of levels (:class:`~lightning_convshare.optics.device.FilterPlane`); each model below encodes
``h = H / Hmax`` into the values the device can show, quantises them to its levels, and decodes what
the light then sees:

* ``complex`` (an amplitude and a phase modulator in tandem): ``|h|`` quantised to ``levels`` values
  in ``[0, 1]``, ``arg h`` to ``phase_levels`` values in ``[0, 2 pi)``. Light efficiency 1 (the
  reference of the light budget). With both unlimited it is the exact ideal filter.
* ``phase`` (phase-only, e.g. an LCoS): double-phase encoding (Hsueh and Sawchuk, Applied Optics
  17(24):3874, 1978): ``h = (exp(i(phi + theta)) + exp(i(phi - theta))) / 2``, ``theta = arccos |h|``,
  two neighbouring pixels per value (half the filter's resolution along its columns); each phase
  quantised to ``levels`` values. The pair's average reaches the camera; the rest of the light is
  diffracted far off axis (assumed blocked). Light efficiency 1 relative to ``complex``: the useful
  term carries ``|h|^2`` of the light as an absorbing complex filter would.
* ``amplitude`` (amplitude-only, e.g. a DMD): Burckhardt's detour-phase encoding (Applied Optics
  9(8):1949, 1970): ``h = a0 + a1 exp(2 pi i / 3) + a2 exp(4 pi i / 3)`` with ``a_j`` in ``[0, 1]``
  (at most two non-zero), three pixels per value (a third of the resolution along the columns), each
  ``a_j`` quantised to ``levels`` values (2 on a binary DMD). The first diffraction order carries the
  value with field factor ``sinc(1/3) / 3``: light efficiency ``(sinc(1/3) / 3)^2 = 0.076``.

All three quantisers are odd-symmetric, so a Hermitian spectrum (a real kernel's) stays Hermitian and
the realised impulse response stays real: the filter's error becomes a real error kernel spread over
the simulation grid. The backends realise the filter on their grid (``fourier``: the plane's FFT grid;
``optical``: each tile's read window, whose periodic wrap stands in for the neighbouring tiles' light;
docs/optics.md, "The Fourier-plane filter"). Quantisation is straight-through in the backward pass.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from ..errors import ConfigError
from ..registry import Registry

__all__ = ["FILTER_MODULATIONS", "FilterModulation", "create_filter"]

TWO_PI = 2 * math.pi


def _quantize_unit(a: torch.Tensor, levels: Optional[int]) -> torch.Tensor:
    """``a`` in ``[0, 1]`` rounded to ``levels`` equally spaced values (``None``: unchanged)."""
    if levels is None:
        return a
    return torch.round(a.clamp(0, 1) * (levels - 1)) / (levels - 1)


def _quantize_phase(phi: torch.Tensor, levels: Optional[int]) -> torch.Tensor:
    """Phase rounded to the nearest of ``levels`` values ``2 pi j / levels`` (odd-symmetric)."""
    if levels is None:
        return phi
    step = TWO_PI / levels
    return torch.round(phi / step) * step


class FilterModulation:
    """Base class of the filter models (see the module docstring). Values are handled as magnitude
    ``a = |h|`` and phase ``phi = arg h`` and decoded to real and imaginary parts (real arithmetic, so a
    compiled caller fuses it).

    Attributes:
        efficiency: light reaching the camera relative to a lossless complex filter.
        pixels_per_value: filter pixels ``(rows, columns)`` that hold one complex value.
    """

    efficiency: float = 1.0
    pixels_per_value: tuple[int, int] = (1, 1)

    def __init__(self, levels: Optional[int] = None, phase_levels: Optional[int] = None) -> None:
        for what, v in (("levels", levels), ("phase_levels", phase_levels)):
            if v is not None and int(v) < 2:
                raise ConfigError(f"filter {what}={v} must be at least 2 (or null)")
        self.levels = None if levels is None else int(levels)
        self.phase_levels = None if phase_levels is None else int(phase_levels)

    @property
    def ideal(self) -> bool:
        """The exact matched filter (nothing to simulate)."""
        return False

    def device_values(self, a: torch.Tensor, phi: torch.Tensor) -> dict[str, torch.Tensor]:
        """The quantised values the modulator shows for normalised spectrum values ``a exp(i phi)``, ``a <= 1``."""
        raise NotImplementedError

    def decode(self, values: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Real and imaginary parts of the (normalised) transmission the light sees for those values."""
        raise NotImplementedError

    def realise(self, spectrum: torch.Tensor) -> torch.Tensor:
        """The spectrum as this filter realises it, in the units of ``spectrum``.

        Args:
            spectrum: ``(..., H, W')`` complex spectra (full or ``rfft`` half), one filter setting per
                leading index; each is normalised to its own peak magnitude.

        Returns:
            The realised spectra, same shape; straight-through gradient.
        """
        if self.ideal:
            return spectrum
        with torch.no_grad():
            re, im = torch.view_as_real(spectrum.detach()).unbind(-1)
            mag = torch.hypot(re, im)
            peak = mag.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-30)  # ..., 1, 1
            dre, dim = self.decode(self.device_values(mag / peak, torch.atan2(im, re)))
            realised = torch.view_as_complex(torch.stack((dre * peak, dim * peak), dim=-1))
        return spectrum + (realised - spectrum).detach() if spectrum.requires_grad else realised

    def extra_repr(self) -> str:
        lv = "continuous" if self.levels is None else f"{self.levels} levels"
        ph = "" if self.phase_levels is None else f", {self.phase_levels} phase levels"
        return f"{type(self).__name__}({lv}{ph}, efficiency {self.efficiency:.3g})"

    __repr__ = extra_repr


FILTER_MODULATIONS: Registry[Callable[..., FilterModulation]] = Registry("filter modulation")


@FILTER_MODULATIONS.register("complex")
class ComplexFilter(FilterModulation):
    """Amplitude and phase quantised independently (``levels``, ``phase_levels``)."""

    @property
    def ideal(self) -> bool:
        return self.levels is None and self.phase_levels is None

    def device_values(self, a, phi):
        return {"amplitude": _quantize_unit(a, self.levels), "phase": _quantize_phase(phi, self.phase_levels)}

    def decode(self, values):
        a, p = values["amplitude"], values["phase"]
        return a * torch.cos(p), a * torch.sin(p)


@FILTER_MODULATIONS.register("phase")
class PhaseOnlyFilter(FilterModulation):
    """Double-phase encoding, ``levels`` phase levels per pixel."""

    pixels_per_value = (1, 2)

    def __init__(self, levels: Optional[int] = None, phase_levels: Optional[int] = None) -> None:
        if phase_levels is not None:
            raise ConfigError("a phase-only filter has one `levels` (its phase levels), not phase_levels")
        super().__init__(levels)

    def device_values(self, a, phi):
        theta = torch.acos(a.clamp(0, 1))
        return {"phase": torch.stack((_quantize_phase(phi + theta, self.levels), _quantize_phase(phi - theta, self.levels)))}

    def decode(self, values):
        p1, p2 = values["phase"].unbind(0)
        return (torch.cos(p1) + torch.cos(p2)) / 2, (torch.sin(p1) + torch.sin(p2)) / 2


@FILTER_MODULATIONS.register("amplitude")
class AmplitudeOnlyFilter(FilterModulation):
    """Burckhardt's three-component encoding, ``levels`` amplitude levels per pixel."""

    pixels_per_value = (1, 3)
    efficiency = (math.sin(math.pi / 3) / (math.pi / 3) / 3) ** 2

    def __init__(self, levels: Optional[int] = None, phase_levels: Optional[int] = None) -> None:
        if phase_levels is not None:
            raise ConfigError("an amplitude-only filter has one `levels` (its amplitude levels), not phase_levels")
        super().__init__(levels)

    def device_values(self, a, phi):
        parts = []
        for j in range(3):  # a_j = |h| sin(2 pi / 3 - |offset_j|) / sin(2 pi / 3), zero beyond the neighbouring bases
            offset = torch.remainder(phi - j * TWO_PI / 3 + math.pi, TWO_PI) - math.pi  # [-pi, pi)
            parts.append((2 / math.sqrt(3)) * a * torch.sin(TWO_PI / 3 - offset.abs()).clamp_min(0))
        parts = torch.stack(parts)  # 3, ..., H, W'
        # a component reaches 2 / sqrt(3) |h| (a value 30 degrees off a base): the filter is set so that its
        # largest component is the modulator's full amplitude (a uniform attenuation by at most sqrt(3) / 2,
        # which the decode undoes; clipping the components at 1 instead distorted every value above
        # |h| = 0.87 whatever the levels, 1-3% of an offset-encoded 3x3 kernel)
        scale = parts.amax(dim=(-2, -1), keepdim=True).amax(dim=0).clamp_min(1.0)  # ..., 1, 1
        return {"amplitude": _quantize_unit(parts / scale, self.levels), "scale": scale}  # 3, ...

    def decode(self, values):
        a0, a1, a2 = values["amplitude"].unbind(0)  # bases at 0, 120 and 240 degrees
        scale = values.get("scale", 1.0)
        return (a0 - (a1 + a2) / 2) * scale, (math.sqrt(3) / 2) * (a1 - a2) * scale


def create_filter(modulation: str = "complex", levels: Optional[int] = None,
                  phase_levels: Optional[int] = None) -> Optional[FilterModulation]:
    """The filter model of a device's Fourier plane, or ``None`` for the exact ideal filter.

    Raises:
        UnknownNameError: an unknown modulation.
        ConfigError: bad levels.
    """
    model = FILTER_MODULATIONS.get(modulation)(levels=levels, phase_levels=phase_levels)
    return None if model.ideal else model
