"""The conv-backend seam of ConvShare layers, and the exact electronic backend ``direct``.

A backend is an ``nn.Module`` that convolves token maps with a kernel bank:

``backend(maps, weight, stride) -> out``

* ``maps``: ``(B, N, H, W)`` token maps, already zero padded (``N`` tokens are the channels);
* ``weight``: ``(m, kh, kw)`` shared by all tokens, or ``(N, m, kh, kw)`` one bank per token;
* ``stride``: ``(sh, sw)``;
* ``out``: ``(B, N, m, out_h, out_w)`` valid cross-correlation (``F.conv2d`` semantics).

Layers never know which backend they hold; the optical backends of :mod:`lightning_convshare.optics`
implement the same call. A backend that computes the convolution exactly (``exact_linear``) may
also let a layer skip the seam and run as the linear map it is (:meth:`ConvBackend.runs_as_linear`):
one ``F.linear`` whose weight ``(D_out, D_in)`` is gathered from the kernel bank through a
precomputed index (:func:`gathered_weight`), with the padding, stride and cropping folded in.

Every exact convolution in the package chooses how to compute by one rule, :func:`auto_impl`.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, GeometryError
from .geometry import ConvGeometry

__all__ = [
    "DENSE_TAP_RATIO",
    "ConvBackend",
    "DirectConv",
    "auto_impl",
    "check_token_count",
    "conv_operator",
    "gathered_linear",
    "gathered_weight",
    "tap_index",
]

#: the dense form (one matmul with the conv's matrix) is chosen while it does at most this many times the
#: conv's multiply-adds (``H*W <= ratio * kh*kw``): a GEMM is that much faster per multiply-add than a
#: depthwise conv on small maps (on the CPU the conv of 3x3 kernels over 1088 maps is still 1.3x slower
#: at 50x66 maps, ratio 367)
DENSE_TAP_RATIO = 384
#: ... and while the operator is at most this many times larger than the batch of maps (``H*W <=
#: ratio * maps``): gathering it, and its gradient, costs about one matmul row per 20-50 entries
DENSE_MAP_RATIO = 32


def auto_impl(
    in_shape: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    maps: int,
    fft: bool = False,
) -> str:
    """The one ``impl: auto`` rule of every exact convolution (``direct`` and the ``optical`` windows).

    ``"matrix"`` (the conv's dense operator, gathered from the kernels and applied with one matmul;
    a whole layer then runs as ``gather``, one ``F.linear``) when the kernels cover the map,
    or when the operator does at most :data:`DENSE_TAP_RATIO` times the conv's multiply-adds and is
    at most :data:`DENSE_MAP_RATIO` times larger than the batch of maps; ``"fft"`` (only where the
    caller has one) for large kernels with many outputs; else ``"conv"``.

    Args:
        in_shape: ``(H, W)`` of the maps as they enter the convolution (padded).
        kernel: ``(kh, kw)``.
        stride: ``(sh, sw)``.
        maps: maps convolved in this call (``B * N``: images times tokens).
        fft: whether ``"fft"`` is an option.

    Returns:
        ``"matrix"``, ``"fft"`` or ``"conv"``.

    Example:
        >>> auto_impl((10, 10), (3, 3), (1, 1), maps=64 * 17)  # same 3x3 on 8x8 maps, a batch of 64
        'matrix'
        >>> auto_impl((50, 66), (3, 3), (1, 1), maps=17)  # 3072-d tokens, one image
        'conv'
    """
    (H, W), (kh, kw) = in_shape, kernel
    if (kh, kw) == (H, W):
        return "matrix"
    if H * W <= DENSE_TAP_RATIO * kh * kw and H * W <= DENSE_MAP_RATIO * maps:
        return "matrix"
    oh, ow = (H - kh) // stride[0] + 1, (W - kw) // stride[1] + 1
    if fft and kh * kw * oh * ow > 8 * H * W * max(1.0, math.log2(H * W)):
        return "fft"
    return "conv"


# ----------------------------------------------------------------------------- the gathered weight
class _TapIndex:
    """Where every entry of a conv's ``(D_out, D_in)`` matrix comes from in the flat kernel bank.

    ``forward (D_out * D_in)``: the tap (``kernel * kh * kw + row * kw + col``) each entry holds, or
    ``K = m * kh * kw`` (a zero appended to the bank) where the entry meets padding or no kernel.
    ``backward (K, C)``: the flat matrix entries that hold each tap (``C``: the most entries a tap
    has), with ``unused`` marking the slots of taps that have fewer (padding), so a kernel's
    gradient is one gather of ``K * C`` entries, a masked fill and a sum.
    """

    def __init__(self, g: ConvGeometry) -> None:
        (h, w), (top, _, left, _), (kh, kw), (sh, sw), (oh, ow) = g.map_shape, g.pad, g.kernel, g.stride, g.out_shape
        taps, positions = kh * kw, oh * ow
        K = g.num_kernels * taps
        out = torch.arange(g.out_features)  # D_out   (kernel, row, col) order, surplus outputs cropped
        kernel, pos = out // positions, out % positions
        a = torch.arange(h)[None, :, None] + top - (pos // ow * sh)[:, None, None]  # D_out, h, 1   tap row
        b = torch.arange(w)[None, None, :] + left - (pos % ow * sw)[:, None, None]  # D_out, 1, w   tap column
        inside = (a >= 0) & (a < kh) & (b >= 0) & (b < kw)
        forward = torch.where(inside, kernel[:, None, None] * taps + a * kw + b, K).reshape(g.out_features, h * w)
        flat = forward.flatten()
        order = torch.argsort(flat, stable=True)
        tap = flat[order]
        used = tap < K
        order, tap = order[used], tap[used]  # matrix entries sorted by the tap they hold
        counts = torch.bincount(tap, minlength=K)
        rank = torch.arange(len(tap)) - (torch.cumsum(counts, 0) - counts)[tap]
        backward = torch.full((K, max(int(counts.max()) if len(tap) else 0, 1)), -1)
        backward[tap, rank] = order
        self.shape, self.backward_shape = (g.out_features, h * w), tuple(backward.shape)
        self.unused = None if bool((backward >= 0).all()) else backward < 0
        self.forward, self.backward = forward.flatten().int(), backward.clamp_min(0).flatten().int()
        self._devices: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """``(forward, backward, unused)`` on ``device`` (copied once per device)."""
        found = self._devices.get(device)
        if found is None:
            unused = None if self.unused is None else self.unused.to(device)
            found = self._devices[device] = (self.forward.to(device), self.backward.to(device), unused)
        return found


_INDEX: dict[ConvGeometry, _TapIndex] = {}


def tap_index(geometry: ConvGeometry) -> _TapIndex:
    """The (cached, per geometry and device) index of :func:`gathered_weight`."""
    index = _INDEX.get(geometry)
    if index is None:
        index = _INDEX[geometry] = _TapIndex(geometry)
    return index


#: matrices up to this many entries are gathered with ``index_select``, whose backward pass is a
#: native scatter-add over the matrix; larger ones through :class:`_Gather`, whose backward pass
#: gathers only the taps' entries (``D_in / (kh*kw)`` times fewer) at the cost of a Python call
NATIVE_GATHER_MAX = 1 << 16


class _Gather(torch.autograd.Function):
    """``bank (..., K + 1) -> matrix (..., D_out * D_in)``; backward: each tap sums its entries (one
    gather of ``K * C`` entries and a sum, no scatter over the matrix)."""

    @staticmethod
    def forward(ctx, bank: torch.Tensor, index: _TapIndex) -> torch.Tensor:
        ctx.index = index
        return bank.index_select(-1, index.on(bank.device)[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        _, entries, unused = ctx.index.on(grad.device)
        taps = grad.index_select(-1, entries).view(*grad.shape[:-1], *ctx.index.backward_shape)  # ..., K, C
        if unused is not None:
            taps.masked_fill_(unused, 0)
        return F.pad(taps.sum(-1), (0, 1)), None  # ..., K + 1   (the padding zero gets no gradient to keep)


def gathered_weight(weight: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
    """The layer's conv as a matrix: ``out = x @ W.T`` for unpadded token vectors ``x``.

    Every entry is one kernel tap or zero, so the matrix is exact; padding, stride and the cropping
    of surplus outputs are folded into the index (:func:`tap_index`, cached per geometry and
    device). Differentiable in ``weight``: the backward pass sums each tap's entries.

    Args:
        weight: ``(m, kh, kw)``, or ``(N, m, kh, kw)`` for one bank per token.
        geometry: the layer's geometry.

    Returns:
        ``(D_out, D_in)``, or ``(N, D_out, D_in)``.
    """
    g = geometry
    lead = weight.shape[:-3]
    if g.whole_map:  # the kernels are the matrix
        return weight.reshape(*lead, g.out_features, g.in_features)
    index = tap_index(g)
    bank = F.pad(weight.flatten(-3), (0, 1))  # ..., K + 1   the last entry is the zero of padding
    if bank.numel() // bank.shape[-1] * index.forward.numel() <= NATIVE_GATHER_MAX:
        flat = bank.index_select(-1, index.on(bank.device)[0])
    else:
        flat = _Gather.apply(bank, index)
    return flat.view(*lead, *index.shape)  # [N,] D_out, D_in


def gathered_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], geometry: ConvGeometry
) -> torch.Tensor:
    """A ConvShare layer as the linear map it is: ``x (..., N, D_in) -> (..., N, D_out)``.

    Shared kernels: one ``F.linear`` of :func:`gathered_weight` (the bias fused), so the forward
    and backward passes cost ``nn.Linear``'s plus gathering the matrix and its taps' gradient.
    Per-token banks ``(N, m, kh, kw)``: one batched matmul, token ``n``'s vectors times token
    ``n``'s matrix.
    """
    W = gathered_weight(weight, geometry)  # [N,] D_out, D_in
    if W.dim() == 2:
        return F.linear(x, W, bias)
    *lead, n, d = x.shape
    if n != W.shape[0]:
        raise GeometryError(
            f"non-shared ConvShare kernels were built for {W.shape[0]} tokens but got {n}; "
            f"non-shared layers need the token count (image size, prefix tokens) they were built with"
        )
    xt = x.reshape(-1, n, d).transpose(0, 1)  # N, B, D_in
    Wt = W.transpose(1, 2)  # N, D_in, D_out
    out = torch.bmm(xt, Wt) if bias is None else torch.baddbmm(bias, xt, Wt)  # N, B, D_out
    return out.transpose(0, 1).reshape(*lead, n, geometry.out_features)


def conv_operator(weight: torch.Tensor, in_shape: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """The dense matrix of the valid conv: ``out.flatten() = maps.flatten() @ A``.

    Args:
        weight: ``(m, kh, kw)`` or ``(N, m, kh, kw)``.
        in_shape: ``(H, W)`` of the (padded) maps.
        stride: ``(sh, sw)``.

    Returns:
        ``(H*W, m*P)``, or ``(N, H*W, m*P)`` for per-token banks; columns in (kernel, row, col) order.
        Gathered from the kernels (:func:`gathered_weight`), so it is exact and differentiable in ``weight``.
    """
    return gathered_weight(weight, _seam_geometry(in_shape, tuple(weight.shape[-3:]), stride)).transpose(-1, -2)


def _seam_geometry(in_shape: tuple[int, int], bank: tuple[int, int, int], stride: tuple[int, int]) -> ConvGeometry:
    """The geometry of a valid conv of padded ``(H, W)`` maps at the backend seam (no padding, no crop)."""
    (H, W), (m, kh, kw) = in_shape, bank
    out = (1, 1) if (kh, kw) == (H, W) else ((H - kh) // stride[0] + 1, (W - kw) // stride[1] + 1)
    return ConvGeometry(H * W, m * out[0] * out[1], (H, W), (kh, kw), "valid", (0, 0, 0, 0), tuple(stride), out, m)


# ----------------------------------------------------------------------------- backends
class ConvBackend(nn.Module):
    """Base class of conv backends (see the module docstring for the call contract).

    ``exact_linear = True`` declares that the backend computes the convolution exactly, as a
    matrix product would, so that a layer may run as the linear map it is instead of calling the
    backend (:meth:`runs_as_linear`). Simulations of physical systems leave it ``False``.
    """

    exact_linear: bool = False

    def bind(self, geometry: ConvGeometry, name: str = "") -> None:
        """Called by the ConvShare layer whenever this backend is assigned to it, with the layer's
        geometry (e.g. its zero padding, which a physical simulation realises with guard bands)
        and name. The default keeps nothing."""

    def runs_as_linear(self, geometry: ConvGeometry, maps: int) -> bool:
        """Whether a layer of this geometry, on ``maps`` token maps, should compute
        :func:`gathered_linear` instead of calling the backend.

        The default: exact backends, whole-map kernels (where the kernels are the matrix).
        """
        return self.exact_linear and geometry.whole_map

    def forward(self, maps: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement forward(maps, weight, stride)")


def check_token_count(maps: torch.Tensor, weight: torch.Tensor) -> None:
    """Non-shared kernels exist per token position: the token count must match the bank."""
    if weight.dim() == 4 and weight.shape[0] != maps.shape[1]:
        raise GeometryError(
            f"non-shared ConvShare kernels were built for {weight.shape[0]} tokens but got {maps.shape[1]}; "
            f"non-shared layers need the token count (image size, prefix tokens) they were built with"
        )


class DirectConv(ConvBackend):
    """Electronic reference: the exact convolution, computed the cheapest way.

    Args:
        impl: ``"conv"`` convolves every token map (one batched ``F.conv2d``), always; ``"matrix"``
            pads the maps and multiplies them with the conv's dense operator (:func:`conv_operator`);
            ``"gather"`` runs a ConvShare layer as one ``F.linear`` (a batched matmul for per-token
            banks) whose weight is gathered from the kernels with padding, stride and cropping folded
            in (:func:`gathered_linear`), and at the seam is ``"matrix"``; ``"auto"`` applies
            :func:`auto_impl` (``gather`` for layers whose dense form is the cheaper, else ``conv``).
    """

    IMPLS = ("auto", "conv", "matrix", "gather")
    exact_linear = True

    def __init__(self, impl: str = "auto") -> None:
        super().__init__()
        if impl not in self.IMPLS:
            raise ConfigError(f"DirectConv impl {impl!r} is not one of {list(self.IMPLS)}")
        self.impl = impl
        self.exact_linear = impl != "conv"  # "conv" asks for the literal convolution, always

    def runs_as_linear(self, geometry: ConvGeometry, maps: int) -> bool:
        if type(self).forward is not DirectConv.forward:  # a subclass that changes the conv is always called
            return False
        if self.impl == "auto":
            return auto_impl(geometry.padded_shape, geometry.kernel, geometry.stride, maps) == "matrix"
        return self.impl == "gather" or (self.impl == "matrix" and geometry.whole_map)

    def forward(self, maps: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
        check_token_count(maps, weight)
        B, N, H, W = maps.shape
        kh, kw = weight.shape[-2:]
        impl = self.impl
        if impl == "auto":
            impl = auto_impl((H, W), (kh, kw), stride, B * N)
        if impl in ("matrix", "gather"):
            g = _seam_geometry((H, W), tuple(weight.shape[-3:]), stride)
            A = gathered_weight(weight, g)  # [N,] m*P, D
            flat = maps.reshape(B, N, H * W)  # B, N, D
            out = F.linear(flat, A) if A.dim() == 2 else torch.einsum("bnd,ned->bne", flat, A)  # B, N, m*P
            return out.reshape(B, N, -1, *g.out_shape)  # B, N, m, oh, ow
        out_shape = ((H - kh) // stride[0] + 1, (W - kw) // stride[1] + 1)
        if weight.dim() == 3:  # shared: every token map is one single-channel image
            out = F.conv2d(maps.reshape(B * N, 1, H, W), weight.unsqueeze(1), stride=stride)  # B*N, m, oh, ow
        else:  # non-shared: grouped conv, one group per token
            m = weight.shape[1]
            out = F.conv2d(maps, weight.reshape(N * m, 1, kh, kw), stride=stride, groups=N)  # B, N*m, oh, ow
        return out.reshape(B, N, -1, *out_shape)  # B, N, m, oh, ow

    def extra_repr(self) -> str:
        return f"impl={self.impl!r}"
