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
* *signed values*: the signed-value encoding (:mod:`~lightning_convshare.optics.signed`) needs
  ``sign_passes`` passes (4 for pseudo-negativity, 2 for ``input_offset``/``kernel_offset``, 1 for
  ``offset``), recombined electronically;
* the *filter* holds one complex value per ``pixels_per_value`` pixels of its modulation (1 complex,
  2 along the columns for a phase-only filter's double-phase encoding, 3 for an amplitude-only
  filter's Burckhardt encoding), so its impulse responses are at most that many times narrower.

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
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from ..errors import GeometryError
from ..layers.backend import ConvBackend
from ..layers.convshare import ConvShareLinear
from ..layers.geometry import ConvGeometry
from .device import FourFDevice
from .encoding import group_amax
from .fourier_plane import FILTER_MODULATIONS
from .layout import PlaneLayout
from .signed import SignedEncoding, create_encoding

__all__ = [
    "LayerPasses",
    "ElectronicReadout",
    "FreeConv",
    "best_arrangement",
    "filter_extent",
    "layer_passes",
    "measure_forward",
    "pass_time",
    "per_layer_times",
]


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


def filter_extent(device: FourFDevice) -> tuple[int, int]:
    """Complex values the Fourier-plane filter holds per axis: its pixels over its modulation's
    ``pixels_per_value`` (the widest impulse response it synthesises)."""
    ph, pw = FILTER_MODULATIONS.get(device.filter.modulation).pixels_per_value
    return device.filter.resolution[0] // ph, device.filter.resolution[1] // pw


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
        GeometryError: when not even one map (or kernel) fits the device.
    """
    best: Optional[LayerPasses] = None
    slm, camera, filt = device.slm.resolution, device.camera.resolution, filter_extent(device)
    orientations = [False] if tile[0] == tile[1] and kernel[0] == kernel[1] else [False, True]
    for transposed in orientations:
        t, k, s, o = tile, kernel, stride, out
        p = pad
        if transposed:
            t, k, s, o = t[::-1], k[::-1], s[::-1], o[::-1]
            p = (pad[2], pad[3], pad[0], pad[1])
        try:
            layout = PlaneLayout.create(t, p, k, s, o, slm)  # leak-free guard and margins
        except GeometryError:
            continue
        axes = []
        for a in range(2):
            axes.append(_axis_options(t[a], (layout.before[a], layout.after[a]), layout.guard[a], k[a],
                                      slm[a], camera[a], filt[a]))
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
        raise GeometryError(
            f"{name}: a {tile[0]}x{tile[1]} map with a {kernel[0]}x{kernel[1]} kernel does not fit the {device.name} 4f "
            f"device (SLM {slm[0]}x{slm[1]}, camera {camera[0]}x{camera[1]}, filter {filt[0]}x{filt[1]} values)"
        )
    return best


def pass_time(input_blocks: int, filter_settings: int, device: FourFDevice) -> float:
    """Seconds for ``input_blocks x filter_settings`` pipelined passes plus one frame of latency per device."""
    passes = input_blocks * filter_settings
    slm_hz, filter_hz, camera_hz = device.slm.hz, device.filter.hz, device.camera.hz
    # inner loop over filter settings (input changes every `filter_settings` passes) or the reverse
    rate_filter_inner = min(camera_hz, filter_hz if filter_settings > 1 else math.inf,
                            slm_hz * filter_settings if input_blocks > 1 else math.inf)
    rate_input_inner = min(camera_hz, slm_hz if input_blocks > 1 else math.inf,
                           filter_hz * input_blocks if filter_settings > 1 else math.inf)
    rate = max(rate_filter_inner, rate_input_inner)
    latency = 1 / slm_hz + 1 / filter_hz + 1 / camera_hz
    return passes / rate + latency


def layer_passes(
    model: nn.Module, batch: int, device: FourFDevice, encoding: str | SignedEncoding | int = "pseudo_negativity"
) -> list[LayerPasses]:
    """:func:`best_arrangement` for every ConvShare layer of ``model`` at batch size ``batch``.

    Args:
        model: a network with ConvShare layers.
        batch: images per inference.
        device: the 4f device.
        encoding: the signed-value encoding (its pass count) or a pass count.

    The token count comes from the model (``patch_embed.num_patches + num_prefix_tokens``) or, for
    non-shared layers, from the layer.
    """
    sign_passes = encoding if isinstance(encoding, int) else create_encoding(encoding).passes
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
    camera frames for a signed-value encoding (a square root per pass, the weighted recombination, the
    full scales of the input planes and kernels, the offset terms: a box filter of the input and the
    kernels' sums, and the full-scale rescaling).

    Frames are preallocated (they arrive by DMA), so only that arithmetic is timed.
    """

    exact_linear = False

    def __init__(self, encoding: str | SignedEncoding | int = "pseudo_negativity") -> None:
        super().__init__()
        if isinstance(encoding, int):  # a pass count: the encoding with that many passes and the most work
            encoding = {4: "pseudo_negativity", 2: "input_offset", 1: "offset"}[encoding]
        self.encoding = create_encoding(encoding)
        self.pad: tuple[int, int, int, int] = (0, 0, 0, 0)
        self._frames: dict[tuple, torch.Tensor] = {}

    def bind(self, geometry: ConvGeometry, name: str = "") -> None:
        self.pad = tuple(geometry.pad)  # type: ignore[assignment]

    def forward(self, maps: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
        B, N, H, W = maps.shape
        kh, kw = weight.shape[-2:]
        out = ((H - kh) // stride[0] + 1, (W - kw) // stride[1] + 1)
        shared, enc = weight.dim() == 3, self.encoding
        G, T = (1, B * N) if shared else (N, B)
        key = (G, T, weight.shape[-3], *out, maps.device, maps.dtype)
        if key not in self._frames:
            self._frames[key] = torch.rand(enc.input_parts, G, T, enc.kernel_parts, weight.shape[-3], *out,
                                           device=maps.device, dtype=maps.dtype)
        y = enc.recombine(self._frames[key].sqrt())  # G, T, m, oh, ow: the square roots and the recombination
        pt, pb, pl, pr = self.pad
        content = maps[..., pt : H - pb, pl : W - pr]  # B, N, h, w
        xg = content.reshape(1, B * N, *content.shape[-2:]) if shared else content.transpose(0, 1)  # G, T, h, w
        sx = group_amax(xg, 1, T, (2, 3), absolute=True)  # G, 1, 1, 1: the planes' full scales, found by the host
        sk = weight.abs().amax(dim=(-2, -1), keepdim=True)  # [N,] m, 1, 1
        if enc.scaled:  # the offsets' light, relative to the full scales
            layout = PlaneLayout.create(xg.shape[-2:], self.pad, (kh, kw), stride, out, (H, W))
            terms = enc.offset_terms(xg / sx, weight / sk, None, layout)
            if terms is not None:
                y = y - terms
        y = y * sx.unsqueeze(2) * (sk if shared else sk.unsqueeze(1))  # the full scales undone
        return y.reshape(B, N, *y.shape[-3:]) if shared else y.transpose(0, 1)  # B, N, m, oh, ow


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
