"""``wave``: a wave-optics reference of the 4f system, through ``torchoptics``.

The SLM plane is a complex field (amplitude = encoded values, flat phase) propagated with the
angular-spectrum method through free space ``f`` -> lens -> ``f`` -> Fourier-plane filter -> ``f``
-> lens -> ``f`` onto the camera (``torchoptics.Field.propagate`` and ``torchoptics.elements.Lens``,
which include the lenses' circular apertures). The focal length is chosen for critical sampling,
``lambda f = N dx^2``, so the Fourier plane is sampled exactly like the plane's DFT and the filter
is the kernel's conjugate DFT (a matched filter) on the ``N x N`` grid, centred on the axis. The
camera sees the correlation *inverted* (``x -> -x``: two Fourier transforms), which the read-back
undoes, and measures intensity only (the field carries a phase ramp from the half-pixel grid
centring), so this backend supports ``readout="intensity"`` only.

Conditions under which it matches ``fourier`` (measured in ``tests/optics/test_wave.py`` and
``bench/wave.py``): the simulation grid is ``embed`` times the occupied plane (content in the
central part) and the lenses ``lens_aperture`` times the grid, so the lens apertures neither
vignette nor band-limit the content. At critical sampling with lenses only as large as the grid,
light from off-axis pixels at high angles misses the lenses; random (full-band) maps then differ
by tens of percent, while smooth maps still agree to ~1e-3.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .fourier import FourierConv
from .layout import GuardSpec
from .signed import SignedEncoding

__all__ = ["WaveConv", "four_f_correlate"]


def _even(n: float) -> int:
    n = int(round(n))
    return n + (n % 2)


def four_f_correlate(
    planes: torch.Tensor,
    filters: torch.Tensor,
    wavelength: float = 532e-9,
    pixel_pitch: float = 8e-6,
    lens_aperture: float = 2.0,
) -> torch.Tensor:
    """Propagate input fields through a 4f system with the given Fourier-plane filters.

    Args:
        planes: ``(..., N, N)`` complex input fields (``N`` even).
        filters: ``(..., N, N)`` complex filter transmissions, centred (``fftshift`` layout),
            broadcastable against ``planes``.
        wavelength: metres.
        pixel_pitch: SLM pixel pitch in metres (the camera and filter share it at critical sampling).
        lens_aperture: lens grid (hence aperture diameter) relative to the ``N``-pixel plane.

    Returns:
        The camera field, ``(..., N, N)``, with the 4f inversion undone.
    """
    from torchoptics import Field
    from torchoptics.elements import Lens

    N = planes.shape[-1]
    if planes.shape[-2] != N or N % 2:
        raise ValueError(f"four_f_correlate needs square planes with an even side, got {tuple(planes.shape[-2:])}")
    f = N * pixel_pitch**2 / wavelength  # critical sampling: the Fourier plane has the SLM's pitch
    M = max(N, _even(lens_aperture * N))
    lens1 = Lens((M, M), f, z=f, spacing=pixel_pitch).to(planes.device)
    lens2 = Lens((M, M), f, z=3 * f, spacing=pixel_pitch).to(planes.device)
    field = Field(planes, wavelength=wavelength, spacing=pixel_pitch, z=0).to(planes.device)
    field = lens1(field.propagate((M, M), f, pixel_pitch))
    field = field.propagate((N, N), 2 * f, pixel_pitch)  # Fourier plane: the filter's aperture
    field = field.modulate(filters)
    field = lens2(field.propagate((M, M), 3 * f, pixel_pitch))
    field = field.propagate((N, N), 4 * f, pixel_pitch)
    return torch.flip(field.data, dims=(-2, -1))  # the 4f system images with inversion


class WaveConv(FourierConv):
    """Wave-optics reference backend (slow; for validation): ``fourier``'s tiling, detection and
    noise, with the camera field from a physical propagation (see the module docstring).

    Args:
        slm_resolution: SLM pixels.
        guard: ``"auto"`` or pixels between tiles.
        aperture: optional extra band-limit folded into the kernels (as in the other backends).
        aperture_halo: its PSF radius.
        noise: noise stages.
        seed: noise seed.
        memory_budget_mb: chunk budget (the propagation holds several complex copies per chunk).
        wavelength: metres.
        pixel_pitch: metres.
        embed: simulation grid relative to the occupied plane (>= 1).
        lens_aperture: lens size relative to the simulation grid.
        device: a 4f device (preset name or description; its filter is realised on the propagation grid).
        encoding: signed-value encoding (the intensity readout's passes).
    """

    def __init__(
        self,
        slm_resolution: int | Sequence[int] | None = None,
        guard: GuardSpec = "auto",
        aperture: Optional[float] = None,
        aperture_halo: Optional[int] = None,
        noise: Sequence[Any] | Mapping[str, Any] | None = (),
        seed: int = 0,
        memory_budget_mb: float = 512,
        wavelength: float = 532e-9,
        pixel_pitch: float = 8e-6,
        embed: float = 2.0,
        lens_aperture: float = 2.0,
        device: Any = None,
        encoding: str | SignedEncoding = "pseudo_negativity",
    ) -> None:
        super().__init__(slm_resolution, guard, "intensity", aperture, aperture_halo, noise, seed, memory_budget_mb, False,
                         device=device, encoding=encoding)
        if embed < 1 or lens_aperture < 1:
            raise ConfigError(f"wave embed={embed} and lens_aperture={lens_aperture} must be >= 1")
        self.wavelength, self.pixel_pitch = float(wavelength), float(pixel_pitch)
        self.embed, self.lens_aperture = float(embed), float(lens_aperture)

    def sim_shape(self, H: int, W: int) -> tuple[int, int]:
        return H, W  # the camera crop; the propagation grid is larger (see camera_field)

    def prepare(self, planes: torch.Tensor, fft: tuple[int, int]) -> torch.Tensor:
        return planes

    def camera_field(self, planes: torch.Tensor, kernels: torch.Tensor, fft: tuple[int, int]) -> torch.Tensor:
        H, W = planes.shape[-2:]
        N = _even(self.embed * max(H, W))
        top, left = (N - H) // 2, (N - W) // 2
        u = F.pad(planes.double(), (left, N - W - left, top, N - H - top)).to(torch.complex128)  # A, G, p, N, N
        kspec = torch.fft.fft2(kernels.double(), s=(N, N))  # G', Bk, mc, N, N
        if self.filter is not None:  # the device's Fourier-plane filter, on the propagation grid
            kspec = self.filter.realise(kspec)
        kspec = kspec.conj()  # matched filter
        filters = torch.fft.fftshift(kspec, dim=(-2, -1))  # centred on the optical axis
        # the content sits at (top, left) of the grid; the correlation of the shifted plane is the
        # shifted correlation, so the camera's window starts at the same offset
        field = four_f_correlate(
            u[:, :, None, None], filters[None, :, :, :, None], self.wavelength, self.pixel_pitch, self.lens_aperture
        )  # A, G, Bk, mc, p, N, N
        camera = field[..., top : top + H, left : left + W]
        return camera.abs().to(planes.dtype)  # intensity is all a camera sees: |field|

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, lambda={self.wavelength:.3g}, pitch={self.pixel_pitch:.3g}, embed={self.embed}"
