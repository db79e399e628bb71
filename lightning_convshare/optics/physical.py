"""The physical 4f pipeline shared by the ``fourier``, ``optical`` and ``wave`` backends.

One ConvShare layer's convolution on a 4f system, as these backends model it:

1. **Input plane** (SLM): the token maps of all samples (shared kernels) are tiled on planes
   (:class:`~lightning_convshare.optics.layout.PlaneLayout`). Values are encoded relative to the
   plane's full scale (its largest magnitude). With ``readout="intensity"`` signed maps are split
   into non-negative parts (pseudo-negativity) for an amplitude SLM; input stages (``slm``) act here.
2. **Filter** (Fourier plane): each pass holds one kernel, normalised to its own full scale and
   split into non-negative parts; kernel stages act on it, and an ``aperture`` band-limit is folded
   into an effective kernel (``kernel * psf``, ``aperture_halo`` pixels wider on each side).
3. **Camera**: ``readout="field"`` reads the signed field (an idealised coherent readout: one pass,
   the literal convolution); ``readout="intensity"`` detects ``|field|^2`` of each of the four
   pseudo-negative passes, normalises every pass's plane to the camera's full scale (its brightest
   read pixel), applies the output stages (``psf``, ``shot``, ``read``, ``adc``) in order, and
   recovers ``sqrt(intensity)`` electronically before recombining ``++ - +- - -+ + --`` and undoing
   the full scales.

Subclasses implement only :meth:`PhysicalBackend.measure`: how the camera field is obtained (FFT of
whole planes, batched direct convolution of tile windows, or a wave-optics propagation).
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch
from torch import nn

from ..errors import ConfigError
from ..layers.backend import ConvBackend, DirectConv, check_token_count
from ..layers.geometry import ConvGeometry
from .encoding import (
    aperture_psf,
    effective_kernel,
    gaussian_noise,
    group_amax,
    recombine_passes,
    safe_sqrt,
    split_signed,
)
from .layout import GuardSpec, PlaneLayout, pair
from .noise import AdcQuantization, NoiseStage, create_noise

__all__ = ["PhysicalBackend", "READOUTS", "GRADS"]

READOUTS = ("field", "intensity")
GRADS = ("pathwise", "ideal")
TINY = 1e-30


class _Measured(torch.autograd.Function):
    """Forward: the simulated measurement; backward: the gradient of the ideal convolution."""

    @staticmethod
    def forward(ctx, measured: torch.Tensor, ideal: torch.Tensor) -> torch.Tensor:
        return measured

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, grad


class PhysicalBackend(ConvBackend):
    """Base class of the simulated 4f backends (see the module docstring for the pipeline).

    Args:
        slm_resolution: SLM pixels, int or ``[H, W]``.
        guard: ``"auto"`` (leak-free) or zero pixels between tiles (int or ``[gh, gw]``).
        readout: ``"intensity"`` (camera, four pseudo-negative passes) or ``"field"`` (ideal, one pass).
        aperture: pupil cut-off as a fraction of the SLM's Nyquist frequency (``null``: none).
        aperture_halo: truncation radius of the aperture PSF (default ``ceil(2.44 / aperture)``).
        noise: stage configs in order (see :mod:`lightning_convshare.optics.noise`).
        seed: seed of this backend's noise; each layer derives its own stream from it and its name.
        grad: how gradients cross the simulated system. ``pathwise`` differentiates through every
            pass (straight-through quantisation, the reparameterised Gaussian noise, detection and
            recovery; the backward pass repeats all four pseudo-negative products). ``ideal`` is the
            straight-through estimator for the whole measurement: the forward value is the simulated
            one, the gradient that of the ideal (noise-free) convolution at the same input and
            weights, so the backward pass costs what ``direct``'s does (noise-injection training as in
            hardware-aware training of analog accelerators; see docs/optics.md).
    """

    exact_linear = False

    def __init__(
        self,
        slm_resolution: int | Sequence[int] = (1080, 1920),
        guard: GuardSpec = "auto",
        readout: str = "intensity",
        aperture: Optional[float] = None,
        aperture_halo: Optional[int] = None,
        noise: Sequence[Any] | Mapping[str, Any] | None = (),
        seed: int = 0,
        grad: str = "pathwise",
    ) -> None:
        super().__init__()
        if grad not in GRADS:
            raise ConfigError(f"grad {grad!r} is not one of {list(GRADS)} (pathwise: through the simulation, ideal: "
                              "simulated forward, gradient of the noise-free convolution)")
        self.grad = grad
        if readout not in READOUTS:
            raise ConfigError(f"readout {readout!r} is not one of {list(READOUTS)}")
        self.slm_resolution = pair(slm_resolution, "slm_resolution")
        self.guard = guard if isinstance(guard, str) else pair(guard, "guard")
        self.readout = readout
        self.stages: nn.ModuleList = create_noise(noise)
        if readout == "field" and any("output" in s.acts_on for s in self.stages):
            raise ConfigError(
                "camera stages (shot, read, adc, psf) act on detected intensity: use readout=intensity "
                f"with noise {[type(s).__name__ for s in self.stages]}"
            )
        self.aperture = None if aperture is None else float(aperture)
        if self.aperture is not None and not 0 < self.aperture <= 2**0.5:
            raise ConfigError(f"aperture={aperture} must be in (0, 1.414] (a fraction of the Nyquist frequency)")
        if self.aperture is None:
            self.halo = 0
        else:  # the jinc's second zero lies ~2.23 / aperture pixels out
            self.halo = int(aperture_halo) if aperture_halo is not None else math.ceil(2.44 / self.aperture)
        self.seed = int(seed)
        self.noise_enabled = True
        self.pad: tuple[int, int, int, int] = (0, 0, 0, 0)
        self.layer_name = ""
        self._layouts: dict[tuple, PlaneLayout] = {}
        self._generators: dict[str, torch.Generator] = {}

    # --- binding to a layer -------------------------------------------------------------
    def bind(self, geometry: ConvGeometry, name: str = "") -> None:
        """Learn the layer's zero padding (so tiles hold only the map, the guard band doing the
        padding's job) and its name (which seeds its noise stream). Called automatically when the
        backend is assigned to a :class:`~lightning_convshare.layers.ConvShareLinear`."""
        self.pad, self.layer_name = tuple(geometry.pad), name or self.layer_name  # type: ignore[assignment]
        self._layouts.clear()

    # --- pieces used by subclasses --------------------------------------------------------
    @property
    def active_stages(self) -> list[NoiseStage]:
        return list(self.stages) if self.noise_enabled else []

    @property
    def context(self) -> int:
        return sum(s.context for s in self.active_stages if "output" in s.acts_on)

    def layout(self, tile, kernel, stride, out) -> PlaneLayout:
        key = (tuple(tile), tuple(kernel), tuple(stride), tuple(out), self.context)
        if key not in self._layouts:
            self._layouts[key] = PlaneLayout.create(
                tile, self.pad, kernel, stride, out, self.slm_resolution, self.guard, self.halo, self.context
            )
        return self._layouts[key]

    def generator(self, device: torch.device) -> torch.Generator:
        """A fresh generator for one forward call, drawn from this layer's seeded stream.

        Each call gets its own seed so a recomputation (activation checkpointing) replays it.
        """
        key = str(device)
        if key not in self._generators:
            rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
            base = (self.seed * 1_000_003 + zlib.crc32(self.layer_name.encode()) + 7919 * rank) % (2**63 - 1)
            self._generators[key] = torch.Generator(device="cpu").manual_seed(base)
        seed = int(torch.randint(0, 2**62, (1,), generator=self._generators[key]))
        return torch.Generator(device=device).manual_seed(seed)

    def reset_noise(self) -> None:
        """Restart every noise stream from its seed (for reproducible evaluations)."""
        self._generators.clear()

    def detect(self, field: torch.Tensor, full_scale: torch.Tensor, gen, valid: bool) -> torch.Tensor:
        """Camera: intensity in full-scale units, then the output stages (``field`` readout: unchanged)."""
        if self.readout == "field":
            return field
        intensity = field.square() / full_scale
        stages = [s for s in self.active_stages if "output" in s.acts_on]
        i = 0
        while i < len(stages):
            a, b, j = 0.0, 0.0, i  # draw a run of Gaussian stages at once (summed variances)
            while j < len(stages) and (g := stages[j].gaussian()) is not None and (j == i or g[0] == 0):
                a, b, j = a + g[0], b + g[1], j + 1
            if j > i:
                intensity, i = gaussian_noise(intensity, a, b, gen), j
            else:
                intensity, i = stages[i].output(intensity, gen, valid=valid), i + 1
        return intensity

    def fused_camera(self) -> Optional[tuple[float, float, int]]:
        """``(a, b, levels)`` when the camera stages are one Gaussian run and/or an ADC, in that order
        (then :func:`~lightning_convshare.optics.camera.camera_chain` computes detection, noise and
        recovery in one fused step with identical results), else ``None``."""
        if self.readout != "intensity":
            return None
        stages = [s for s in self.active_stages if "output" in s.acts_on]
        a = b = 0.0
        levels = 0
        for i, stage in enumerate(stages):
            g = stage.gaussian()
            if g is not None and not levels and (i == 0 or g[0] == 0):
                a, b = a + g[0], b + g[1]
            elif isinstance(stage, AdcQuantization) and i == len(stages) - 1:
                levels = 0 if stage.bits is None else 2**stage.bits
            elif type(stage).output is not NoiseStage.output or stage.gaussian() is not None:
                return None  # any other camera stage (PSF, exact shot noise, ...): the generic path
        return a, b, levels

    def recover(self, measured: torch.Tensor, full_scale: torch.Tensor) -> torch.Tensor:
        """Electronic recovery of the field amplitude from the read intensity."""
        if self.readout == "field":
            return measured
        return safe_sqrt(measured * full_scale)

    # --- the pipeline ----------------------------------------------------------------------
    def forward(self, maps: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
        check_token_count(maps, weight)
        if self.grad == "ideal" and torch.is_grad_enabled() and (maps.requires_grad or weight.requires_grad):
            with torch.no_grad():
                measured = self._forward(maps, weight, stride)
            return _Measured.apply(measured, _IDEAL(maps, weight, stride))
        return self._forward(maps, weight, stride)

    def _forward(self, maps: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
        dtype = maps.dtype
        if dtype in (torch.float16, torch.bfloat16) or torch.is_autocast_enabled(maps.device.type):
            # FFTs, photon statistics and ADC steps need float32: simulate in float32 under mixed precision
            with torch.autocast(maps.device.type, enabled=False):
                return self._simulate(maps.float(), weight.float(), stride).to(dtype)
        return self._simulate(maps, weight, stride)

    def _simulate(self, maps: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
        B, N, H, W = maps.shape
        pt, pb, pl, pr = self.pad
        kh, kw = weight.shape[-2:]
        sh, sw = stride
        out = ((H - kh) // sh + 1, (W - kw) // sw + 1)
        content = maps[..., pt : H - pb, pl : W - pr]  # B, N, h, w
        h, w = content.shape[-2:]
        shared = weight.dim() == 3
        layout = self.layout((h, w), (kh, kw), (sh, sw), out)
        xg = content.reshape(1, B * N, h, w) if shared else content.transpose(0, 1)  # G, T, h, w
        gen = self.generator(maps.device) if self.active_stages else None
        intensity = self.readout == "intensity"
        in_stages = [s for s in self.active_stages if "input" in s.acts_on]
        k_stages = [s for s in self.active_stages if "kernel" in s.acts_on]

        # input plane: full scale per plane, pseudo-negative parts, SLM stages. The encoding's full
        # scales matter only to the stages that act on SLM/filter values: the camera normalises each
        # plane to its own full scale, so the measurement is invariant to them (and skips them)
        x = split_signed(xg) if intensity else xg.unsqueeze(0)  # A, G, T, h, w
        sx = None
        if in_stages:
            sx = group_amax(xg.detach(), 1, layout.tiles_per_plane, (2, 3), absolute=True).clamp_min(TINY)  # G, T, 1, 1
            x = x / sx
        for stage in in_stages:
            x = stage.input(x, gen)

        # filter: full scale per kernel, parts, filter stages, aperture
        k = split_signed(weight) if intensity else weight.unsqueeze(0)  # Bk, [N,] m, kh, kw
        sk = None
        if k_stages:
            sk = weight.detach().abs().amax(dim=(-2, -1), keepdim=True).clamp_min(TINY)  # [N,] m, 1, 1
            k = k / sk
        for stage in k_stages:
            k = stage.kernel(k, gen)
        psf = None if self.aperture is None else aperture_psf(self.aperture, self.halo, k.dtype, k.device)
        k = effective_kernel(k, psf)

        y = self.measure_signed(x, k, layout, gen)  # G, T, m, oh, ow
        if sx is not None:
            y = y * sx.unsqueeze(2)  # G, T, 1, 1, 1
        if sk is not None:
            y = y * (sk if shared else sk.unsqueeze(1))  # [N, 1,] m, 1, 1
        return y.reshape(B, N, *y.shape[-3:]) if shared else y.transpose(0, 1)  # B, N, m, oh, ow

    def measure_signed(self, x: torch.Tensor, kernels: torch.Tensor, layout: PlaneLayout, gen) -> torch.Tensor:
        """The signed result ``(G, T, m, oh, ow)``: :meth:`measure`, then the electronic
        recombination of the four passes (intensity readout) or the one field pass."""
        y = self.measure(x, kernels, layout, gen)  # A, G, T, Bk, m, oh, ow
        return recombine_passes(y) if self.readout == "intensity" else y[0, :, :, 0]

    def measure(self, x: torch.Tensor, kernels: torch.Tensor, layout: PlaneLayout, gen) -> torch.Tensor:
        """Camera measurement of every pass.

        Args:
            x: ``(A, G, T, h, w)`` encoded input parts (``A`` = 2 pseudo-negative parts or 1),
                ``G`` kernel groups (1 shared, ``N`` non-shared) of ``T`` tiles.
            kernels: ``(Bk, m, kh', kw')`` shared or ``(Bk, N, m, kh', kw')`` effective kernel parts.
            layout: the plane layout.
            gen: generator for the noise stages (``None`` without stages).

        Returns:
            ``(A, G, T, Bk, m, oh, ow)`` recovered field values (correlations of ``x`` with the kernels).
        """
        raise NotImplementedError

    def extra_repr(self) -> str:
        H, W = self.slm_resolution
        ap = "" if self.aperture is None else f", aperture={self.aperture} (halo {self.halo})"
        return f"slm={H}x{W}, guard={self.guard!r}, readout={self.readout!r}{ap}, seed={self.seed}, grad={self.grad!r}"


_IDEAL = DirectConv("auto")
