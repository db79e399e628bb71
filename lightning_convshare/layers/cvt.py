"""CvT-style convolutional projections (Wu et al., arXiv 2103.15808).

Before the q/k/v linear projections, the patch tokens are laid out on their grid and filtered by a
depthwise-separable convolution: a depthwise ``k x k`` conv (stride 1 for queries, ``kv_stride`` for
keys and values, which shrinks the key/value token count by ``kv_stride^2``) and a BatchNorm, followed
by the pointwise projection, which is the linear q/k/v layer. Class, register and distillation tokens
have no grid position and pass through unconvolved. With ``kv_stride > 1`` attention is ``N x M``
with ``M < N``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..errors import ConfigError, GeometryError
from .attention_layer import Attention

__all__ = ["ConvProjection", "CvTAttention"]


class ConvProjection(nn.Module):
    """Depthwise conv + BatchNorm over the patch-token grid; prefix tokens pass through.

    The depthwise kernel starts as the identity (centre tap 1), so a converted model starts from the
    original's function (up to BatchNorm's running statistics).

    Args:
        dim: channels.
        grid_size: ``(gh, gw)`` patch grid.
        num_prefix_tokens: tokens in front of the patch tokens.
        kernel_size: odd depthwise kernel size.
        stride: conv stride (1 keeps the token count).
        norm: apply BatchNorm2d after the conv (as in CvT).
    """

    def __init__(
        self, dim: int, grid_size: tuple[int, int], num_prefix_tokens: int, kernel_size: int = 3, stride: int = 1,
        norm: bool = True,
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ConfigError(f"cvt_proj kernel_size must be odd, got {kernel_size}")
        self.grid_size, self.num_prefix_tokens = tuple(grid_size), num_prefix_tokens
        self.conv = nn.Conv2d(dim, dim, kernel_size, stride=stride, padding=kernel_size // 2, groups=dim, bias=False)
        self.norm = nn.BatchNorm2d(dim) if norm else nn.Identity()
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, :, kernel_size // 2, kernel_size // 2] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        gh, gw = self.grid_size
        p = self.num_prefix_tokens
        if N != p + gh * gw:
            raise GeometryError(f"cvt_proj expects {p} + {gh}x{gw} tokens, got {N}")
        grid = x[:, p:].transpose(1, 2).reshape(B, C, gh, gw)  # B, C, gh, gw
        grid = self.norm(self.conv(grid))  # B, C, gh', gw'
        return torch.cat([x[:, :p], grid.flatten(2).transpose(1, 2)], dim=1)  # B, p + gh'*gw', C


class CvTAttention(Attention):
    """Attention whose q/k/v projections read convolved tokens (see the module docstring).

    Built with :meth:`from_timm`: timm's fused ``qkv`` is split into ``q``, ``k`` and ``v`` linears with the
    same weights (the pointwise half of the separable convolution), so pretrained weights transfer.
    """

    def _init_cvt(
        self, grid_size: tuple[int, int], num_prefix_tokens: int, kernel_size: int = 3, kv_stride: int = 1,
        norm: bool = True,
    ) -> None:
        ref = self.qkv.weight
        dim = self.qkv.in_features
        conv = lambda s: ConvProjection(dim, grid_size, num_prefix_tokens, kernel_size, s, norm).to(ref.device, ref.dtype)  # noqa: E731
        self.conv_q, self.conv_k, self.conv_v = conv(1), conv(kv_stride), conv(kv_stride)
        bias = self.qkv.bias is not None
        for i, name in enumerate("qkv"):
            linear = nn.Linear(dim, self.attn_dim, bias=bias, device=ref.device, dtype=ref.dtype)
            with torch.no_grad():
                linear.weight.copy_(self.qkv.weight[i * self.attn_dim:(i + 1) * self.attn_dim])
                if bias:
                    linear.bias.copy_(self.qkv.bias[i * self.attn_dim:(i + 1) * self.attn_dim])
            setattr(self, name, linear)
        del self.qkv

    @classmethod
    def from_timm(cls, attn: nn.Module, **cvt: object) -> CvTAttention:  # type: ignore[override]
        """Wrap a timm ``Attention``; ``cvt`` are the options of :meth:`_init_cvt`."""
        new = super().from_timm(attn)
        new._init_cvt(**cvt)  # type: ignore[arg-type]
        return new  # type: ignore[return-value]

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        return x.reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # B, H, N, hd

    def forward(
        self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False
    ) -> torch.Tensor:
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        q = self.q_norm(self._heads(self.q(self.conv_q(x))))  # B, H, N, hd
        k = self.k_norm(self._heads(self.k(self.conv_k(x))))  # B, H, M, hd
        v = self._heads(self.v(self.conv_v(x)))  # B, H, M, hd
        x = self.mix(q, k, v, attn_mask, is_causal)  # B, H, N, hd
        x = self.norm(x.transpose(1, 2).reshape(B, N, self.attn_dim))  # B, N, H*hd
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))
