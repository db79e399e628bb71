"""The camera of the 4f pipeline as fused kernels: detection, Gaussian noise, ADC and recovery.

* :func:`camera_chain`: one eager autograd function over a tensor of passes, drawing its noise with
  ``torch.randn`` from the layer's generator (identical to running the stages one by one).
* :func:`camera_recombined`: the four pseudo-negative passes and their recombination as one
  ``torch.compile`` kernel per direction, drawing its noise with Philox inside the kernel
  (:mod:`~lightning_convshare.optics.rng`), the ``optical`` backend's ``compile: true``.
"""
from __future__ import annotations

import functools
import math

import torch

from ..errors import ConfigError
from .rng import philox_normal_pair

__all__ = ["camera_chain", "camera_recombined"]


_COMPILED: dict[str, object] = {}


def _compiled(fn):
    """``torch.compile(fn)``, built once per function and process (automatic dynamic shapes, so the
    layers' different shapes and a short last batch do not each compile anew). A failure to build
    the kernel (no C++ compiler, no Triton) is reported as a :class:`ConfigError` with the fix."""
    if fn.__name__ not in _COMPILED:
        compiled = torch.compile(fn)

        @functools.wraps(fn)
        def run(*args):
            try:
                return compiled(*args)
            except Exception as e:
                if not type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
                    raise
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ConfigError(
                    f"optics compile=true: torch.compile could not build the camera kernel ({first[:300]}). It needs a "
                    "C++ compiler on CPU (e.g. apt install g++) or Triton on GPU; or set optics.compile=false to run "
                    "the eager camera chain"
                ) from e

        _COMPILED[fn.__name__] = run
    return _COMPILED[fn.__name__]


class _Camera(torch.autograd.Function):
    """Fused camera chain of one pass tensor for pointwise stages: detect ``|y|^2 / fs``, add
    ``N(0, a I + b)`` (one ``torch.randn`` draw from the caller's generator), quantise to ``levels``
    (straight-through), recover ``sqrt(fs * I)``; hand-written backward ``g * y / out * (1 + a eps /
    (2 std))``, 0 where the reading is 0. Equal to running the stages one by one with the same draws,
    with a fraction of the memory traffic.
    """

    @staticmethod
    def forward(ctx, y, fs, a: float, b: float, levels: int, gen):
        eps = torch.randn(y.shape, generator=gen, device=y.device, dtype=y.dtype) if (a or b) else None
        out, std = _camera_forward_eager(y, fs, eps, a, b, levels)
        ctx.save_for_backward(y, out, std, eps if a else None)
        ctx.a = a
        return out

    @staticmethod
    def backward(ctx, grad):
        y, out, std, eps = ctx.saved_tensors
        g = out.clamp_min(1e-12)
        torch.div(y, g, out=g).mul_(grad).masked_fill_(out == 0, 0.0)
        if std is not None:
            g.mul_((eps / std.clamp_min(1e-12)).mul_(ctx.a / 2).add_(1))
        return g, None, None, None, None, None


