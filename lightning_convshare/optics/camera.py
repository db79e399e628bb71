"""The camera of the 4f pipeline as fused kernels: detection, Gaussian noise, ADC and recovery.

* :func:`camera_chain`: one eager autograd function over a tensor of passes, drawing its noise with
  ``torch.randn`` from the layer's generator (identical to running the stages one by one).
* :func:`camera_recombined`: all passes of a signed-value encoding (four for pseudo-negativity, two or
  one for the offset encodings) and their weighted recombination as one ``torch.compile`` kernel per
  direction, drawing its noise with Philox inside the kernel (:mod:`~lightning_convshare.optics.rng`),
  the ``optical`` backend's ``compile: true``.
"""
from __future__ import annotations

import functools
import math
import types
import warnings
from typing import Hashable

import torch

from ..errors import ConfigError
from .encoding import PSEUDO_NEGATIVE_WEIGHTS
from .rng import philox_normal_pair

__all__ = ["camera_chain", "camera_recombined", "compiled", "recombined_camera"]


_COMPILED: dict[tuple[str, Hashable], object] = {}
#: compiled variants per function (the global default, 8, is two configurations of a four-shape model)
RECOMPILE_LIMIT = 128
#: guards on the identity of code (functions, methods, classes, modules, builtins) and on globals: they only
#: catch a function or class being replaced (monkeypatched) after the first compile
IDENTITY_GUARDS = frozenset({"CLOSURE_MATCH", "CLASS_MATCH", "BUILTIN_MATCH", "MODULE_MATCH", "FUNCTION_MATCH",
                             "NOT_PRESENT_IN_GENERIC_DICT"})


def value_guards_only(entries) -> list[bool]:
    """``torch.compile``'s ``guard_filter_fn`` for the simulation: keep every guard on the call's values (tensor
    shapes, strides, dtypes and devices, every configuration number, string, length and type reached from the
    arguments, grad mode and the other global state) and drop the guards on code identity and module globals
    (:data:`IDENTITY_GUARDS`, the ``__code__`` of properties). Dynamo evaluates every guard of a cache entry on
    every call: the simulation is called once per layer and step, and the ~300 guards of the backend, most of
    them on the identity of the functions it calls, cost ~0.1 ms a call. What is no longer caught: replacing a
    function, method or class of the package after the first compile (monkeypatching; call
    ``torch._dynamo.reset()`` after doing so)."""
    return [not ((e.is_global and e.guard_type != "DUPLICATE_INPUT") or e.guard_type in IDENTITY_GUARDS
                 or (e.guard_type == "ID_MATCH" and e.name.endswith("__code__"))) for e in entries]


#: the generated wrapper skips its per-call shape and alignment checks (the kernels are called once per layer
#: and step, where the checks' Python cost is a measurable share); Dynamo keeps the value guards only
INDUCTOR_OPTIONS = {"size_asserts": False, "alignment_asserts": False, "scalar_asserts": False}
if hasattr(torch.compiler, "skip_guard_on_globals_unsafe"):  # torch >= 2.8 takes a guard filter
    INDUCTOR_OPTIONS["guard_filter_fn"] = value_guards_only


def _own_code(fn, n: int):
    """A copy of ``fn`` with its own code object (named ``<name>__<n>``): Dynamo keeps its cache on the code
    object, so the copy has a cache of its own."""
    names = {"co_name": f"{fn.__code__.co_name}__{n}"}
    if hasattr(fn.__code__, "co_qualname"):  # Python >= 3.11
        names["co_qualname"] = f"{fn.__qualname__}__{n}"
    code = fn.__code__.replace(**names)
    copy = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__, copy.__qualname__, copy.__module__ = fn.__kwdefaults__, f"{fn.__qualname__}__{n}", fn.__module__
    return copy


