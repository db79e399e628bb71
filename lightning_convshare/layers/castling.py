"""Castling-ViT linear-angular attention (You et al., arXiv 2211.10526).

Queries and keys are L2-normalised per head; the angular similarity ``1 - theta(q, k) / pi`` is
replaced by its linear term ``1/2 + q.k / pi`` (``theta = arccos(q.k)``), which is always positive
(between ``1/2 - 1/pi`` and ``1/2 + 1/pi``), so normalising it per query gives a proper attention
distribution. By associativity the output needs no ``N x N`` matrix::

    out_i = (1/2 sum_j v_j + 1/pi q_i (K^T V)) / (N/2 + 1/pi q_i . sum_j k_j)

Keys-by-values summary first (``K^T V``, ``head_dim x head_dim``), so time and memory grow linearly
with the token count. Two parameterised branches approximate the dropped high-order terms:

* a depthwise convolution over the token grid on the values, added as a residual. Class and register
  tokens have no grid position: they get no residual (their output is the linear-angular term only);
* during training only, an auxiliary softmax attention ``(g * M * softmax(q k^T / sqrt(d))) V`` with a
  learnable mask ``M`` (``heads x N x N``, initialised to ``mask_init``). :meth:`CastlingAttention.aux_loss`
  returns the L1 regulariser ``mask_weight * sum|M|``, which the LightningModule adds to the loss; its
  pull on every mask entry is ``mask_weight`` whatever the token count (the default 1e-3 exceeds the
  typical cross-entropy gradient on a mask entry, ~1e-5 on digits). L1 under Adam hovers *near* zero
  rather than at it, and later layers amplify what is left: measured on digits, a model trained with
  the regulariser alone reached 0.998 training accuracy with the branch and 0.26 without it. So the
  branch is also scaled by a gate ``g`` (``branch_gate``) that the LightningModule anneals (through :meth:`on_progress`)
  from 1 to 0 with a cosine between ``mask_decay[0]`` and ``mask_decay[1]`` of training; after that the
  branch is off in training too, and the rest of training trains exactly the model that will run.
  In eval mode the branch is always off and costs nothing.

Differences from the authors' reference code (GATECH-EIC/Castling-ViT), which we do not follow where the
paper's description is clearer: the reference adds ``0.5 * v_i`` instead of ``0.5 * sum_j v_j`` and
L2-normalises the output instead of normalising per query, uses a 1-D depthwise conv along the token
sequence, and a thresholded (not learnable) sparse softmax.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, GeometryError
from .attention_layer import Attention

__all__ = ["CastlingAttention", "GridDepthwiseConv", "linear_angular_attention", "linear_angular_probs"]


def linear_angular_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Normalised linear-angular attention in linear time.

    Args:
        q: ``(B, H, N, d)`` queries (normalised here).
        k: ``(B, H, M, d)`` keys (normalised here).
        v: ``(B, H, M, d_v)`` values.

    Returns:
        ``(B, H, N, d_v)``, equal to ``linear_angular_probs(q, k) @ v``.
    """
    qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    kv = kn.transpose(-2, -1) @ v  # B, H, d, d_v: keys-by-values summary
    num = 0.5 * v.sum(-2, keepdim=True) + (qn @ kv) / math.pi  # B, H, N, d_v
    den = 0.5 * k.shape[-2] + (qn @ kn.sum(-2).unsqueeze(-1)) / math.pi  # B, H, N, 1
    return num / den


