"""Value encodings of the 4f pipeline: quantisation, pseudo-negativity, the aperture, detection.

Plain differentiable tensor functions shared by the ``fourier``, ``optical`` and ``wave`` backends.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "aperture_psf",
    "effective_kernel",
    "gaussian_noise",
    "quantize",
    "recombine",
    "recombine_passes",
    "safe_sqrt",
    "split_signed",
    "group_amax",
    "PSEUDO_NEGATIVE_WEIGHTS",
]


class _QuantizeST(torch.autograd.Function):
    """Round to a uniform grid in the forward pass; identity gradient (straight-through)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, levels: int, lo: float, hi: float) -> torch.Tensor:
        step = (hi - lo) / (levels - 1)
        return x.clamp(lo, hi).sub_(lo).div_(step).round_().mul_(step).add_(lo)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None, None, None


def quantize(x: torch.Tensor, levels: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """Quantise ``x`` to ``levels`` equally spaced values in ``[lo, hi]`` (clipping outside).

    The forward pass is exact rounding (at most ``levels`` distinct values); the backward pass
    is the straight-through estimator (identity gradient; values are normalised to the range, so
    clipping only ever touches noise excursions).

    >>> quantize(torch.tensor([0.0, 0.26, 0.74, 1.3]), levels=3)
    tensor([0.0000, 0.5000, 0.5000, 1.0000])
    """
    if levels < 2:
        raise ValueError(f"quantisation needs at least 2 levels, got {levels}")
    return _QuantizeST.apply(x, int(levels), float(lo), float(hi))


class _SafeSqrt(torch.autograd.Function):
    """``sqrt(max(x, 0))`` whose gradient stays finite: ``1 / (2 sqrt(max(x, eps)))``, and 0 where the
    result is 0 (a reading clipped or rounded to zero carries no signal, hence no gradient)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:
        out = x.clamp_min(0).sqrt_()
        ctx.save_for_backward(out)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (out,) = ctx.saved_tensors
        # a reading of zero (clipped or rounded to 0) carries no gradient, instead of 1 / (2 eps)
        return torch.where(out > 0, grad / out.clamp_min(ctx.eps).mul_(2), 0.0), None


def safe_sqrt(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Square root of a detected intensity (negative noise excursions read as 0), finite gradients."""
    return _SafeSqrt.apply(x, eps)


class _Gaussian(torch.autograd.Function):
    """``x + sqrt(a x + b) * eps``: reparameterised Gaussian noise whose variance is affine in the signal."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, a: float, b: float, gen) -> torch.Tensor:
        eps = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        if a == 0:
            ctx.a = 0.0
            return eps.mul_(b**0.5).add_(x)
        std = (x * a).add_(b).clamp_min_(0).sqrt_()
        ctx.save_for_backward(std, eps)
        ctx.a = a
        return torch.addcmul(x, std, eps)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.a == 0:
            return grad, None, None, None
        std, eps = ctx.saved_tensors
        slope = eps / std.clamp_min(1e-12)  # d std / d x = a / (2 std)
        return slope.mul_(ctx.a / 2).add_(1).mul_(grad), None, None, None


def gaussian_noise(x: torch.Tensor, a: float, b: float, gen=None) -> torch.Tensor:
    """Add ``N(0, a x + b)`` noise, differentiable in ``x`` (the shot-noise surrogate is ``a = 1 / photons``)."""
    return _Gaussian.apply(x, float(a), float(b), gen)


def split_signed(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Pseudo-negativity: ``x = x+ - x-`` with both parts non-negative, stacked along ``dim``."""
    return torch.stack((x.clamp_min(0), (-x).clamp_min(0)), dim=dim)


def recombine(parts: torch.Tensor, input_dim: int, kernel_dim: int) -> torch.Tensor:
    """Electronic recombination of the four pseudo-negative passes: ``++ - +- - -+ + --``."""
    pos, neg = parts.unbind(input_dim)
    kernel_dim = kernel_dim - 1 if kernel_dim > input_dim else kernel_dim
    pp, pn = pos.unbind(kernel_dim)
    np_, nn_ = neg.unbind(kernel_dim)
    return (pp - pn) - (np_ - nn_)


def group_amax(x: torch.Tensor, dim: int, size: int, reduce_dims: tuple[int, ...] = (), absolute: bool = False) -> torch.Tensor:
    """Maximum over consecutive groups of ``size`` entries along ``dim`` (and over ``reduce_dims``),
    broadcast back to every member: the per-plane full scale of tiles assigned plane by plane.

    Args:
        x: any tensor.
        dim: the tile dimension (groups are ``[0, size)``, ``[size, 2 size)``, ...).
        size: tiles per plane.
        reduce_dims: further dimensions reduced with the group (e.g. the pixels of each tile).
        absolute: the maximum of ``|x|`` (computed from max and min, without a copy of ``x``).

    Returns:
        A tensor broadcastable to ``x`` (size 1 on ``reduce_dims``, and on ``dim`` when all tiles
        are on one plane).
    """
    dim = dim % x.dim()
    reduce_dims = tuple(d % x.dim() for d in reduce_dims)

    def peak(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        if not dims:
            return t.abs() if absolute else t
        hi = t.amax(dim=dims, keepdim=True)
        return torch.maximum(hi, t.amin(dim=dims, keepdim=True).neg_()) if absolute else hi

    T = x.shape[dim]
    if T <= size:  # one plane: one reduction, a broadcastable result, no copy of x
        return peak(x, (dim, *reduce_dims))
    m = peak(x, reduce_dims)
    P = math.ceil(T / size)
    pad = [0, 0] * (m.dim() - dim - 1) + [0, P * size - T]
    m = F.pad(m, pad)  # ..., P*size, ...
    grouped = m.unflatten(dim, (P, size))  # ..., P, size, ...
    g = grouped.amax(dim=dim + 1, keepdim=True).expand_as(grouped)
    return g.flatten(dim, dim + 1).narrow(dim, 0, T)


def aperture_psf(cutoff: float, halo: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Coherent PSF of a circular pupil, sampled on the SLM pixel grid, truncated to ``2 halo + 1``.

    Args:
        cutoff: pupil radius as a fraction of the Nyquist frequency (0.5 cycles/pixel); 1 passes
            the inscribed circle of the sampled band, ``sqrt(2)`` all of it.
        halo: truncation radius in pixels.

    Returns:
        ``(2 halo + 1, 2 halo + 1)`` amplitude PSF, normalised to unit sum (DC gain 1), symmetric.
    """
    size = 2 * halo + 1
    M = max(64, 8 * size)  # fine frequency grid: the PSF's periodic copies are M pixels apart
    f = torch.fft.fftfreq(M, dtype=torch.float64)
    rho = torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    pupil = (rho <= 0.5 * cutoff + 1e-12).to(torch.complex128)
    psf = torch.fft.fftshift(torch.fft.ifft2(pupil).real)  # M, M, centred at M//2
    c = M // 2
    psf = psf[c - halo : c + halo + 1, c - halo : c + halo + 1]
    return (psf / psf.sum()).to(dtype=dtype, device=device)


def effective_kernel(kernel: torch.Tensor, psf: torch.Tensor | None) -> torch.Tensor:
    """Fold the aperture band-limit into the kernel: ``kernel (full conv) psf``.

    Args:
        kernel: ``(..., kh, kw)``.
        psf: ``(2h + 1, 2h + 1)`` or ``None`` (no band-limit).

    Returns:
        ``(..., kh + 2h, kw + 2h)``.
    """
    if psf is None:
        return kernel
    *lead, kh, kw = kernel.shape
    h = psf.shape[-1] // 2
    flat = F.pad(kernel.reshape(-1, 1, kh, kw), (2 * h,) * 4)  # K, 1, kh+4h, kw+4h
    out = F.conv2d(flat, psf.to(kernel)[None, None])  # K, 1, kh+2h, kw+2h
    return out.reshape(*lead, kh + 2 * h, kw + 2 * h)


#: the four pseudo-negative passes' weights ``++ - +- - -+ + --`` as ``(input part, kernel part)``
PSEUDO_NEGATIVE_WEIGHTS = ((1.0, -1.0), (-1.0, 1.0))


class _Recombine(torch.autograd.Function):
    """``sum_ab w[a][b] parts[a, :, :, b]`` over dims 0 (input part) and 3 (kernel part) of ``(A, G, T, Bk, ...)``."""

    @staticmethod
    def forward(ctx, parts: torch.Tensor, weights: tuple[tuple[float, ...], ...]) -> torch.Tensor:
        ctx.shape, ctx.weights = parts.shape, weights
        out = None
        for a, row in enumerate(weights):
            for b, w in enumerate(row):
                if out is None:
                    out = parts[a, :, :, b] * w  # G, T, ...: a new tensor
                else:
                    out.add_(parts[a, :, :, b], alpha=w)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out = grad.new_empty(ctx.shape)
        for a, row in enumerate(ctx.weights):
            for b, w in enumerate(row):
                torch.mul(grad, w, out=out[a, :, :, b])
        return out, None


def recombine_passes(parts: torch.Tensor, weights: tuple[tuple[float, ...], ...] = PSEUDO_NEGATIVE_WEIGHTS) -> torch.Tensor:
    """Electronic recombination of the passes of the backends' ``(A, G, T, Bk, ...)`` layout:
    ``sum_ab w[a][b] parts[a, :, :, b]`` (default: pseudo-negativity's ``++ - +- - -+ + --``), with a
    one-allocation backward.

    Raises:
        ValueError: when the weights do not match the pass dimensions.
    """
    if (parts.shape[0], parts.shape[3]) != (len(weights), len(weights[0])):
        raise ValueError(f"{len(weights)}x{len(weights[0])} pass weights for parts of shape {tuple(parts.shape)}")
    return _Recombine.apply(parts, weights)
