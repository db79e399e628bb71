"""``ConvShareLinear``: a linear layer on tokens computed as a depthwise conv with shared kernels."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..errors import ConfigError, GeometryError
from .backend import ConvBackend, DirectConv, gathered_linear
from .geometry import ConvGeometry, KernelSpec, resolve_geometry

__all__ = ["ConvShareLinear"]


class ConvShareLinear(nn.Module):
    """Replaces ``nn.Linear(in_features, out_features)`` on tokens ``x: (B, N, in_features)``.

    Each token's vector is laid out as an ``h x w`` map; the ``N`` token maps are the channels
    of a depthwise convolution whose bank of ``m`` kernels is shared by all tokens (or, with
    ``shared=False``, one bank per token position). The outputs of every kernel at every
    position form the token's ``out_features``. How ``m``, padding and stride follow from the
    arguments is documented in :mod:`lightning_convshare.layers.geometry`; in short:

    * valid padding with a whole-map kernel (``kernel_size="full"``): ``m = out_features`` and
      the layer *is* ``nn.Linear`` (:meth:`from_linear` copies the weights exactly);
    * valid padding with a ``k x k`` kernel: ``P = (h-k+1)(w-k+1)`` positions, ``m = D_out / P``;
    * same padding: ``m = D_out / D_in`` at stride 1, or the stride that makes a reducing layer's
      output map hold ``D_out`` values;
    * ``out_policy="crop"`` rounds ``m`` up and drops surplus outputs instead of raising.

    The bias (one per output feature) is added after the convolution: it is electronic, not
    optical. The convolution itself runs through ``backend`` (default :class:`DirectConv`),
    the seam where the 4f optical simulations plug in; an exact backend may instead let the layer
    run as the linear map it is, one ``F.linear`` whose weight is gathered from the kernels
    (:meth:`ConvBackend.runs_as_linear <lightning_convshare.layers.backend.ConvBackend.runs_as_linear>`),
    with the same values.

    Args:
        in_features: ``D_in``.
        out_features: ``D_out``.
        bias: learn a bias per output feature.
        kernel_size: int, ``"full"`` or ``[kh, kw]``.
        padding: ``"valid"`` or ``"same"``.
        map_shape: ``(h, w)`` layout of the input vector; default most square with ``h <= w``.
        shared: share one kernel bank across tokens (ConvShare) or not (plain depthwise).
        num_tokens: token count ``N``; required when ``shared=False``.
        out_policy: ``"exact"`` or ``"crop"``.
        backend: conv backend module; default :class:`DirectConv`.
        name: layer name for error messages and reports.

    Raises:
        GeometryError: when the combination cannot produce ``out_features`` (message lists the
            kernel sizes that work).

    Example:
        >>> layer = ConvShareLinear(64, 192, kernel_size=3, padding="same")
        >>> layer.geometry.num_kernels, layer(torch.randn(2, 17, 64)).shape
        (3, torch.Size([2, 17, 192]))
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        kernel_size: KernelSpec = "full",
        padding: str = "valid",
        map_shape: Sequence[int] | None = None,
        shared: bool = True,
        num_tokens: int | None = None,
        out_policy: str = "exact",
        backend: ConvBackend | None = None,
        name: str = "",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.geometry: ConvGeometry = resolve_geometry(
            in_features, out_features, kernel_size=kernel_size, padding=padding,
            map_shape=map_shape, out_policy=out_policy, name=name,
        )
        if not shared and not num_tokens:
            raise ConfigError(f"{name or 'ConvShareLinear'}: shared=False needs num_tokens (one kernel bank per token)")
        self.in_features, self.out_features = in_features, out_features
        self.shared, self.num_tokens, self.name = shared, (None if shared else int(num_tokens)), name
        g = self.geometry
        bank = (g.num_kernels, *g.kernel) if shared else (self.num_tokens, g.num_kernels, *g.kernel)
        self.weight = nn.Parameter(torch.empty(bank, **dd))
        self.bias = nn.Parameter(torch.empty(out_features, **dd)) if bias else None
        top, bottom, left, right = g.pad
        self.pad = nn.ZeroPad2d((left, right, top, bottom)) if any(g.pad) else nn.Identity()
        self.backend = backend if backend is not None else DirectConv()
        self.reset_parameters()

    def __setattr__(self, name: str, value: object) -> None:
        super().__setattr__(name, value)
        if name == "backend" and isinstance(value, ConvBackend):  # every assignment, also after construction
            value.bind(self.geometry, self.name)

    def reset_parameters(self) -> None:
        """timm's ViT init scaled to the kernel's fan-in.

        ``trunc_normal(std=0.02 * sqrt(D_in / (kh * kw)))`` gives every output the variance timm's
        ``trunc_normal(std=0.02)`` gives ``nn.Linear``; for whole-map kernels it is that init.
        """
        kh, kw = self.geometry.kernel
        std = 0.02 * math.sqrt(self.in_features / (kh * kw))
        nn.init.trunc_normal_(self.weight, std=std, a=-2 * std, b=2 * std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> ConvShareLinear:
        """Build a ConvShare layer replacing ``linear`` on its device and dtype, then :meth:`copy_linear_`."""
        layer = cls(
            linear.in_features, linear.out_features, linear.bias is not None,
            device=linear.weight.device, dtype=linear.weight.dtype, **kwargs,
        )
        return layer.copy_linear_(linear)

    @torch.no_grad()
    def copy_linear_(self, linear: nn.Linear) -> ConvShareLinear:
        """Copy what carries over exactly from ``linear``: the bias always, the weight for whole maps.

        With valid padding and a whole-map kernel the layer then computes exactly what ``linear``
        computes; other geometries keep their kernels (see ``surgery.init`` for best-fit kernels).
        """
        if (linear.in_features, linear.out_features) != (self.in_features, self.out_features):
            raise GeometryError(
                f"{self.name or 'ConvShareLinear'}: cannot copy Linear({linear.in_features}, {linear.out_features}) "
                f"into a {self.in_features} -> {self.out_features} layer"
            )
        if self.bias is not None and linear.bias is not None:
            self.bias.copy_(linear.bias)
        if self.geometry.whole_map:
            w = linear.weight.reshape(self.weight.shape[-3:])  # m, h, w
            self.weight.copy_(w.expand_as(self.weight))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *lead, n, d = x.shape
        if self.backend.runs_as_linear(self.geometry, x.numel() // d):  # one F.linear, the same values
            return gathered_linear(x, self.weight, self.bias, self.geometry)
        h, w = self.geometry.map_shape
        maps = self.pad(x.reshape(-1, n, h, w))  # B, N, h(+pad), w(+pad)
        out = self.backend(maps, self.weight, self.geometry.stride)  # B, N, m, oh, ow
        out = out.flatten(2)[..., : self.out_features]  # B, N, D_out
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*lead, n, self.out_features)

    def extra_repr(self) -> str:
        share = "shared" if self.shared else f"non-shared x{self.num_tokens}"
        return f"{self.in_features} -> {self.out_features}, {self.geometry.describe()}, {share}, bias={self.bias is not None}"