def compiled(fn, variant: Hashable = None):
    """``torch.compile(fn, dynamic=False)``, built once per function, ``variant`` and process: one specialisation
    per backend configuration and layer shape (up to :data:`RECOMPILE_LIMIT`). Static shapes on purpose: with
    automatic dynamic shapes, torch 2.14 reused a graph across layers of different widths after a model of
    another size had run in the same process (wrong output shapes; tests/optics/test_compile_shapes.py).

    ``variant`` (the callers pass the layer's shapes) gives each value its own copy of the function's code and
    so its own Dynamo cache (``None``: the function itself). Dynamo looks a call up by evaluating the guards
    of the cache's entries one by one until one holds, so with one cache the four layer shapes of a ViT block
    (qkv, proj, fc1, fc2), called in turn, walked each other's entries on every call: with a cache per shape a
    call evaluates the one entry of its configuration (0.25 ms less per forward of the default model's 16
    layers at batch 2; docs/optics.md, "Benchmarks"). The guards themselves are unchanged
    (:func:`value_guards_only`), so what is compiled and when it recompiles is the same.
    A failure to build the kernel (no C++ compiler, no Triton) is reported as a :class:`ConfigError` with the fix."""
    key = (fn.__name__, variant)
    if key not in _COMPILED:
        copies = sum(name == fn.__name__ and v is not None for name, v in _COMPILED)
        target = fn if variant is None else _own_code(fn, copies + 1)
        # every backend configuration (encoding, device, stages) and layer shape is a specialisation; older
        # torch has no per-function limit
        # copies: torch.compile pops guard_filter_fn out of the options it is given
        for kwargs in ({"recompile_limit": RECOMPILE_LIMIT, "options": dict(INDUCTOR_OPTIONS)},
                       {"options": dict(INDUCTOR_OPTIONS)}, {}):
            try:
                compiled = torch.compile(target, dynamic=False, **kwargs)
                break
            except TypeError:
                continue
        else:
            raise ConfigError("this torch's torch.compile takes none of the options the compiled simulation needs "
                              "(dynamic, options); upgrade torch or set optics.compile=false")

        @functools.wraps(fn)
        def run(*args):
            try:
                with warnings.catch_warnings():  # the filter's complex spectra run as ATen calls inside the graph
                    warnings.filterwarnings("ignore", message="Torchinductor does not support code generation for complex")
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

        _COMPILED[key] = run
    return _COMPILED[key]


class _Camera(torch.autograd.Function):
    """Fused camera chain of one pass tensor for pointwise stages: detect ``|y|^2 / fs``, add
    ``N(0, a I + b)`` (one ``torch.randn`` draw from the caller's generator), quantise to ``levels``
    over ``[0, adc_range]`` (straight-through), recover ``sqrt(fs * I)``; hand-written backward
    ``g * y / out * (1 + a eps / (2 std))``, 0 where the reading is 0. Equal to running the stages one by
    one with the same draws, with a fraction of the memory traffic.
    """

    @staticmethod
    def forward(ctx, y, fs, a: float, b: float, levels: int, adc_range: float, gen):
        eps = torch.randn(y.shape, generator=gen, device=y.device, dtype=y.dtype) if (a or b) else None
        out, std = _camera_forward_eager(y, fs, eps, a, b, levels, adc_range)
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
        return g, None, None, None, None, None, None


def _passes(t: torch.Tensor, weights) -> list[torch.Tensor]:
    """The passes ``t[a, :, :, b]`` of an ``(A, G, T, Bk, ...)`` tensor, in the order of ``weights``."""
    return [t[i, :, :, j] for i, row in enumerate(weights) for j in range(len(row))]


def _pass_noise(shape, device, seed, passes: int = 4) -> tuple[torch.Tensor, ...]:
    """``passes`` independent standard normals per output pixel from ``ceil(passes / 2)`` Philox blocks
    (counters ``n i + j``, ``n`` blocks per pixel), keyed by ``seed``."""
    blocks = math.ceil(passes / 2)
    counter = torch.arange(math.prod(shape), device=device).view(shape) * blocks
    draws: list[torch.Tensor] = []
    for j in range(blocks):
        draws += philox_normal_pair(counter + j if j else counter, seed)
    return tuple(draws[:passes])


def _four_pass_noise(shape, device, seed) -> tuple[torch.Tensor, ...]:
    """Four independent standard normals per output pixel from two Philox blocks (pseudo-negativity)."""
    return _pass_noise(shape, device, seed, 4)