def _passes(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The four pseudo-negative passes ``++, +-, -+, --`` of an ``(A=2, G, T, Bk=2, ...)`` tensor."""
    return t[0, :, :, 0], t[0, :, :, 1], t[1, :, :, 0], t[1, :, :, 1]


def _four_pass_noise(shape, device, seed) -> tuple[torch.Tensor, ...]:
    """Four independent standard normals per output pixel from two Philox blocks (counters ``2 i``
    and ``2 i + 1``), keyed by ``seed``."""
    counter = torch.arange(math.prod(shape), device=device).view(shape) * 2
    return (*philox_normal_pair(counter, seed), *philox_normal_pair(counter + 1, seed))


def _four_pass_camera(y, fs, seed, a: float, b: float, levels: int):
    """Per pass: the recovered amplitude, the ratio ``y / out`` (0 where out is 0) and the noise factor
    ``1 + a eps / (2 std)`` of the gradient."""
    eps = _four_pass_noise(y.shape[1:3] + y.shape[4:], y.device, seed) if seed is not None else (None,) * 4
    outs, slopes = [], []
    for yi, fi, ei in zip(_passes(y), _passes(fs), eps, strict=True):
        intensity = yi.square() / fi
        slope = None
        if ei is not None:
            if a:
                std = (intensity * a + b).clamp_min(0).sqrt()
                intensity = intensity + std * ei.to(yi.dtype)
                slope = ei.to(yi.dtype) / std.clamp_min(1e-12) * (a / 2) + 1
            else:
                intensity = intensity + ei.to(yi.dtype) * b**0.5
        if levels:
            step = 1.0 / (levels - 1)
            intensity = torch.round(intensity.clamp(0, 1) / step) * (fi * step)
        else:
            intensity = intensity * fi
        out = intensity.clamp_min(0).sqrt()
        outs.append(out)
        ratio = torch.where(out > 0, yi / out.clamp_min(1e-12), 0.0)
        slopes.append(ratio if slope is None else ratio * slope)
    return outs, slopes


def _four_pass_forward(y, fs, seed, a: float, b: float, levels: int):
    """Camera chain of all four passes and their recombination ``++ - +- - -+ + --``, one kernel."""
    (pp, pn, np_, nn_), _ = _four_pass_camera(y, fs, seed, a, b, levels)
    return (pp - pn) - (np_ - nn_)


def _four_pass_backward(grad, y, fs, seed, a: float, b: float, levels: int):
    """Gradient for the ``(2, G, T, 2, ...)`` field: ``+- g * y / out * (1 + a eps / (2 std))`` per pass,
    the draws recomputed from ``seed``."""
    _, (pp, pn, np_, nn_) = _four_pass_camera(y, fs, seed, a, b, levels)
    pos = torch.stack((grad * pp, -grad * pn), dim=2)
    neg = torch.stack((-grad * np_, grad * nn_), dim=2)
    return torch.stack((pos, neg), dim=0)


class _FourPassCamera(torch.autograd.Function):
    """:func:`_four_pass_forward` / :func:`_four_pass_backward` as compiled kernels."""

    @staticmethod
    def forward(ctx, y, fs, a: float, b: float, levels: int, gen):
        seed = torch.randint(0, 2**62, (), generator=gen, device=y.device) if (a or b) else None
        ctx.save_for_backward(y, fs, seed)
        ctx.args = (a, b, levels)
        return _compiled(_four_pass_forward)(y, fs, seed, a, b, levels)

    @staticmethod
    def backward(ctx, grad):
        y, fs, seed = ctx.saved_tensors
        return _compiled(_four_pass_backward)(grad.contiguous(), y, fs, seed, *ctx.args), None, None, None, None, None


def camera_recombined(
    y: torch.Tensor, fs: torch.Tensor, a: float = 0.0, b: float = 0.0, levels: int = 0, gen=None
) -> torch.Tensor:
    """:func:`camera_chain` of the four pseudo-negative passes and their recombination, as one
    ``torch.compile`` kernel (the Gaussian draws are Philox, four per output pixel from two blocks).

    Args:
        y: ``(2, G, T, 2, ...)`` camera fields of the passes (input part, ..., kernel part, ...).
        fs: full scales, broadcastable to ``y`` with the pass dimensions of size 2.
        a, b, levels, gen: as for :func:`camera_chain`.

    Returns:
        ``(G, T, ...)``: ``out++ - out+- - out-+ + out--``.
    """
    fs = fs.detach().expand(2, *fs.shape[1:3], 2, *fs.shape[4:])
    return _FourPassCamera.apply(y, fs, float(a), float(b), int(levels), gen)


def _camera_forward_eager(y, fs, eps, a: float, b: float, levels: int):
    """Detection, Gaussian noise from the given draw ``eps``, ADC and recovery of one pass tensor,
    in place where possible; returns ``(out, std)``."""
    intensity = y.square().div_(fs)
    std = None
    if eps is not None:
        if a:
            std = (intensity * a).add_(b).clamp_min_(0).sqrt_()
            intensity.addcmul_(std, eps)
        else:
            intensity.add_(eps, alpha=b**0.5)
    if levels:
        step = 1.0 / (levels - 1)
        intensity.clamp_(0, 1).div_(step).round_().mul_(fs * step)
    else:
        intensity.mul_(fs)
    return intensity.clamp_min_(0).sqrt_(), std


def camera_chain(y: torch.Tensor, fs: torch.Tensor, a: float = 0.0, b: float = 0.0, levels: int = 0, gen=None) -> torch.Tensor:
    """Fused detection -> Gaussian noise ``N(0, a I + b)`` -> ``levels``-level ADC -> ``sqrt`` recovery.

    Args:
        y: camera field (non-negative parts).
        fs: full-scale intensity, broadcastable to ``y`` (treated as a constant).
        a, b: variance coefficients (shot noise ``a = 1 / photons``, read noise ``b = sigma^2``).
        levels: ADC levels (``2 ** bits``), 0 for none.
        gen: generator of the Gaussian draw.

    Returns:
        The recovered field amplitude, shaped like ``y``.
    """
    return _Camera.apply(y, fs.detach(), float(a), float(b), int(levels), gen)
