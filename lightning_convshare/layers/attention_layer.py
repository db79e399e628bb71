"""Our multi-head self-attention: timm's ``Attention`` that records its probabilities on demand."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import maybe_add_mask, resolve_self_attn_mask, use_fused_attn
from torch import nn

from ..errors import ConfigError

__all__ = ["Attention"]


class Attention(nn.Module):
    """timm's ``Attention`` (same constructor vocabulary and submodule names) plus recording.

    While ``record`` is false the forward is timm's: the fused
    ``F.scaled_dot_product_attention`` path where available, so recording costs nothing when
    it is off. While ``record`` is true the probabilities ``softmax(q k^T * scale + mask)`` are
    materialised, kept in ``attn_probs`` (``B, heads, N, N``, before attention dropout) and used
    for the output, which equals the fused output to float rounding. Use
    :class:`~lightning_convshare.layers.recorder.AttentionRecorder` rather than the flag.

    Subclasses (other attention variants) override :meth:`attention_probs` and/or
    :meth:`mix` and keep the rest.
    """

    fused_attn: bool

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        attn_head_dim: Optional[int] = None,
        dim_out: Optional[int] = None,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        scale_norm: bool = False,
        proj_bias: bool = True,
        gated: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_layer: Optional[type[nn.Module]] = None,
    ) -> None:
        super().__init__()
        dim_out = dim_out or dim
        if attn_head_dim is None and dim % num_heads:
            raise ConfigError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if (qk_norm or scale_norm) and norm_layer is None:
            raise ConfigError("norm_layer must be given when qk_norm or scale_norm is set")
        self.num_heads = num_heads
        self.head_dim = attn_head_dim or dim // num_heads
        self.attn_dim = num_heads * self.head_dim
        self.scale = self.head_dim**-0.5
        self.fused_attn = use_fused_attn()
        self.qkv = nn.Linear(dim, self.attn_dim * 3, bias=qkv_bias)
        self.q_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.norm = norm_layer(self.attn_dim) if scale_norm else nn.Identity()
        self.gate = nn.Linear(dim, self.attn_dim, bias=qkv_bias) if gated else None
        self.proj = nn.Linear(self.attn_dim, dim_out, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        self.record = False
        self.attn_probs: Optional[torch.Tensor] = None

    @classmethod
    def from_timm(cls, attn: nn.Module) -> Attention:
        """Wrap the submodules of a timm ``Attention`` (shared, not copied: weights are identical)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for key in ("num_heads", "head_dim", "scale", "fused_attn"):
            setattr(new, key, getattr(attn, key))
        new.attn_dim = getattr(attn, "attn_dim", attn.num_heads * attn.head_dim)
        for key in ("qkv", "q_norm", "k_norm", "attn_drop", "norm", "proj", "proj_drop"):
            module = getattr(attn, key, None)
            setattr(new, key, nn.Identity() if module is None else module)
        new.gate = getattr(attn, "gate", None)
        new.record, new.attn_probs = False, None
        return new

    def attention_probs(
        self, q: torch.Tensor, k: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False
    ) -> torch.Tensor:
        """Explicit attention probabilities ``(B, heads, N, N)``."""
        attn = (q * self.scale) @ k.transpose(-2, -1)  # B, H, N, N
        attn = maybe_add_mask(attn, resolve_self_attn_mask(q.shape[-2], attn, attn_mask, is_causal))
        return attn.softmax(dim=-1)

    def mix(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn_mask: Optional[torch.Tensor] = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """Attention-weighted values ``(B, heads, N, head_dim)``; records probabilities if asked."""
        if self.fused_attn and not self.record:
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop.p if self.training else 0.0, is_causal=is_causal
            )
        attn = self.attention_probs(q, k, attn_mask, is_causal)
        if self.record:
            self.attn_probs = attn
        return self.attn_drop(attn) @ v

    def forward(
        self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False
    ) -> torch.Tensor:
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3, B, H, N, hd
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        x = self.mix(q, k, v, attn_mask, is_causal)  # B, H, N, hd
        x = self.norm(x.transpose(1, 2).reshape(B, N, self.attn_dim))  # B, N, H*hd
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))
