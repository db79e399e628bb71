"""The conv-backend seam of ConvShare layers.

A backend is an ``nn.Module`` that convolves token maps with a kernel bank:

``backend(maps, weight, stride) -> out``

* ``maps``: ``(B, N, H, W)`` token maps, already zero padded (``N`` tokens are the channels);
* ``weight``: ``(m, kh, kw)`` shared by all tokens, or ``(N, m, kh, kw)`` one bank per token;
* ``stride``: ``(sh, sw)``;
* ``out``: ``(B, N, m, out_h, out_w)`` valid cross-correlation (``F.conv2d`` semantics).

Layers never know which backend they hold; the optical backends of :mod:`lightning_convshare.optics`
implement the same call.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .geometry import ConvGeometry

__all__ = ["ConvBackend", "DirectConv", "check_token_count", "conv_operator"]


class ConvBackend(nn.Module):
    """Base class of conv backends (see the module docstring for the call contract).

    ``exact_linear = True`` declares that the backend computes a whole-map conv exactly as a
    matrix product, which lets a shared whole-map layer call ``F.linear`` directly (fused bias,
    no reshapes). Simulations of physical systems leave it ``False``.
    """

    exact_linear: bool = False

    def bind(self, geometry: ConvGeometry, name: str = "") -> None:
        """Called by the ConvShare layer whenever this backend is assigned to it, with the layer's
        geometry (e.g. its zero padding, which a physical simulation realises with guard bands)
        and name. The default keeps nothing."""

    def forward(self, maps: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement forward(maps, weight, stride)")


def check_token_count(maps: torch.Tensor, weight: torch.Tensor) -> None:
    """Non-shared kernels exist per token position: the token count must match the bank."""
    if weight.dim() == 4 and weight.shape[0] != maps.shape[1]:
        raise ValueError(
            f"non-shared ConvShare kernels were built for {weight.shape[0]} tokens but got {maps.shape[1]}; "
            f"non-shared layers need the token count (image size, prefix tokens) they were built with"
        )


def conv_operator(weight: torch.Tensor, in_shape: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """The dense matrix of the valid conv: ``out.flatten() = maps.flatten() @ A``.

    Args:
        weight: ``(m, kh, kw)`` or ``(N, m, kh, kw)``.
        in_shape: ``(H, W)`` of the (padded) maps.
        stride: ``(sh, sw)``.

    Returns:
        ``(H*W, m*P)``, or ``(N, H*W, m*P)`` for per-token banks; columns in (kernel, row, col) order.
        Built by convolving the identity basis, so it is differentiable in ``weight`` and exact.
    """
    H, W = in_shape
    kh, kw = weight.shape[-2:]
    if (kh, kw) == (H, W):  # whole map: the kernels are the matrix
        return weight.reshape(*weight.shape[:-2], H * W).transpose(-1, -2)  # ([N,] D, m)
    basis = torch.eye(H * W, dtype=weight.dtype, device=weight.device).reshape(H * W, 1, H, W)  # D, 1, H, W
    if weight.dim() == 3:
        return F.conv2d(basis, weight.unsqueeze(1), stride=stride).flatten(1)  # D, m*P
    N, m = weight.shape[:2]
    out = F.conv2d(basis.expand(-1, N, -1, -1), weight.reshape(N * m, 1, kh, kw), stride=stride, groups=N)
    return out.reshape(H * W, N, -1).transpose(0, 1)  # N, D, m*P


class DirectConv(ConvBackend):
    """Electronic reference: one batched ``F.conv2d``, or the identical dense-operator matmul.

    Args:
        impl: ``"conv"`` convolves every token map; ``"matrix"`` builds the conv's dense operator
            (:func:`conv_operator`, one conv over the ``H*W`` identity basis) and applies it with
            one matmul; ``"auto"`` picks ``"matrix"`` when the basis is no larger than the batch
            of token maps (always for whole-map kernels, where the operator is the kernel bank).
    """

    IMPLS = ("auto", "conv", "matrix")
    exact_linear = True

    def __init__(self, impl: str = "auto") -> None:
        super().__init__()
        if impl not in self.IMPLS:
            raise ValueError(f"DirectConv impl {impl!r} is not one of {list(self.IMPLS)}")
        self.impl = impl
        self.exact_linear = impl != "conv"  # "conv" asks for the literal convolution, always

    def forward(self, maps: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
        check_token_count(maps, weight)
        B, N, H, W = maps.shape
        kh, kw = weight.shape[-2:]
        whole = (kh, kw) == (H, W)
        out_shape = (1, 1) if whole else ((H - kh) // stride[0] + 1, (W - kw) // stride[1] + 1)
        if self.impl == "matrix" or (self.impl == "auto" and (whole or H * W <= B * N)):
            A = conv_operator(weight, (H, W), stride)  # [N,] D, m*P
            flat = maps.reshape(B, N, H * W)  # B, N, D
            out = flat @ A if A.dim() == 2 else torch.einsum("bnd,nde->bne", flat, A)  # B, N, m*P
            return out.reshape(B, N, -1, *out_shape)  # B, N, m, oh, ow
        if weight.dim() == 3:  # shared: every token map is one single-channel image
            out = F.conv2d(maps.reshape(B * N, 1, H, W), weight.unsqueeze(1), stride=stride)  # B*N, m, oh, ow
        else:  # non-shared: grouped conv, one group per token
            m = weight.shape[1]
            out = F.conv2d(maps, weight.reshape(N * m, 1, kh, kw), stride=stride, groups=N)  # B, N*m, oh, ow
        return out.reshape(B, N, -1, *out_shape)  # B, N, m, oh, ow

    def extra_repr(self) -> str:
        return f"impl={self.impl!r}"
