"""``fourier``: the literal 4f simulation, whole SLM planes through FFTs.

Token maps are tiled onto planes (:class:`~lightning_convshare.optics.layout.PlaneLayout`); each
plane's spectrum is computed once and multiplied by the conjugate spectrum of every kernel (the
Fourier-plane filter); an inverse FFT gives the camera plane, from which every tile's output
region is read back. The naive ``[planes, kernels, plane spectrum]`` product does not fit real
models (ViT-Tiny at 224 px on a 2048 px SLM: 576 kernels x 2048 x 1025 complex values = 9.7 GB
per layer), so the product is formed in chunks of planes and kernels that stay under
``memory_budget_mb``; under autograd each chunk is recomputed in the backward pass instead of
stored (activation checkpointing), so training stays within the budget too.

Noise-free, ``readout="field"`` equals ``direct`` to float precision (FFT rounding, relative error
around 1e-6 in float32) for valid and same padding, shared and non-shared kernels, any kernel size.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch.utils.checkpoint import checkpoint

from .layout import GuardSpec, PlaneLayout
from .physical import TINY, PhysicalBackend
from .signed import SignedEncoding

__all__ = ["FourierConv", "ChunkPlan", "fast_size"]


def fast_size(n: int) -> int:
    """Smallest ``m >= n`` whose prime factors are 2, 3 and 5 (fast FFT lengths)."""
    m = max(1, n)
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


@dataclass
class ChunkPlan:
    """How one layer's planes x kernels product was split (for reports and benchmarks)."""

    planes: int
    kernels: int
    plane_chunk: int
    kernel_chunk: int
    fft_shape: tuple[int, int]
    naive_bytes: int
    chunk_bytes: int

    @property
    def chunks(self) -> int:
        return math.ceil(self.planes / self.plane_chunk) * math.ceil(self.kernels / self.kernel_chunk)