def linear_angular_probs(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The implied attention matrix ``(B, H, N, M)``: ``(1/2 + q.k/pi)`` normalised per query.

    Materialising it costs ``O(N M)`` time and memory: use it for metrics on small inputs only.
    """
    sim = 0.5 + (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) / math.pi  # B, H, N, M
    return sim / sim.sum(-1, keepdim=True)


class GridDepthwiseConv(nn.Module):
    """Depthwise ``k x k`` conv over the patch-token grid of per-head values; prefix tokens get zeros.

    Args:
        dim: channels (``heads * head_dim``).
        grid_size: ``(gh, gw)`` patch grid.
        num_prefix_tokens: class/register/distillation tokens in front of the patch tokens.
        kernel_size: odd kernel size (same padding).
    """

    def __init__(self, dim: int, grid_size: tuple[int, int], num_prefix_tokens: int, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ConfigError(f"castling dw_kernel must be odd (same padding), got {kernel_size}")
        self.grid_size, self.num_prefix_tokens = tuple(grid_size), num_prefix_tokens
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=False)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        B, H, N, d = v.shape
        gh, gw = self.grid_size
        p = self.num_prefix_tokens
        if N != p + gh * gw:
            raise GeometryError(f"castling residual conv expects {p} + {gh}x{gw} tokens, got {N}")
        grid = v[:, :, p:].permute(0, 1, 3, 2).reshape(B, H * d, gh, gw)  # B, H*d, gh, gw
        out = self.conv(grid).reshape(B, H, d, gh * gw).permute(0, 1, 3, 2)  # B, H, gh*gw, d
        return F.pad(out, (0, 0, p, 0))  # B, H, N, d: zero residual for prefix tokens


class CastlingAttention(Attention):
    """Linear-angular attention with a depthwise-conv residual and a train-only masked softmax branch.

    Built with :meth:`from_timm` (shares timm's q/k/v, proj and norms, so pretrained weights transfer).
    ``record`` materialises the implied linear-angular attention (:func:`linear_angular_probs`) for
    metrics; the residual and the auxiliary branch are not part of that matrix.
    """

    def _init_castling(
        self,
        grid_size: tuple[int, int],
        num_prefix_tokens: int,
        dw_kernel: int = 3,
        aux_softmax: bool = True,
        mask_init: float = 1.0,
        mask_weight: float = 1e-3,
        mask_decay: tuple[float, float] = (0.25, 0.75),
    ) -> None:
        ref = self.qkv.weight
        num_tokens = num_prefix_tokens + grid_size[0] * grid_size[1]
        self.residual = GridDepthwiseConv(self.attn_dim, grid_size, num_prefix_tokens, dw_kernel).to(ref.device, ref.dtype)
        nn.init.zeros_(self.residual.conv.weight)  # starts as pure linear-angular attention
        start, end = (float(f) for f in mask_decay)
        if not 0.0 <= start <= end <= 1.0:
            raise ConfigError(f"castling mask_decay must be [start, end] with 0 <= start <= end <= 1, got {list(mask_decay)}")
        self.aux_softmax, self.mask_weight, self.mask_decay, self.branch_gate = aux_softmax, mask_weight, (start, end), 1.0
        shape = (self.num_heads, num_tokens, num_tokens)
        self.mask = (
            nn.Parameter(torch.full(shape, float(mask_init), device=ref.device, dtype=ref.dtype)) if aux_softmax else None
        )

    @classmethod
    def from_timm(cls, attn: nn.Module, **castling: object) -> CastlingAttention:  # type: ignore[override]
        """Wrap a timm ``Attention``; ``castling`` are the options of :meth:`_init_castling`."""
        new = super().from_timm(attn)
        new._init_castling(**castling)  # type: ignore[arg-type]
        return new  # type: ignore[return-value]

    def attention_probs(
        self, q: torch.Tensor, k: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False
    ) -> torch.Tensor:
        return linear_angular_probs(q, k)

    def mix(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn_mask: Optional[torch.Tensor] = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ConfigError("castling linear-angular attention does not support attention masks")
        out = linear_angular_attention(q, k, v) + self.residual(v)  # B, H, N, d
        if self.record:
            self.attn_probs = linear_angular_probs(q, k)
        if self.training and self.mask is not None and self.branch_gate > 0:
            soft = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # B, H, N, N
            out = out + self.attn_drop(self.branch_gate * self.mask * soft) @ v
        return out

    def on_progress(self, progress: float) -> None:
        """Anneal the softmax-branch gate: 1 before ``mask_decay[0]``, cosine to 0 at ``mask_decay[1]``."""
        start, end = self.mask_decay
        if progress <= start:
            self.branch_gate = 1.0
        elif progress >= end:
            self.branch_gate = 0.0
        else:
            self.branch_gate = 0.5 * (1.0 + math.cos(math.pi * (progress - start) / (end - start)))

    def get_extra_state(self) -> dict:
        return {"branch_gate": self.branch_gate}

    def set_extra_state(self, state: dict) -> None:
        self.branch_gate = float(state.get("branch_gate", 1.0))

    def aux_loss(self) -> torch.Tensor:
        """``mask_weight * sum|M|``: the L1 regulariser that switches the softmax branch off."""
        if self.mask is None:
            return self.qkv.weight.new_zeros(())
        return self.mask_weight * self.mask.abs().sum()
