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

:func:`realised_kernels` gives the impulse response a filter realises for a bank of kernels on a small
grid; on grids of up to :data:`DFT_MAX_PIXELS` pixels (a digits model's 8x8 token maps) its transforms are
two small matrix products with the DFT matrices instead of FFT calls, whose fixed cost dominates there.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from ..errors import ConfigError
from ..registry import Registry

__all__ = ["DFT_MAX_PIXELS", "FILTER_MODULATIONS", "FilterModulation", "create_filter", "dft_matrices", "realised_kernels"]

TWO_PI = 2 * math.pi
#: grids of up to this many pixels are transformed by DFT-matrix products (:func:`realised_kernels`): at
#: ``H W`` pixels they cost ``~2 (H W)^2`` multiply-adds per kernel, which on a 2-core CPU beat a pair of FFT
#: calls up to 12x12 (one thread, 256 kernels: 67 against 158 us at 8x8, 341 against 440 us at 12x12, 930
#: against 616 us at 16x16); larger grids use the FFT
DFT_MAX_PIXELS = 144


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
            dre, dim = self.realise_parts(*torch.view_as_real(spectrum.detach()).unbind(-1))
            realised = torch.view_as_complex(torch.stack((dre, dim), dim=-1))
        return spectrum + (realised - spectrum).detach() if spectrum.requires_grad else realised

    def realise_parts(self, re: torch.Tensor, im: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`realise` on the real and imaginary parts of the spectra (no gradient)."""
        mag = torch.hypot(re, im)
        peak = mag.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-30)  # ..., 1, 1
        dre, dim = self.decode(self.device_values(mag / peak, torch.atan2(im, re)))
        return dre * peak, dim * peak

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


_DFT: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _build_dft(h: int, w: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    w2 = w // 2 + 1
    y, x = torch.arange(h, device=device).view(h, 1, 1, 1), torch.arange(w, device=device).view(1, w, 1, 1)
    u, v = torch.arange(h, device=device).view(1, 1, h, 1), torch.arange(w2, device=device).view(1, 1, 1, w2)
    # the angle 2 pi (u y / h + v x / w) from its exact integer numerator modulo h w
    theta = ((u * y * w + v * x * h) % (h * w)).to(dtype) * (TWO_PI / (h * w))  # h, w, h, w2
    cos, sin = torch.cos(theta).reshape(h * w, h * w2), torch.sin(theta).reshape(h * w, h * w2)
    # irfft2 keeps the real part of sum_uv c_v X[u, v] exp(+i theta) / (h w): columns 0 and w/2 (even w) once, the
    # others twice (their conjugate halves)
    weight = torch.where((v == 0) | ((v == w // 2) & (w % 2 == 0)), 1.0, 2.0).to(dtype).expand(1, 1, h, w2)
    weight = weight.reshape(1, h * w2) / (h * w)
    forward = torch.cat((cos, -sin), dim=1)  # h w, 2 h w2: [re | im]
    inverse = torch.cat(((cos * weight).t(), (-sin * weight).t()), dim=0)  # 2 h w2, h w
    return forward, inverse


def dft_matrices(h: int, w: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Real matrices of ``rfft2`` and ``irfft2`` on an ``h x w`` grid (``w' = w // 2 + 1``).

    Returns:
        ``(forward (h w, 2 h w'), inverse (2 h w', h w))``: for maps ``k`` ``(M, h, w)``,
        ``[Re X | Im X] = k.reshape(M, h w) @ forward`` (``X = rfft2(k)``, rows ``u``, columns ``v``
        flattened) and ``irfft2(X, s=(h, w)).reshape(M, h w) = [Re X | Im X] @ inverse`` (the imaginary
        parts of the self-conjugate columns are dropped, as ``irfft2`` does).
    """
    device = torch.device(device if device is not None else "cpu")
    if torch.compiler.is_compiling():  # built inside the compiled graph (a few thousand sines: one small kernel)
        return _build_dft(h, w, dtype, device)
    key = (h, w, dtype, device)
    if key not in _DFT:
        _DFT[key] = _build_dft(h, w, dtype, device)
    return _DFT[key]


def realised_kernels(model: FilterModulation, kernels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The impulse response that the filter ``model`` realises for each kernel on a ``size = (H, W)`` grid.

    ``irfft2(model.realise(rfft2(kernels, s=size)), s=size)``: ``(..., kh, kw)`` kernels, zero-padded to
    ``(H, W)``, give ``(..., H, W)`` real impulse responses (wrapping around the grid), with a
    straight-through gradient (to the padded kernels). Grids of up to :data:`DFT_MAX_PIXELS` pixels go
    through :func:`dft_matrices`, larger ones through the FFT; the two agree to float rounding.
    """
    H, W = size
    kh, kw = kernels.shape[-2:]
    if H * W > DFT_MAX_PIXELS:
        return torch.fft.irfft2(model.realise(torch.fft.rfft2(kernels, s=size)), s=size)
    padded = kernels if (kh, kw) == (H, W) else torch.nn.functional.pad(kernels, (0, W - kw, 0, H - kh))
    forward, inverse = dft_matrices(H, W, kernels.dtype, kernels.device)
    w2 = W // 2 + 1
    with torch.no_grad():
        spectrum = (padded.detach().reshape(-1, H * W) @ forward).view(-1, 2, H, w2)  # M, [re, im], H, W'
        dre, dim = model.realise_parts(spectrum[:, 0], spectrum[:, 1])
        realised = (torch.cat((dre, dim), dim=-2).reshape(-1, 2 * H * w2) @ inverse).view(padded.shape)
    return padded + (realised - padded).detach() if padded.requires_grad else realised


def create_filter(modulation: str = "complex", levels: Optional[int] = None,
                  phase_levels: Optional[int] = None) -> Optional[FilterModulation]:
    """The filter model of a device's Fourier plane, or ``None`` for the exact ideal filter.

    Raises:
        UnknownNameError: an unknown modulation.
        ConfigError: bad levels.
    """
    model = FILTER_MODULATIONS.get(modulation)(levels=levels, phase_levels=phase_levels)
    return None if model.ideal else model