class FourierConv(PhysicalBackend):
    """Literal tiled-plane 4f simulation (see the module docstring).

    Args:
        slm_resolution: SLM pixels (512 .. 4096 typical), int or ``[H, W]`` (``None``: the device's).
        guard: ``"auto"`` (leak-free) or pixels between tiles.
        readout: ``"field"`` (default: the ideal linear system) or ``"intensity"`` (camera, the encoding's passes).
        aperture: pupil band-limit (fraction of Nyquist) or ``null``.
        aperture_halo: PSF truncation radius.
        noise: noise stages (need ``readout=intensity`` when they act on the camera).
        seed: noise seed.
        memory_budget_mb: bound on the chunked spectra/camera intermediates.
        checkpoint: recompute chunks in the backward pass rather than storing them.
        grad: ``pathwise`` (default: differentiate the simulation) or ``ideal`` (see :class:`PhysicalBackend`).
        device: a 4f device (preset name or description; its filter is realised on the plane's FFT grid).
        encoding: signed-value encoding of the intensity readout.
    """

    def __init__(
        self,
        slm_resolution: int | Sequence[int] | None = None,
        guard: GuardSpec = "auto",
        readout: str = "field",
        aperture: Optional[float] = None,
        aperture_halo: Optional[int] = None,
        noise: Sequence[Any] | Mapping[str, Any] | None = (),
        seed: int = 0,
        memory_budget_mb: float = 512,
        checkpoint: bool = True,
        grad: str = "pathwise",
        device: Any = None,
        encoding: str | SignedEncoding = "pseudo_negativity",
    ) -> None:
        super().__init__(slm_resolution, guard, readout, aperture, aperture_halo, noise, seed, grad, device, encoding)
        self.memory_budget_mb = float(memory_budget_mb)
        self.checkpoint = bool(checkpoint)
        self.last_plan: Optional[ChunkPlan] = None

    def plan(
        self, A: int, G: int, Bk: int, P: int, m: int, fft: tuple[int, int], itemsize: int = 4, training: bool = False
    ) -> ChunkPlan:
        """Largest plane x kernel chunks whose intermediates fit the memory budget.

        Per (plane, kernel) pair a chunk holds the complex product and the real camera plane with
        its detected/noisy copies; in training, the backward pass of a (recomputed) chunk adds the
        gradients of the camera plane, the product, and both broadcast factors.
        """
        Hf, Wf = fft
        spec = Hf * (Wf // 2 + 1) * 2 * itemsize  # one complex spectrum
        real = Hf * Wf * itemsize
        n_out = len(self.stages_at("output")) + (2 if self.readout == "intensity" else 0)
        # forward: the product, the C2R transform's working copy of it, the camera plane and its read-back
        # view's copy; backward adds the camera gradient, its R2C spectrum and both factors' gradients
        per_pair = A * G * Bk * ((5 * spec + (4 + n_out) * real) if training else (2 * spec + (2 + n_out) * real))
        budget = self.memory_budget_mb * 2**20
        fixed_plane, fixed_kernel = A * G * spec * (2 if training else 1), Bk * G * (spec + real) * (2 if training else 1)
        pairs = max(1, int((budget - fixed_plane) // (per_pair + fixed_kernel)))
        if pairs >= m:
            kc, pc = m, max(1, min(P, pairs // m))
        else:
            kc, pc = pairs, 1
        chunk = pc * kc * per_pair + pc * fixed_plane + kc * fixed_kernel
        return ChunkPlan(P, m, pc, kc, fft, A * G * Bk * P * m * spec, chunk)

    def measure(self, x: torch.Tensor, kernels: torch.Tensor, layout: PlaneLayout, gen) -> torch.Tensor:
        A, G, T = x.shape[:3]
        shared = kernels.dim() == 4
        Bk, m = kernels.shape[0], kernels.shape[-3]
        planes = layout.to_planes(x, fit=True)  # A, G, P, H, W
        grid = layout.plane_grid(T)
        P, H, W = planes.shape[-3:]
        fft = self.sim_shape(H, W)
        training = torch.is_grad_enabled() and (x.requires_grad or kernels.requires_grad)
        plan = self.plan(A, G, Bk, P, m, fft, x.element_size(), training)
        self.last_plan = plan
        # kernels as (G or 1, Bk, m, kh, kw) so chunks slice the kernel dimension
        kern = kernels.unsqueeze(0) if shared else kernels.transpose(0, 1)  # G', Bk, m, kh, kw
        rows = []
        for p0 in range(0, P, plan.plane_chunk):
            chunk = planes[:, :, p0 : p0 + plan.plane_chunk]  # A, G, p, H, W
            spectrum = self.prepare(chunk, fft)  # A, G, p, Hf, Wf/2+1: once per plane
            cols = []
            for k0 in range(0, m, plan.kernel_chunk):
                kc = kern[:, :, k0 : k0 + plan.kernel_chunk]  # G', Bk, mc, kh, kw
                seed = None if gen is None else int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device))
                args = (spectrum, kc, layout, grid, fft, seed)
                if self.checkpoint and torch.is_grad_enabled() and (spectrum.requires_grad or kc.requires_grad):
                    cols.append(checkpoint(self._camera_chunk, *args, use_reentrant=False))
                else:
                    cols.append(self._camera_chunk(*args))
            rows.append(torch.cat(cols, dim=2))  # G, p*per, m, oh, ow
        return torch.cat(rows, dim=1)[:, :T]  # G, T, m, oh, ow

    def sim_shape(self, H: int, W: int) -> tuple[int, int]:
        """Simulation grid of a plane: fast FFT lengths (the margins keep the padding dark)."""
        return fast_size(H), fast_size(W)

    def prepare(self, planes: torch.Tensor, fft: tuple[int, int]) -> torch.Tensor:
        """What a chunk of planes contributes to every kernel's pass: its spectrum."""
        return torch.fft.rfft2(planes, s=fft)  # ..., Hf, Wf/2+1

    def camera_field(self, spectrum: torch.Tensor, kernels: torch.Tensor, fft: tuple[int, int]) -> torch.Tensor:
        """Camera field of every (plane, kernel) pass of a chunk.

        Args:
            spectrum: ``(A, G, p, ...)`` from :meth:`prepare`.
            kernels: ``(G', Bk, mc, kh, kw)`` effective kernel parts (``G'`` is 1 for shared kernels).
            fft: simulation grid ``(Hf, Wf)``.

        Returns:
            ``(A, G, Bk, mc, p, Hf, Wf)``: the correlation of each plane with each kernel.
        """
        kspec = torch.fft.rfft2(kernels, s=fft)  # G', Bk, mc, Hf, Wf/2+1
        if self.filter is not None:  # the device's Fourier-plane filter, on the plane's grid
            kspec = self.filter.realise(kspec)
        product = spectrum[:, :, None, None] * kspec.conj()[None, :, :, :, None]  # A, G, Bk, mc, p, Hf, Wf/2+1: matched filter
        return torch.fft.irfft2(product, s=fft)  # A, G, Bk, mc, p, Hf, Wf: camera planes

    def _camera_chunk(self, spectrum, kernels, layout: PlaneLayout, grid, fft, seed) -> torch.Tensor:
        """Camera read-back of one chunk of planes and kernels, recombined: ``(G, p * per, mc, oh, ow)``."""
        field = self.camera_field(spectrum, kernels, fft)  # A, G, Bk, mc, p, Hf, Wf
        gen = None if seed is None else torch.Generator(device=field.device).manual_seed(seed)
        if self.readout == "field":
            return self.camera(layout.read(field, grid).permute(0, 1, 4, 2, 3, 5, 6), None, gen, layout)
        p, per = field.shape[-3], grid[0] * grid[1]
        peak = layout.read(field.detach(), grid).square()  # A, G, Bk, mc, p*per, oh, ow
        fs = peak.unflatten(-3, (p, per)).amax(dim=(-3, -2, -1)).clamp_min(TINY)  # A, G, Bk, mc, p
        fs_read = fs.repeat_interleave(per, dim=-1)[..., None, None].permute(0, 1, 4, 2, 3, 5, 6)  # A, G, p*per, Bk, mc, 1, 1
        if self.camera_path(layout.context) == "stages" and layout.context:  # a PSF mixes pixels: whole planes
            measured = layout.read(self.detect(field, fs[..., None, None], gen, valid=False), grid)
            return self.encoding.recombine(self.recover(measured.permute(0, 1, 4, 2, 3, 5, 6), fs_read))
        read = layout.read(field, grid).permute(0, 1, 4, 2, 3, 5, 6)  # A, G, p*per, Bk, mc, oh, ow
        return self.camera(read, fs_read, gen, layout)
