"""The 4f speed model: optical passes per ConvShare layer, their time, and the electronic rest.

**Passes.** One 4f pass images the input SLM through the Fourier-plane filter onto the camera. For a
layer with ``T`` token maps per kernel group (``B * N`` shared; ``B`` per token position when
non-shared, ``N`` groups) and ``m`` kernels:

* *input tiling*: a block of ``nh x nw`` maps fits the SLM with guard bands and margins
  (:class:`~lightning_convshare.optics.layout.PlaneLayout`);
* *kernel tiling*: ``qh x qw`` kernels side by side in the filter's impulse response produce
  ``qh x qw`` shifted copies of the output in one pass. The copies must not overlap on the camera, so
  each needs the block's full light footprint ``n h + (n - 1) g + k - 1`` per axis; ``q`` copies need
  ``q`` footprints of camera and ``(q - 1)`` footprints plus a kernel of filter extent;
* *pseudo-negativity*: signed inputs and kernels need ``sign_passes`` (4) passes, recombined
  electronically.

``passes = groups * ceil(T / (nh nw)) * ceil(m / (qh qw)) * sign_passes``, minimised over the block
sizes, the copy grid and the map orientation (a map and its kernels may be transposed).

**Time.** Passes are pipelined: the camera exposes one frame per pass while the SLMs load the next.
In the inner loop one modulator changes every pass, the other only every ``inner`` passes, so
``rate = min(f_camera, f_inner, f_outer * inner)``, with the loop order chosen for the higher rate;
each layer adds one frame of each device as pipeline latency (the next layer needs this one's
output). Everything else (attention products, softmax, norms, activations, residuals, the
electronic readout: square root, recombination, bias) is *measured* on the local device.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from ..errors import GeometryError
from ..layers.backend import ConvBackend
from ..layers.convshare import ConvShareLinear
from ..registry import Registry
from .layout import PlaneLayout, pair

__all__ = [
    "DEVICES",
    "FourFDevice",
    "LayerPasses",
    "ElectronicReadout",
    "FreeConv",
    "best_arrangement",
    "layer_passes",
    "measure_forward",
    "register_device",
]


@dataclass(frozen=True)
class FourFDevice:
    """Resolutions (pixels ``(H, W)``) and frame rates (Hz) of a 4f system, with where they come from."""

    name: str
    slm: tuple[int, int]
    slm_hz: float
    filter: tuple[int, int]
    filter_hz: float
    camera: tuple[int, int]
    camera_hz: float
    source: str = ""

    def with_overrides(self, **changes: Any) -> FourFDevice:
        """A copy with some fields replaced (``None`` values are ignored; resolutions as ``(H, W)`` or ``"HxW"``)."""
        def resolution(v: Any) -> tuple[int, int]:
            if isinstance(v, str):
                try:
                    return pair([int(p) for p in v.lower().split("x")], "resolution")
                except ValueError:
                    raise GeometryError(f"resolution {v!r} must look like HxW, e.g. 1080x1920") from None
            return pair(v, "resolution")

        changes = {k: (resolution(v) if k in ("slm", "filter", "camera") else float(v))
                   for k, v in changes.items() if v is not None}
        return replace(self, **changes)

    def describe(self) -> str:
        fmt = lambda r, hz: f"{r[0]}x{r[1]} @ {hz:,.0f} Hz"  # noqa: E731
        return (f"{self.name}: SLM {fmt(self.slm, self.slm_hz)}, filter {fmt(self.filter, self.filter_hz)}, "
                f"camera {fmt(self.camera, self.camera_hz)}")


DEVICES: Registry[FourFDevice] = Registry("4f device")


def register_device(device: FourFDevice) -> FourFDevice:
    """Register a device preset under its name."""
    return DEVICES.register(device.name)(device)


register_device(FourFDevice(
    "dmd-10khz", (1080, 1920), 10_000.0, (1080, 1920), 10_000.0, (1080, 1920), 10_000.0,
    "Miscuglio et al., 'Massively parallel amplitude-only Fourier neural network', Optica 7(12):1812 (2020): "
    "amplitude-only DMDs (1920x1080, ~2 megapixel) for input and filter at 10 kHz; the camera is assumed "
    "to keep pace (a high-speed camera read out at the SLM's resolution).",
))
register_device(FourFDevice(
    "lcos-60hz", (1080, 1920), 60.0, (1080, 1920), 60.0, (2048, 2048), 100.0,
    "Vendor datasheets: Holoeye PLUTO-2.1 LCoS SLM (1920x1080, 60 Hz) for input and filter, "
    "Hamamatsu ORCA-Flash4.0 V3 sCMOS camera (2048x2048, 100 frames/s at full resolution).",
))
register_device(FourFDevice(
    "dmd-23khz", (1080, 1920), 23_148.0, (1080, 1920), 23_148.0, (1024, 1024), 21_000.0,
    "Vendor datasheets: TI DLP9500 DMD (1920x1080, 23,148 Hz binary patterns; grey levels need several "
    "binary frames, so this is an upper bound) for input and filter, Photron FASTCAM SA-Z camera "
    "(1024x1024 at 21,000 frames/s).",
))


@dataclass
class LayerPasses:
    """The best arrangement found for one layer and its optical time."""

    name: str
    map: tuple[int, int]
    kernel: tuple[int, int]
    kernels: int
    groups: int
    tiles: int
    tiles_per_pass: int
    kernels_per_pass: int
    sign_passes: int
    passes: int
    transposed: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _axis_options(
    tile: int, reach: tuple[int, int], guard: int, k: int, slm: int, camera: int, filt: int
) -> list[tuple[int, int]]:
    """``(tiles, copies)`` pairs along one axis, each the most tiles for its number of copies."""
    before, after = reach
    out = []
    n_slm = (slm - before - after + guard) // (tile + guard)
    if n_slm < 1:
        return out
    for q in range(1, camera + 1):
        # q copies: q footprints on the camera, (q - 1) footprints + a kernel of filter extent
        best = 0
        lo, hi = 1, n_slm
        while lo <= hi:  # footprints grow with n: binary search the largest that fits
            n = (lo + hi) // 2
            foot = n * tile + (n - 1) * guard + k - 1
            if q * foot <= camera and (q - 1) * foot + k <= filt:
                best, lo = n, n + 1
            else:
                hi = n - 1
        if best == 0:
            break
        out.append((best, q))
    return out


def best_arrangement(
    name: str,
    tile: tuple[int, int],
    pad: tuple[int, int, int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    out: tuple[int, int],
    kernels: int,
    tiles: int,
    groups: int,
    device: FourFDevice,
    sign_passes: int = 4,
) -> LayerPasses:
    """Fewest passes over input blocks, kernel copies and orientation (see the module docstring).

    Raises:
        GeometryError: when not even one map fits the device.
    """
    best: Optional[LayerPasses] = None
    orientations = [False] if tile[0] == tile[1] and kernel[0] == kernel[1] else [False, True]
    for transposed in orientations:
        t, k, s, o = tile, kernel, stride, out
        p = pad
        if transposed:
            t, k, s, o = t[::-1], k[::-1], s[::-1], o[::-1]
            p = (pad[2], pad[3], pad[0], pad[1])
        layout = PlaneLayout.create(t, p, k, s, o, device.slm)  # leak-free guard and margins
        axes = []
        for a in range(2):
            axes.append(_axis_options(t[a], (layout.before[a], layout.after[a]), layout.guard[a], k[a],
                                      device.slm[a], device.camera[a], device.filter[a]))
        for (nh, qh) in axes[0]:
            for (nw, qw) in axes[1]:
                per, copies = nh * nw, min(qh * qw, kernels)
                n_in, n_k = groups * math.ceil(tiles / per), math.ceil(kernels / copies)
                passes = n_in * n_k * sign_passes
                seconds = pass_time(n_in, n_k * sign_passes, device)
                cand = LayerPasses(name, tile, kernel, kernels, groups, tiles, min(per, tiles), copies,
                                   sign_passes, passes, transposed, seconds)
                if best is None or (cand.seconds, cand.kernels_per_pass) < (best.seconds, best.kernels_per_pass):
                    best = cand
    if best is None:
        raise GeometryError(f"{name}: a {tile[0]}x{tile[1]} map does not fit the {device.name} 4f device")
    return best


def pass_time(input_blocks: int, filter_settings: int, device: FourFDevice) -> float:
    """Seconds for ``input_blocks x filter_settings`` pipelined passes plus one frame of latency per device."""
    passes = input_blocks * filter_settings
    # inner loop over filter settings (input changes every `filter_settings` passes) or the reverse
    rate_filter_inner = min(device.camera_hz, device.filter_hz if filter_settings > 1 else math.inf,
                            device.slm_hz * filter_settings if input_blocks > 1 else math.inf)
    rate_input_inner = min(device.camera_hz, device.slm_hz if input_blocks > 1 else math.inf,
                           device.filter_hz * input_blocks if filter_settings > 1 else math.inf)
    rate = max(rate_filter_inner, rate_input_inner)
    latency = 1 / device.slm_hz + 1 / device.filter_hz + 1 / device.camera_hz
    return passes / rate + latency


def layer_passes(model: nn.Module, batch: int, device: FourFDevice, sign_passes: int = 4) -> list[LayerPasses]:
    """:func:`best_arrangement` for every ConvShare layer of ``model`` at batch size ``batch``.

    The token count comes from the model (``patch_embed.num_patches + num_prefix_tokens``) or, for
    non-shared layers, from the layer.
    """
    tokens = getattr(getattr(model, "patch_embed", None), "num_patches", None)
    if tokens is not None:
        tokens += getattr(model, "num_prefix_tokens", 0)
    out = []
    for name, layer in model.named_modules():
        if not isinstance(layer, ConvShareLinear):
            continue
        g = layer.geometry
        n = layer.num_tokens or tokens
        if n is None:
            raise GeometryError(f"{name}: cannot tell the token count of {type(model).__name__}; pass a timm ViT")
        groups, tiles = (1, batch * n) if layer.shared else (n, batch)
        out.append(best_arrangement(name, g.map_shape, g.pad, g.kernel, g.stride, g.out_shape, g.num_kernels,
                                    tiles, groups, device, sign_passes))
    return out


class ElectronicReadout(ConvBackend):
    """Stand-in for the optics when timing the electronic rest: the work a host does per layer on
    camera frames (square root of each of the four passes, recombination, full-scale rescaling).

    Frames are preallocated (they arrive by DMA), so only that arithmetic is timed.
    """

    exact_linear = False

    def __init__(self, sign_passes: int = 4) -> None:
        super().__init__()
        self.sign_passes = sign_passes
        self._frames: dict[tuple, torch.Tensor] = {}

    def forward(self, maps: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
        B, N, H, W = maps.shape
        kh, kw = weight.shape[-2:]
        out = (weight.shape[-3], (H - kh) // stride[0] + 1, (W - kw) // stride[1] + 1)
        key = (B, N, *out, maps.device, maps.dtype)
        if key not in self._frames:
            self._frames[key] = torch.rand(self.sign_passes, B, N, *out, device=maps.device, dtype=maps.dtype)
        frames = self._frames[key].sqrt()  # P, B, N, m, oh, ow
        if self.sign_passes == 4:
            y = (frames[0] - frames[1]) - (frames[2] - frames[3])
        else:
            y = frames[0] - frames[1] if self.sign_passes == 2 else frames[0]
        return y * 1.0  # full-scale rescaling


class FreeConv(ConvBackend):
    """Stand-in for infinitely fast optics with no readout cost (cached zeros): times the Amdahl bound."""

    exact_linear = False

    def __init__(self) -> None:
        super().__init__()
        self._zeros: dict[tuple, torch.Tensor] = {}

    def forward(self, maps: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
        B, N, H, W = maps.shape
        kh, kw = weight.shape[-2:]
        key = (B, N, weight.shape[-3], (H - kh) // stride[0] + 1, (W - kw) // stride[1] + 1, maps.device, maps.dtype)
        if key not in self._zeros:
            self._zeros[key] = torch.zeros(key[:5], device=maps.device, dtype=maps.dtype)
        return self._zeros[key]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_forward(
    fns: dict[str, Callable[[], Any]], device: torch.device, rounds: int = 5, repeats: int = 3, warmup: int = 2
) -> dict[str, float]:
    """Median seconds per call of each function, measured interleaved round by round (so machine
    noise hits all alike)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(repeats):
                fn()
            _sync(device)
            times[name].append((time.perf_counter() - t0) / repeats)
    return {k: statistics.median(v) for k, v in times.items()}


def per_layer_times(model: nn.Module, x: torch.Tensor, layers: Iterable[str], rounds: int = 5) -> dict[str, float]:
    """Median forward seconds of each named layer on the input it receives inside ``model``."""
    names = set(layers)
    inputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: inputs.__setitem__(n, args[0].detach()))
             for n, m in model.named_modules() if n in names]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    modules = dict(model.named_modules())
    return measure_forward({n: (lambda n=n: modules[n](inputs[n])) for n in inputs}, x.device, rounds=rounds)
