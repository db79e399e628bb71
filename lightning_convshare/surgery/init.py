"""How a new ConvShare layer's kernels are initialised from the linear layer it replaces.

``init(layer, linear) -> None`` functions in one registry, chosen by ``surgery.init``:

* ``transfer``: exact copy where one exists (whole-map valid kernels, biases); fresh kernels otherwise;
* ``lstsq``: the kernels whose convolution is closest to the linear map (least squares, see
  :func:`lstsq_kernels`); exact for whole-map valid kernels;
* ``crop``: the naive baseline, each kernel cut out of the original weights (see :func:`crop_kernels`);
* ``random``: keep the fresh init.

A ConvShare layer computes ``y = x @ M(w).T + b`` where ``M(w)`` (``D_out x D_in``, see
:func:`conv_matrix`) is the dense matrix of the zero-padded, strided, cropped convolution and is
linear in the kernels ``w``. :func:`approximation_error` measures ``||M(w) - W||_F / ||W||_F``.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import ConvGeometry, ConvShareLinear, conv_operator
from ..registry import Registry

__all__ = [
    "LAYER_INITS",
    "approximation_error",
    "conv_matrix",
    "crop_kernels",
    "layer_matrix",
    "lstsq_kernels",
    "register_init",
]

LAYER_INITS: Registry[Callable[[ConvShareLinear, nn.Linear], None]] = Registry("layer init")


def register_init(name: str) -> Callable:
    """Decorator registering ``fn(layer, linear)`` under ``name``."""
    return LAYER_INITS.register(name)


def conv_matrix(weight: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
    """The linear map a ConvShare layer applies to each token: ``y = x @ conv_matrix(w, g).T``.

    The layer zero pads the ``h x w`` map, convolves it (valid, at the geometry's stride) and keeps
    the first ``D_out`` outputs (``out_policy=crop`` drops the rest). This is that operator as a
    dense matrix, differentiable and linear in ``weight``.

    Args:
        weight: kernels ``(m, kh, kw)``, or ``(N, m, kh, kw)`` for one bank per token.
        geometry: the layer's :class:`~lightning_convshare.layers.ConvGeometry`.

    Returns:
        ``(D_out, D_in)``, or ``(N, D_out, D_in)`` for per-token banks.

    Example:
        >>> layer = ConvShareLinear(64, 192, kernel_size=3, padding="same")
        >>> x = torch.randn(2, 5, 64)
        >>> torch.allclose(layer(x), x @ conv_matrix(layer.weight, layer.geometry).T + layer.bias, atol=1e-5)
        True
    """
    g = geometry
    hp, wp = g.padded_shape
    top, _, left, _ = g.pad
    h, w = g.map_shape
    A = conv_operator(weight, (hp, wp), g.stride)  # [N,] Hp*Wp, m*P
    rows = (torch.arange(h, device=weight.device)[:, None] + top) * wp + torch.arange(w, device=weight.device) + left
    M = A[..., rows.flatten(), : g.out_features]  # [N,] D_in, D_out  (real pixels only, surplus outputs dropped)
    return M.transpose(-1, -2)


def layer_matrix(layer: ConvShareLinear) -> torch.Tensor:
    """:func:`conv_matrix` of a layer's own kernels (``(D_out, D_in)`` or ``(N, D_out, D_in)``)."""
    return conv_matrix(layer.weight, layer.geometry)


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def lstsq_kernels(target: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
    """Kernels ``w`` minimising ``||conv_matrix(w) - target||_F`` (the least-squares ConvShare fit).

    The conv is a structured linear operator, linear in its kernels: ``vec(M(w)) = G w`` for a
    design matrix ``G``. Every entry of ``M`` (output ``p`` of kernel ``i``, input pixel ``d``) is
    either 0 or exactly one tap of kernel ``i`` (the tap at ``d - stride * p``), so the columns
    of ``G`` have disjoint supports and the normal equations ``G^T G w = G^T t`` are diagonal.
    The solution is therefore: each tap is the mean of the original weights it has to stand in
    for, i.e. of ``target[i*P + p, d]`` over the kept output positions ``p`` whose window puts the
    tap on a real (not zero-padded) input pixel ``d``. A tap that never meets a real pixel gets 0
    (the minimum-norm solution). ``G^T t`` and the diagonal ``G^T G 1`` are computed with two
    vector-Jacobian products through :func:`conv_matrix`, so padding, stride and cropping are
    those of the layer by construction.

    Args:
        target: the linear weight ``(D_out, D_in)``.
        geometry: the ConvShare layer's geometry.

    Returns:
        Shared kernels ``(m, kh, kw)`` in the dtype of ``target``.
    """
    g = geometry
    dtype = _work_dtype(target)
    t = target.detach().to(dtype)
    shape = (g.num_kernels, *g.kernel)
    with torch.enable_grad():
        w = torch.zeros(shape, dtype=dtype, device=t.device, requires_grad=True)
        rhs, = torch.autograd.grad((conv_matrix(w, g) * t).sum(), w)  # G^T t
        ones = torch.ones(shape, dtype=dtype, device=t.device, requires_grad=True)
        counts, = torch.autograd.grad(0.5 * conv_matrix(ones, g).square().sum(), ones)  # G^T G 1 = diag(G^T G)
    kernels = torch.where(counts > 0, rhs / counts.clamp_min(1), torch.zeros_like(rhs))
    return kernels.to(target.dtype)


def crop_kernels(target: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
    """The naive alternative to :func:`lstsq_kernels`: cut each kernel out of the original weights.

    Kernel ``i`` is the ``kh x kw`` window of the weight map (zero padded like the input) of one of
    its own outputs, the one at the centre position of its output map (or its last kept output when
    ``out_policy=crop`` drops the centre), taken where that output's window sits. That output
    is then reproduced as well as a ``kh x kw`` window can; every other output is not.

    Returns:
        Shared kernels ``(m, kh, kw)``.
    """
    g = geometry
    (h, w), (kh, kw), (sh, sw), (oh, ow) = g.map_shape, g.kernel, g.stride, g.out_shape
    top, bottom, left, right = g.pad
    maps = F.pad(target.detach().reshape(-1, h, w), (left, right, top, bottom))  # D_out, Hp, Wp
    centre = (oh // 2) * ow + ow // 2
    kernels = []
    for i in range(g.num_kernels):
        p = min(i * g.positions + centre, g.out_features - 1) - i * g.positions  # position of the chosen output
        r, c = divmod(p, ow)
        kernels.append(maps[i * g.positions + p, r * sh:r * sh + kh, c * sw:c * sw + kw])
    return torch.stack(kernels)  # m, kh, kw


def approximation_error(layer: ConvShareLinear, linear: nn.Linear | torch.Tensor) -> float:
    """Relative error ``||M(w) - W||_F / ||W||_F`` of a layer's conv against a linear weight.

    0 for an exact conversion (whole-map valid kernels copied); for per-token banks the error is
    taken over all tokens' operators together.
    """
    target = linear.weight if isinstance(linear, nn.Module) else linear
    dtype = _work_dtype(target)
    with torch.no_grad():
        t = target.detach().to(dtype)
        M = conv_matrix(layer.weight.detach().to(dtype), layer.geometry)  # [N,] D_out, D_in
        diff = (M - t).square().sum() / (M.shape[0] if M.dim() == 3 else 1)
        return float(diff.sqrt() / t.norm().clamp_min(torch.finfo(dtype).tiny))


@torch.no_grad()
def _set_kernels(layer: ConvShareLinear, kernels: torch.Tensor) -> None:
    layer.weight.copy_(kernels.to(layer.weight.dtype).expand_as(layer.weight))


@register_init("transfer")
def _transfer(layer: ConvShareLinear, linear: nn.Linear) -> None:
    """Exact copy where one exists (whole-map valid kernels, biases); fresh kernels otherwise."""
    layer.copy_linear_(linear)


@register_init("lstsq")
def _lstsq(layer: ConvShareLinear, linear: nn.Linear) -> None:
    """Biases copied; kernels = the least-squares fit of the linear map (:func:`lstsq_kernels`)."""
    layer.copy_linear_(linear)
    if not layer.geometry.whole_map:  # whole maps were copied exactly
        _set_kernels(layer, lstsq_kernels(linear.weight, layer.geometry))


@register_init("crop")
def _crop(layer: ConvShareLinear, linear: nn.Linear) -> None:
    """Baseline: biases copied; kernels cut out of the original weights (:func:`crop_kernels`)."""
    layer.copy_linear_(linear)
    if not layer.geometry.whole_map:
        _set_kernels(layer, crop_kernels(linear.weight, layer.geometry))


@register_init("random")
def _random(layer: ConvShareLinear, linear: nn.Linear) -> None:
    """Keep the fresh init of ``ConvShareLinear.reset_parameters`` (nothing copied)."""
