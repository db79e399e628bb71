"""``optical``: the fast physical 4f pipeline for (noise-aware) training.

Every effect is applied where it acts (see :mod:`lightning_convshare.optics.physical`): the SLM
encoding and quantisation on the token maps, the filter encoding, quantisation and aperture on
the kernels (folded into an effective kernel), and detection, per-plane full scale, PSF and noise
on the camera. What differs from ``fourier`` is only how the camera field is obtained: instead of
FFTs of whole planes, every tile's *window* (the input pixels that light its read pixels and their
PSF neighbourhood, including any neighbour pixels inside the guard's reach) is correlated with
the kernels by one batched direct convolution, dense-operator matmul or FFT, whichever is cheaper.
Noise-free and with deterministic effects it equals ``fourier`` run with the same options to float
rounding; random stages draw the same statistics (only the read pixels and their neighbourhoods
are simulated, so the draws themselves differ). A device's quantised Fourier-plane filter is realised
on each tile's window grid (its error impulse response wraps around the window, standing in for the
light of neighbouring tiles that ``fourier``'s plane grid carries): the same error statistics as
``fourier``'s, not the same values.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch

from ..errors import ConfigError
from ..layers.backend import DirectConv, auto_impl
from .encoding import group_amax
from .fourier_plane import realised_kernels
from .layout import GuardSpec, PlaneLayout
from .physical import TINY, PhysicalBackend
from .signed import SignedEncoding

__all__ = ["OpticalConv", "correlate_windows"]

IMPLS = ("auto", "conv", "matrix", "fft")


def correlate_windows(windows: torch.Tensor, kernels: torch.Tensor, stride: tuple[int, int], impl: str = "auto") -> torch.Tensor:
    """Valid cross-correlation of every window with a kernel bank.

    Args:
        windows: ``(B, N, H, W)``.
        kernels: ``(M, kh, kw)`` for all windows, or ``(N, M, kh, kw)`` per window column ``N``.
        stride: ``(sh, sw)``.
        impl: ``conv`` / ``matrix`` (see :class:`~lightning_convshare.layers.DirectConv`), ``fft``
            (batched FFT of the windows), or ``auto`` (the package's one rule,
            :func:`~lightning_convshare.layers.backend.auto_impl`, with the FFT as an option).

    Returns:
        ``(B, N, M, oh, ow)``.
    """
    B, N, H, W = windows.shape
    kh, kw = kernels.shape[-2:]
    oh, ow = (H - kh) // stride[0] + 1, (W - kw) // stride[1] + 1
    if impl == "auto":
        impl = auto_impl((H, W), (kh, kw), stride, B * N, fft=True)
    if impl in ("conv", "matrix"):
        return DirectConv(impl)(windows, kernels, stride)
    spec = torch.fft.rfft2(windows)  # B, N, H, W/2+1
    kspec = torch.fft.rfft2(kernels, s=(H, W)).conj()  # [N,] M, H, W/2+1
    if kernels.dim() == 3:
        prod = spec.unsqueeze(2) * kspec  # B, N, M, H, W/2+1
    else:
        prod = spec.unsqueeze(2) * kspec.unsqueeze(0)  # B, N, M, H, W/2+1
    out = torch.fft.irfft2(prod, s=(H, W))  # B, N, M, H, W (circular; valid part does not wrap)
    return out[..., : (oh - 1) * stride[0] + 1 : stride[0], : (ow - 1) * stride[1] + 1 : stride[1]]


class OpticalConv(PhysicalBackend):
    """Fast physical 4f pipeline (see the module docstring).

    Args:
        slm_resolution: SLM pixels, int or ``[H, W]`` (``None``: the device's; sets tiles per plane,
            hence per-plane scales).
        guard: ``"auto"`` (leak-free) or pixels between tiles.
        readout: ``"intensity"`` (default: camera, the encoding's passes) or ``"field"``.
        aperture: pupil band-limit (fraction of Nyquist) or ``null``.
        aperture_halo: PSF truncation radius.
        noise: noise stages in order (``device``: the device's stages).
        seed: noise seed.
        impl: ``auto`` | ``conv`` | ``matrix`` | ``fft`` for the window correlation.
        compile: run the camera of all passes (detection, shot/read noise, ADC, recovery) and their
            recombination as one ``torch.compile`` kernel that draws its Gaussian noise with
            Philox-2x32-10 inside (:mod:`~lightning_convshare.optics.rng`): other draws than eager's
            ``torch.randn``, the same distribution, reproducible from ``seed``. Compiles once per
            process and encoding (seconds; needs a C++ compiler on CPU, Triton on GPU).
        grad: ``ideal`` (default: simulated forward, the noise-free convolution's gradient, a
            backward pass as cheap as ``direct``'s) or ``pathwise`` (through all passes; see
            :class:`~lightning_convshare.optics.physical.PhysicalBackend`).
        device: a 4f device (preset name or description; see :class:`PhysicalBackend`).
        encoding: signed-value encoding (``pseudo_negativity``, ``input_offset``, ``kernel_offset``, ``offset``).
    """

    def __init__(
        self,
        slm_resolution: int | Sequence[int] | None = None,
        guard: GuardSpec = "auto",
        readout: str = "intensity",
        aperture: Optional[float] = None,
        aperture_halo: Optional[int] = None,
        noise: Sequence[Any] | Mapping[str, Any] | None = (),
        seed: int = 0,
        impl: str = "auto",
        compile: bool = False,
        grad: str = "ideal",
        device: Any = None,
        encoding: str | SignedEncoding = "pseudo_negativity",
    ) -> None:
        super().__init__(slm_resolution, guard, readout, aperture, aperture_halo, noise, seed, grad, device, encoding)
        if impl not in IMPLS:
            raise ValueError(f"optical impl {impl!r} is not one of {list(IMPLS)}")
        if not isinstance(compile, bool):
            raise ConfigError(f"optical compile={compile!r} must be true or false")
        self.impl, self.compile = impl, compile

    def field(self, x: torch.Tensor, kernels: torch.Tensor, layout: PlaneLayout) -> torch.Tensor:
        """Camera field of every pass, ``(A, G, T, Bk, m, dh, dw)`` (with the PSF's context when it has one)."""
        A, G, T = x.shape[:3]
        shared = kernels.dim() == 4
        Bk, m = kernels.shape[0], kernels.shape[-3]
        stride = layout.stride if layout.context == 0 else (1, 1)  # a PSF needs the dense neighbourhood
        win = layout.windows(x)  # A, G, T, wh, ww
        wh, ww = win.shape[-2:]
        if shared:
            bank = kernels.reshape(Bk * m, *kernels.shape[-2:])  # Bk*m, kh, kw
            field = self._correlate(win.reshape(A, T, wh, ww), bank, stride)  # A, T, Bk*m, dh, dw
            return field.reshape(A, 1, T, Bk, m, *field.shape[-2:])  # A, 1, T, Bk, m, dh, dw
        bank = kernels.transpose(0, 1).reshape(G, Bk * m, *kernels.shape[-2:])  # N, Bk*m, kh, kw
        windows = win.transpose(1, 2).reshape(A * T, G, wh, ww)  # A*B, N, wh, ww
        field = self._correlate(windows, bank, stride)  # A*B, N, Bk*m, dh, dw
        return field.reshape(A, T, G, Bk, m, *field.shape[-2:]).transpose(1, 2)  # A, N, B, Bk, m, dh, dw

    def _correlate(self, windows: torch.Tensor, kernels: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
        """:func:`correlate_windows`, through the device's Fourier-plane filter when it has one: the
        kernels' spectra on the window grid, realised by the filter model; a real impulse response that
        fills the window (periodic: the read pixels see the whole window, wrapped around)."""
        if self.filter is None:
            return correlate_windows(windows, kernels, stride, self.impl)
        H, W = windows.shape[-2:]
        kh, kw = kernels.shape[-2:]
        if (kh, kw) == (H, W):  # the window is the kernel (whole-map kernels): the realised kernel itself
            return correlate_windows(windows, realised_kernels(self.filter, kernels, (H, W)), stride, self.impl)
        spectrum = self.filter.realise(torch.fft.rfft2(kernels, s=(H, W)))  # [N,] M, H, W/2+1
        oh, ow = (H - kh) // stride[0] + 1, (W - kw) // stride[1] + 1
        spec = torch.fft.rfft2(windows).unsqueeze(2)  # B, N, 1, H, W/2+1
        kspec = spectrum.conj() if kernels.dim() == 3 else spectrum.conj().unsqueeze(0)  # [1, N,] M, H, W/2+1
        out = torch.fft.irfft2(spec * kspec, s=(H, W))  # B, N, M, H, W: circular correlation
        return out[..., : (oh - 1) * stride[0] + 1 : stride[0], : (ow - 1) * stride[1] + 1 : stride[1]]

    def full_scale(self, field: torch.Tensor, layout: PlaneLayout) -> torch.Tensor:
        """Per plane and pass: the brightest read pixel's intensity, broadcastable to the read pixels."""
        ctx, (oh, ow), (sh, sw) = layout.context, layout.out, layout.stride
        read = field[..., ctx : ctx + (oh - 1) * sh + 1 : sh, ctx : ctx + (ow - 1) * sw + 1 : sw] if ctx else field
        # non-negative parts give a non-negative field, unless side lobes (aperture, FFT rounding, filter) enter
        signed = self.aperture is not None or self.impl == "fft" or self.filter is not None
        peak = group_amax(read.detach(), 2, layout.tiles_per_plane, (-2, -1), absolute=signed)  # A, G, T|1, Bk, m, 1, 1
        return peak.square_().clamp_min_(TINY)

    def measure(self, x: torch.Tensor, kernels: torch.Tensor, layout: PlaneLayout, gen) -> torch.Tensor:
        field = self.field(x, kernels, layout)  # A, G, T, Bk, m, dh, dw
        fs = None if self.readout == "field" else self.full_scale(field, layout)
        return self.camera(field, fs, gen, layout)  # G, T, m, oh, ow

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, impl={self.impl!r}" + (", compile=True" if self.compile else "")