def _one_pass(yi, fi, ei, a: float, b: float, levels: int, adc_range: float):
    """One pass's camera: the recovered amplitude and the gradient factor ``y / out * (1 + a eps / (2 std))``
    (0 where out is 0)."""
    intensity = yi.square() * fi.reciprocal()
    slope = None
    if ei is not None:
        if a:
            std = (intensity * a + b).clamp_min(0).sqrt()
            intensity = intensity + std * ei.to(yi.dtype)
            slope = ei.to(yi.dtype) / std.clamp_min(1e-12) * (a / 2) + 1
        else:
            intensity = intensity + ei.to(yi.dtype) * b**0.5
    if levels:  # codes round half up (floor(v + 1/2): vectorises; eager rounds half to even: ties have measure zero)
        step = adc_range / (levels - 1)
        intensity = torch.floor(intensity.clamp(0, adc_range) * (1 / step) + 0.5) * (fi * step)
    else:
        intensity = intensity * fi
    out = intensity.clamp_min(0).sqrt()
    ratio = torch.where(out > 0, yi / out.clamp_min(1e-12), 0.0)
    return out, (ratio if slope is None else ratio * slope)


def _camera_passes(y, fs, seed, a: float, b: float, levels: int, adc_range: float, weights):
    """Per pass: the recovered amplitude and its gradient factor (:func:`_one_pass`).

    The Gaussian draws come in Philox/Box-Muller pairs: two passes of a pixel share a block; a single
    pass pairs neighbouring tiles (``T`` even), so no draw is wasted.
    """
    n = sum(len(row) for row in weights)
    T = y.shape[2]
    if n == 1 and seed is not None and T % 2 == 0:  # one pass: tiles 2i and 2i + 1 share a block
        yv = y[0, :, :, 0].unflatten(1, (T // 2, 2))  # G, T/2, 2, ...
        f = fs[0, :, :, 0]
        fv = f.unsqueeze(2) if f.shape[1] == 1 else f.unflatten(1, (T // 2, 2))  # G, T/2 | 1, 2 | 1, ...
        shape = yv.shape[:2] + yv.shape[3:]
        z = philox_normal_pair(torch.arange(math.prod(shape), device=y.device).view(shape), seed)
        pairs = [_one_pass(yv[:, :, i], fv[:, :, min(i, fv.shape[2] - 1)], z[i], a, b, levels, adc_range) for i in (0, 1)]
        out = torch.stack((pairs[0][0], pairs[1][0]), dim=2).flatten(1, 2)  # G, T, ...
        slope = torch.stack((pairs[0][1], pairs[1][1]), dim=2).flatten(1, 2)
        return [out], [slope]
    eps = _pass_noise(y.shape[1:3] + y.shape[4:], y.device, seed, n) if seed is not None else (None,) * n
    outs, slopes = [], []
    for yi, fi, ei in zip(_passes(y, weights), _passes(fs, weights), eps, strict=True):
        out, slope = _one_pass(yi, fi, ei, a, b, levels, adc_range)
        outs.append(out)
        slopes.append(slope)
    return outs, slopes


def recombined_camera(y, fs, seed, a: float, b: float, levels: int, adc_range: float, weights):
    """Camera chain of every pass and the weighted recombination ``sum_ab w_ab out_ab`` as plain tensor
    code (no autograd of its own), for a compiled caller: ``y`` ``(A, G, T, Bk, ...)`` fields, ``fs`` their
    full scales expanded to the pass dimensions, ``seed`` the Philox key (``None``: no noise)."""
    return _recombined_forward(y, fs, seed, a, b, levels, adc_range, weights)


def _recombined_forward(y, fs, seed, a: float, b: float, levels: int, adc_range: float, weights):
    """Camera chain of every pass and the weighted recombination ``sum_ab w_ab out_ab``, one kernel."""
    outs, _ = _camera_passes(y, fs, seed, a, b, levels, adc_range, weights)
    w = [v for row in weights for v in row]
    total = outs[0] * w[0]
    for o, wi in zip(outs[1:], w[1:], strict=True):
        total = total + o * wi
    return total


def _recombined_backward(grad, y, fs, seed, a: float, b: float, levels: int, adc_range: float, weights):
    """Gradient for the ``(A, G, T, Bk, ...)`` field: ``w_ab g * y / out * (1 + a eps / (2 std))`` per
    pass, the draws recomputed from ``seed``."""
    _, slopes = _camera_passes(y, fs, seed, a, b, levels, adc_range, weights)
    it = iter(slopes)
    rows = [torch.stack([grad * next(it) * w for w in row], dim=2) for row in weights]  # G, T, Bk, ...
    return torch.stack(rows, dim=0)  # A, G, T, Bk, ...


class _RecombinedCamera(torch.autograd.Function):
    """:func:`_recombined_forward` / :func:`_recombined_backward` as compiled kernels."""

    @staticmethod
    def forward(ctx, y, fs, a: float, b: float, levels: int, adc_range: float, weights, gen):
        seed = torch.randint(0, 2**62, (), generator=gen, device=y.device) if (a or b) else None
        ctx.save_for_backward(y, fs, seed)
        ctx.args = (a, b, levels, adc_range, weights)
        return compiled(_recombined_forward, y.shape)(y, fs, seed, a, b, levels, adc_range, weights)

    @staticmethod
    def backward(ctx, grad):
        y, fs, seed = ctx.saved_tensors
        dy = compiled(_recombined_backward, y.shape)(grad.contiguous(), y, fs, seed, *ctx.args)
        return dy, None, None, None, None, None, None, None


def camera_recombined(
    y: torch.Tensor, fs: torch.Tensor, a: float = 0.0, b: float = 0.0, levels: int = 0, gen=None, *,
    weights: tuple[tuple[float, ...], ...] = PSEUDO_NEGATIVE_WEIGHTS, adc_range: float = 1.0,
) -> torch.Tensor:
    """:func:`camera_chain` of every pass of a signed-value encoding and their recombination, as one
    ``torch.compile`` kernel (the Gaussian draws are Philox: ``passes`` per output pixel from
    ``ceil(passes / 2)`` blocks).

    Args:
        y: ``(A, G, T, Bk, ...)`` camera fields of the passes (input part, ..., kernel part, ...).
        fs: full scales, broadcastable to ``y`` with full pass dimensions.
        a, b, levels, gen: as for :func:`camera_chain`.
        weights: ``(A, Bk)`` recombination weights (default: pseudo-negativity's ``++ - +- - -+ + --``).
        adc_range: the ADC's span in full scales.

    Returns:
        ``(G, T, ...)``: ``sum_ab w_ab out_ab``.
    """
    A, Bk = len(weights), len(weights[0])
    fs = fs.detach().expand(A, *fs.shape[1:3], Bk, *fs.shape[4:])
    weights = tuple(tuple(float(w) for w in row) for row in weights)
    return _RecombinedCamera.apply(y, fs, float(a), float(b), int(levels), float(adc_range), weights, gen)


def _camera_forward_eager(y, fs, eps, a: float, b: float, levels: int, adc_range: float = 1.0):
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
        step = adc_range / (levels - 1)
        intensity.clamp_(0, adc_range).div_(step).round_().mul_(fs * step)
    else:
        intensity.mul_(fs)
    return intensity.clamp_min_(0).sqrt_(), std


def camera_chain(
    y: torch.Tensor, fs: torch.Tensor, a: float = 0.0, b: float = 0.0, levels: int = 0, gen=None, *, adc_range: float = 1.0
) -> torch.Tensor:
    """Fused detection -> Gaussian noise ``N(0, a I + b)`` -> ``levels``-level ADC -> ``sqrt`` recovery.

    Args:
        y: camera field (non-negative parts).
        fs: full-scale intensity, broadcastable to ``y`` (treated as a constant).
        a, b: variance coefficients (shot noise ``a = 1 / photons``, read noise ``b = sigma^2``).
        levels: ADC levels (``2 ** bits``), 0 for none.
        gen: generator of the Gaussian draw.
        adc_range: the ADC's span in full scales (codes ``adc_range / (levels - 1)`` apart).

    Returns:
        The recovered field amplitude, shaped like ``y``.
    """
    return _Camera.apply(y, fs.detach(), float(a), float(b), int(levels), float(adc_range), gen)
