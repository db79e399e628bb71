"""The physical 4f pipeline shared by the ``fourier``, ``optical`` and ``wave`` backends.

One ConvShare layer's convolution on a 4f system, as these backends model it:

1. **Input plane** (SLM): the token maps of all samples (shared kernels) are tiled on planes
   (:class:`~lightning_convshare.optics.layout.PlaneLayout`). Values are encoded relative to the
   plane's full scale (its largest magnitude). With ``readout="intensity"`` signed maps become
   non-negative SLM parts by the signed-value ``encoding``
   (:mod:`~lightning_convshare.optics.signed`: pseudo-negativity or an offset); input stages
   (``slm``) act here.
2. **Filter** (Fourier plane): each pass holds one kernel part, normalised to its own full scale;
   kernel stages act on it, an ``aperture`` band-limit is folded into an effective kernel
   (``kernel * psf``, ``aperture_halo`` pixels wider on each side), and a ``device``'s filter
   (:mod:`~lightning_convshare.optics.fourier_plane`) quantises the spectrum the modulator shows.
3. **Camera**: ``readout="field"`` reads the signed field (an idealised coherent readout: one pass,
   the literal convolution); ``readout="intensity"`` detects ``|field|^2`` of every pass, normalises
   each pass's plane to the camera's full scale (its brightest read pixel), applies the output stages
   (``psf``, ``shot``, ``read``, ``adc``) in order, recovers ``sqrt(intensity)`` electronically,
   recombines the passes with the encoding's weights, subtracts its offset terms and undoes the full
   scales. :meth:`PhysicalBackend.camera_path` is the one place that chooses how the camera runs.

A ``device`` (:mod:`~lightning_convshare.optics.device`: a preset name or a description) sets the SLM
resolution, the filter model and, through a ``device`` entry in ``noise``, the noise stages in
physical units. Subclasses implement how the camera field is obtained (FFT of whole planes, batched
direct convolution of tile windows, or a wave-optics propagation).
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from ..errors import ConfigError
from ..layers.backend import ConvBackend, check_token_count
from ..layers.geometry import ConvGeometry
from .camera import camera_chain, camera_recombined, compiled, recombined_camera
from .device import FourFDevice, create_device
from .encoding import aperture_psf, effective_kernel, gaussian_noise, group_amax, safe_sqrt
from .fourier_plane import FilterModulation, create_filter
from .ideal_grad import MeasuredWithIdealGrad
from .layout import GuardSpec, PlaneLayout, pair
from .noise import AdcQuantization, NoiseStage, create_noise
from .signed import SignedEncoding, create_encoding

__all__ = ["PhysicalBackend", "READOUTS", "GRADS", "CAMERA_PATHS", "CameraChain"]

READOUTS = ("field", "intensity")
GRADS = ("pathwise", "ideal")
#: how the camera runs (:meth:`PhysicalBackend.camera_path`)
CAMERA_PATHS = ("field", "noiseless", "compiled", "fused", "stages")
TINY = 1e-30


@dataclass(frozen=True)
class CameraChain:
    """Pointwise camera stages as one chain: ``N(0, a I + b)`` noise, then ``levels`` ADC codes over
    ``[0, adc_range]`` (0: no ADC)."""

    a: float = 0.0
    b: float = 0.0
    levels: int = 0
    adc_range: float = 1.0


class PhysicalBackend(ConvBackend):
    """Base class of the simulated 4f backends (see the module docstring for the pipeline).

    Args:
        slm_resolution: SLM pixels, int or ``[H, W]`` (``None``: the device's, else 1080 x 1920).
        guard: ``"auto"`` (leak-free) or zero pixels between tiles (int or ``[gh, gw]``).
        readout: ``"intensity"`` (camera, the encoding's passes) or ``"field"`` (ideal, one signed pass).
        aperture: pupil cut-off as a fraction of the SLM's Nyquist frequency (``null``: none).
        aperture_halo: truncation radius of the aperture PSF (default ``ceil(2.44 / aperture)``).
        noise: stage configs in order (see :mod:`lightning_convshare.optics.noise`); an entry ``device``
            stands for the device's stages in physical units (SLM levels, shot, read, ADC).
        seed: seed of this backend's noise; each layer derives its own stream from it and its name.
        grad: how gradients cross the simulated system. ``pathwise`` differentiates through every
            pass (straight-through quantisation, the reparameterised Gaussian noise, detection and
            recovery; the backward pass repeats every pass's product). ``ideal`` is the
            straight-through estimator for the whole measurement: the forward value is the simulated
            one, the gradient that of the ideal (noise-free) convolution at the same input and
            weights, so the backward pass costs what ``direct``'s does (noise-injection training as in
            hardware-aware training of analog accelerators; see docs/optics.md).
        device: a 4f device (:func:`~lightning_convshare.optics.device.create_device`: a preset name,
            ``{preset: name, camera: {bits: 12}}`` or a full description); ``None``: an ideal filter and
            only the stages listed in ``noise``.
        encoding: signed-value encoding of the intensity readout
            (:data:`~lightning_convshare.optics.signed.SIGNED_ENCODINGS`): ``pseudo_negativity`` (4
            passes), ``input_offset`` / ``kernel_offset`` (2), ``offset`` (1).
    """

    exact_linear = False
    compile = False  # the compiled camera kernel (the `optical` backend's option)

    def __init__(
        self,
        slm_resolution: int | Sequence[int] | None = None,
        guard: GuardSpec = "auto",
        readout: str = "intensity",
        aperture: Optional[float] = None,
        aperture_halo: Optional[int] = None,
        noise: Sequence[Any] | Mapping[str, Any] | None = (),
        seed: int = 0,
        grad: str = "pathwise",
        device: Any = None,
        encoding: str | SignedEncoding = "pseudo_negativity",
    ) -> None:
        super().__init__()
        if grad not in GRADS:
            raise ConfigError(f"grad {grad!r} is not one of {list(GRADS)} (pathwise: through the simulation, ideal: "
                              "simulated forward, gradient of the noise-free convolution)")
        self.grad = grad
        if readout not in READOUTS:
            raise ConfigError(f"readout {readout!r} is not one of {list(READOUTS)}")
        self.device: Optional[FourFDevice] = create_device(device)
        self.encoding: SignedEncoding = create_encoding(encoding)
        self.filter: Optional[FilterModulation] = None
        if self.device is not None:
            f = self.device.filter
            self.filter = create_filter(f.modulation, f.levels, f.phase_levels)
        if slm_resolution is None:
            slm_resolution = self.device.slm.resolution if self.device is not None else (1080, 1920)
        self.slm_resolution = pair(slm_resolution, "slm_resolution")
        self.guard = guard if isinstance(guard, str) else pair(guard, "guard")
        self.readout = readout
        efficiency = 1.0 if self.filter is None else self.filter.efficiency
        self.stages: nn.ModuleList = create_noise(noise, self.device, efficiency)
        self.noise_enabled = True
        if readout == "field" and self.stages_at("output"):
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
        """The stages in effect: none while noise is disabled, and none at zero strength (identities)."""
        return [s for s in self.stages if not s.is_identity] if self.noise_enabled else []

    def stages_at(self, place: str) -> list[NoiseStage]:
        """The active stages that act at ``place`` (``input``, ``kernel`` or ``output``), in order."""
        return [s for s in self.active_stages if place in s.acts_on]

    @property
    def passes(self) -> int:
        """Optical passes per kernel and input block: the encoding's, or 1 for the field readout."""
        return self.encoding.passes if self.readout == "intensity" else 1

    @property
    def context(self) -> int:
        return sum(s.context for s in self.stages_at("output"))

    def layout(self, tile, kernel, stride, out) -> PlaneLayout:
        key = (tuple(tile), tuple(kernel), tuple(stride), tuple(out), self.context)
        if key not in self._layouts:
            self._layouts[key] = PlaneLayout.create(
                tile, self.pad, kernel, stride, out, self.slm_resolution, self.guard, self.halo, self.context
            )
        return self._layouts[key]

    def _stream(self, device: torch.device) -> torch.Generator:
        """This layer's seeded stream of per-call seeds (one per device, seeded by ``seed``, the layer's
        name and the DDP rank)."""
        key = str(device)
        if key not in self._generators:
            rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
            base = (self.seed * 1_000_003 + zlib.crc32(self.layer_name.encode()) + 7919 * rank) % (2**63 - 1)
            self._generators[key] = torch.Generator(device="cpu").manual_seed(base)
        return self._generators[key]

    def generator(self, device: torch.device) -> torch.Generator:
        """A fresh generator for one forward call, drawn from this layer's seeded stream.

        Each call gets its own seed so a recomputation (activation checkpointing) replays it.
        """
        seed = int(torch.randint(0, 2**62, (1,), generator=self._stream(device)))
        return torch.Generator(device=device).manual_seed(seed)

    def reset_noise(self) -> None:
        """Restart every noise stream from its seed (for reproducible evaluations)."""
        self._generators.clear()

    # --- the camera ------------------------------------------------------------------------
    def detect(self, field: torch.Tensor, full_scale: torch.Tensor, gen, valid: bool) -> torch.Tensor:
        """Camera, stage by stage: intensity in full-scale units, then the output stages."""
        intensity = field.square() / full_scale
        stages = self.stages_at("output")
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

    def camera_chain(self) -> Optional[CameraChain]:
        """The camera stages as one :class:`CameraChain` when they are a Gaussian run and/or an ADC, in
        that order (then detection, noise, ADC and recovery run fused with identical results), else ``None``."""
        if self.readout != "intensity":
            return None
        stages = self.stages_at("output")
        a = b = 0.0
        levels, adc_range = 0, 1.0
        for i, stage in enumerate(stages):
            g = stage.gaussian()
            if g is not None and not levels and (i == 0 or g[0] == 0):
                a, b = a + g[0], b + g[1]
            elif isinstance(stage, AdcQuantization) and i == len(stages) - 1:
                levels, adc_range = stage.levels, stage.range
            elif type(stage).output is not NoiseStage.output or stage.gaussian() is not None:
                return None  # any other camera stage (PSF, exact shot noise, ...): stage by stage
        return CameraChain(a, b, levels, adc_range)

    def camera_path(self, context: int = 0) -> str:
        """The one dispatcher of the camera: ``field`` (signed field readout), ``noiseless`` (no camera
        stage: the recovered amplitude is ``|field|``, exactly ``sqrt(|field|^2)``), ``compiled`` (every
        pass and the recombination as one ``torch.compile`` kernel), ``fused`` (one eager fused chain per
        pass tensor) or ``stages`` (stage by stage: PSF, exact Poisson counts, other stages)."""
        if self.readout == "field":
            return "field"
        chain = None if context else self.camera_chain()
        if chain is None:
            return "stages"
        if chain == CameraChain():
            return "noiseless"
        return "compiled" if self.compile else "fused"

    def camera(self, field: torch.Tensor, full_scale: torch.Tensor, gen, layout: PlaneLayout) -> torch.Tensor:
        """Detection, camera stages, recovery and the encoding's recombination of the passes.

        Args:
            field: ``(A, G, T, Bk, m, dh, dw)`` camera fields (the read pixels, or their dense
                neighbourhood with ``layout.context`` pixels around them).
            full_scale: per plane and pass, broadcastable to ``field``.
            gen: generator of the noise (``None`` without stages).
            layout: the plane layout.

        Returns:
            ``(G, T, m, oh, ow)``: ``sum_ab w_ab recovered_ab`` (the offset terms not yet removed).
        """
        path = self.camera_path(layout.context)
        if path == "field":
            return field[0, :, :, 0]
        chain = self.camera_chain()
        if path == "compiled":
            if isinstance(gen, torch.Tensor) or gen is None and not torch.is_grad_enabled():  # inside the compiled simulation
                fs = full_scale.expand(*field.shape[:5], 1, 1)
                return recombined_camera(field, fs, gen, chain.a, chain.b, chain.levels, chain.adc_range,
                                         self.encoding.weights)
            return camera_recombined(field, full_scale, chain.a, chain.b, chain.levels, gen,
                                     weights=self.encoding.weights, adc_range=chain.adc_range)
        if path == "noiseless":
            recovered = field.abs()
        elif path == "fused":
            recovered = camera_chain(field, full_scale, chain.a, chain.b, chain.levels, gen, adc_range=chain.adc_range)
        else:
            measured = self.detect(field, full_scale, gen, valid=True)  # ..., (oh-1)s+1 | oh, ...
            if layout.context:
                measured = measured[..., :: layout.stride[0], :: layout.stride[1]]  # ..., oh, ow
            recovered = self.recover(measured, full_scale)
        return self.encoding.recombine(recovered)

    def recover(self, measured: torch.Tensor, full_scale: torch.Tensor) -> torch.Tensor:
        """Electronic recovery of the field amplitude from the read intensity."""
        return safe_sqrt(measured * full_scale)

    # --- the pipeline ----------------------------------------------------------------------
    def forward(self, maps: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
        check_token_count(maps, weight)
        if self.grad == "ideal" and torch.is_grad_enabled() and (maps.requires_grad or weight.requires_grad):
            with torch.no_grad():
                measured = self._forward(maps, weight, stride)
            return MeasuredWithIdealGrad.apply(measured, maps, weight, tuple(stride))
        return self._forward(maps, weight, stride)

    def _forward(self, maps: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
        dtype = maps.dtype
        if dtype in (torch.float16, torch.bfloat16) or torch.is_autocast_enabled(maps.device.type):
            # FFTs, photon statistics and ADC steps need float32: simulate in float32 under mixed precision
            with torch.autocast(maps.device.type, enabled=False):
                return self._simulate(maps.float(), weight.float(), stride).to(dtype)
        return self._simulate(maps, weight, stride)

    def _simulate(self, maps: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
        H, W = maps.shape[-2:]
        pt, pb, pl, pr = self.pad
        kh, kw = weight.shape[-2:]
        out = ((H - kh) // stride[0] + 1, (W - kw) // stride[1] + 1)
        layout = self.layout((H - pt - pb, W - pl - pr), (kh, kw), tuple(stride), out)
        noisy = bool(self.active_stages)
        if self.compile and self.camera_path(layout.context) in ("compiled", "noiseless") and not (
            torch.is_grad_enabled() and (maps.requires_grad or weight.requires_grad)
        ):  # no autograd through the simulation: all of it as compiled kernels, the noise drawn inside
            seed = torch.randint(0, 2**62, (), generator=self._stream(maps.device)).to(maps.device) if noisy else None
            # plain tensors, not parameters: their shapes may then turn dynamic (one graph for the layers of a size)
            return compiled(_run_pipeline, (maps.shape, weight.shape, tuple(stride)))(
                self, maps.detach(), weight.detach(), tuple(stride), seed, layout)
        return self._pipeline(maps, weight, tuple(stride), self.generator(maps.device) if noisy else None, layout)

    def _pipeline(
        self, maps: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int], gen, layout: PlaneLayout
    ) -> torch.Tensor:
        """The simulated layer: SLM, filter, camera, electronics (see the module docstring).

        ``gen`` is a generator (eager noise draws) or a seed tensor (the Philox draws of the compiled camera).
        """
        B, N, H, W = maps.shape
        pt, pb, pl, pr = self.pad
        content = maps[..., pt : H - pb, pl : W - pr]  # B, N, h, w
        h, w = content.shape[-2:]
        shared = weight.dim() == 3
        xg = content.reshape(1, B * N, h, w) if shared else content.transpose(0, 1)  # G, T, h, w
        encoding = self.encoding if self.readout == "intensity" else None
        in_stages, k_stages = self.stages_at("input"), self.stages_at("kernel")

        # input plane: full scale per plane, the encoding's SLM parts, SLM stages. Pseudo-negativity is
        # invariant to the full scales (the camera normalises each plane to its own), so they are
        # skipped unless a stage needs them; an offset is relative to them
        sx = None
        if in_stages or (encoding is not None and encoding.scaled):
            sx = group_amax(xg.detach(), 1, layout.tiles_per_plane, (2, 3), absolute=True).clamp_min(TINY)  # G, T, 1, 1
            xg = xg / sx
        x = encoding.encode_input(xg) if encoding is not None else xg.unsqueeze(0)  # A, G, T, h, w
        for stage in in_stages:
            x = stage.input(x, gen)

        # filter: full scale per kernel, the encoding's parts, filter stages, aperture
        sk = None
        kn = weight
        if k_stages or (encoding is not None and encoding.scaled):
            sk = weight.detach().abs().amax(dim=(-2, -1), keepdim=True).clamp_min(TINY)  # [N,] m, 1, 1
            kn = weight / sk
        k = encoding.encode_kernel(kn) if encoding is not None else kn.unsqueeze(0)  # Bk, [N,] m, kh, kw
        for stage in k_stages:
            k = stage.kernel(k, gen)
        psf = None if self.aperture is None else aperture_psf(self.aperture, self.halo, k.dtype, k.device)
        k = effective_kernel(k, psf)

        y = self.measure(x, k, layout, gen)  # G, T, m, oh, ow
        if encoding is not None:
            terms = encoding.offset_terms(xg, kn, psf, layout)  # the offsets' light, known electronically
            if terms is not None:
                y = y - terms
        if sx is not None:
            y = y * sx.unsqueeze(2)  # G, T, 1, 1, 1
        if sk is not None:
            y = y * (sk if shared else sk.unsqueeze(1))  # [N, 1,] m, 1, 1
        return y.reshape(B, N, *y.shape[-3:]) if shared else y.transpose(0, 1)  # B, N, m, oh, ow

    def measure(self, x: torch.Tensor, kernels: torch.Tensor, layout: PlaneLayout, gen) -> torch.Tensor:
        """The camera measurement, recombined: ``(G, T, m, oh, ow)``.

        Args:
            x: ``(A, G, T, h, w)`` encoded input parts, ``G`` kernel groups (1 shared, ``N`` non-shared)
                of ``T`` tiles.
            kernels: ``(Bk, m, kh', kw')`` shared or ``(Bk, N, m, kh', kw')`` effective kernel parts.
            layout: the plane layout.
            gen: generator for the noise stages (``None`` without stages).

        Returns:
            ``sum_ab w_ab y_ab`` of the recovered passes (:meth:`camera`), or the signed field.
        """
        raise NotImplementedError

    def extra_repr(self) -> str:
        H, W = self.slm_resolution
        ap = "" if self.aperture is None else f", aperture={self.aperture} (halo {self.halo})"
        dev = "" if self.device is None else f", device={self.device.name!r}"
        flt = "" if self.filter is None else f", filter={self.filter!r}"
        enc = f", encoding={self.encoding.name!r}" if self.readout == "intensity" else ""
        return (f"slm={H}x{W}, guard={self.guard!r}, readout={self.readout!r}{enc}{ap}{dev}{flt}, "
                f"seed={self.seed}, grad={self.grad!r}")


def _run_pipeline(backend: PhysicalBackend, maps, weight, stride, seed, layout):
    """:meth:`PhysicalBackend._pipeline` as one function for ``torch.compile`` (the ``compile: true`` path)."""
    return backend._pipeline(maps, weight, stride, seed, layout)
