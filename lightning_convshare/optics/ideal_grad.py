"""``grad: ideal``: the simulated measurement forward, the noise-free convolution's gradient backward.

The straight-through estimator for a whole simulated 4f layer (noise-injection training, as in
hardware-aware training of analog accelerators; docs/optics.md, "Gradients"). The convolution is linear
in the maps and in the weights, so its vector-Jacobian product needs no forward pass: the ideal
convolution is never evaluated, and the backward costs what ``direct``'s does.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["MeasuredWithIdealGrad", "ideal_conv_vjp"]


class MeasuredWithIdealGrad(torch.autograd.Function):
    """Forward: the simulated measurement; backward: the gradient of the ideal (noise-free) convolution
    at the same maps and weights. A linear map's vector-Jacobian product needs no forward pass, so the
    ideal convolution is never evaluated: the backward is the convolution's own (``direct``'s)."""

    @staticmethod
    def forward(ctx, measured: torch.Tensor, maps: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
        ctx.save_for_backward(maps, weight)
        ctx.stride = stride
        return measured

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        maps, weight = ctx.saved_tensors
        # under autocast (bf16-mixed) the maps and the upstream gradient may be bfloat16 and the weight float32:
        # the vector-Jacobian product in their common type, each gradient in its input's type
        dtype = torch.promote_types(torch.promote_types(maps.dtype, weight.dtype), grad.dtype)
        gm, gw = ideal_conv_vjp(maps.to(dtype), weight.to(dtype), grad.to(dtype), ctx.stride, ctx.needs_input_grad[1],
                                ctx.needs_input_grad[2])
        return None, None if gm is None else gm.to(maps.dtype), None if gw is None else gw.to(weight.dtype), None


def ideal_conv_vjp(
    maps: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor, stride: tuple[int, int], need_maps: bool = True,
    need_weight: bool = True,
) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Gradients of the valid cross-correlation ``out = maps * weight`` (the backend contract, ``F.conv2d``
    semantics) for an upstream gradient ``grad`` ``(B, N, m, oh, ow)``, without evaluating ``out``.

    Returns:
        ``(d maps, d weight)`` (``None`` where not needed).
    """
    B, N, H, W = maps.shape
    kh, kw = weight.shape[-2:]
    m = weight.shape[-3]
    if weight.dim() == 3 and (kh, kw) == (H, W):  # whole-map shared kernels: two matrix products
        g = grad.reshape(B * N, m)  # T, m
        gm = (g @ weight.reshape(m, H * W)).reshape(maps.shape) if need_maps else None
        gw = (g.t() @ maps.reshape(B * N, H * W)).reshape(weight.shape) if need_weight else None
        return gm, gw
    oh, ow = grad.shape[-2:]
    if weight.dim() == 3:  # shared: every token map is a one-channel image
        inp, wt, g, groups = maps.reshape(B * N, 1, H, W), weight.unsqueeze(1), grad.reshape(B * N, m, oh, ow), 1
    else:  # non-shared: one group per token
        inp, wt, g, groups = maps, weight.reshape(N * m, 1, kh, kw), grad.reshape(B, N * m, oh, ow), N
    gi, gw, _ = torch.ops.aten.convolution_backward(
        g.contiguous(), inp, wt, None, list(stride), [0, 0], [1, 1], False, [0, 0], groups, [need_maps, need_weight, False]
    )
    return (None if gi is None else gi.reshape(maps.shape)), (None if gw is None else gw.reshape(weight.shape))
