"""Geometry of a ConvShare layer: how ``Linear(D_in, D_out)`` becomes a shared depthwise conv.

Pure Python (no torch), so configurations can be checked without building a model.

The rule (also in the README):

* Each token's ``D_in`` vector is an ``h x w`` map; by default the most square factorisation
  with ``h <= w`` (64 -> 8x8, 192 -> 12x16, 256 -> 16x16, 768 -> 24x32).
* A bank of ``m`` kernels of size ``kh x kw`` is slid over every token map. Output features per
  token = ``m * out_h * out_w``, in the order (kernel, row, column).
* ``padding="valid"``: stride 1, ``out = (h - kh + 1, w - kw + 1)``, ``P = out_h * out_w``
  positions, ``m = D_out / P``. A whole-map kernel (``"full"``) gives ``P = 1, m = D_out``: the
  layer is exactly ``nn.Linear``.
* ``padding="same"``: zero padding so that, at stride ``s``, ``out = (ceil(h/s), ceil(w/s))``;
  total padding per axis ``max((out - 1) * s + k - in, 0)``, the odd pixel (even kernels) at the
  bottom/right as in TensorFlow and PyTorch. The stride is the smallest ``s`` in
  ``1 .. min(kh, kw)`` for which ``P`` divides ``D_out`` (so qkv uses 3 kernels, fc1 4, proj 1,
  and fc2, which reduces the 4x hidden map, uses stride 2 and 1 kernel). Strides never exceed
  the kernel, so every input value reaches the output.
* ``out_policy="exact"`` requires ``m * P == D_out``; ``out_policy="crop"`` uses
  ``m = ceil(D_out / P)`` kernels (for same padding, the smallest stride with ``P <= D_out``) and
  drops the surplus outputs, so every kernel size that fits the map is usable.
* Kernels larger than the map are never allowed.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal, Sequence, Union

from ..errors import GeometryError

__all__ = [
    "KernelSpec",
    "ConvGeometry",
    "default_map_shape",
    "resolve_geometry",
    "working_kernel_sizes",
]

KernelSpec = Union[int, str, Sequence[int]]
Padding = Literal["valid", "same"]
OutPolicy = Literal["exact", "crop"]
PADDINGS = ("valid", "same")
OUT_POLICIES = ("exact", "crop")


def default_map_shape(features: int) -> tuple[int, int]:
    """Most square factorisation ``(h, w)`` of ``features`` with ``h <= w``.

    >>> default_map_shape(64), default_map_shape(192), default_map_shape(768)
    ((8, 8), (12, 16), (24, 32))
    """
    if features < 1:
        raise GeometryError(f"cannot lay out {features} features as a map: need at least 1")
    h = max(d for d in range(1, math.isqrt(features) + 1) if features % d == 0)
    return h, features // h


@dataclass(frozen=True)
class ConvGeometry:
    """Everything a ConvShare layer needs to know about its convolution.

    Attributes:
        in_features: ``D_in``.
        out_features: ``D_out`` (after cropping).
        map_shape: ``(h, w)`` token map.
        kernel: ``(kh, kw)``.
        padding: ``"valid"`` or ``"same"``.
        pad: zero padding ``(top, bottom, left, right)``.
        stride: ``(sh, sw)``.
        out_shape: ``(out_h, out_w)`` output map per kernel.
        num_kernels: ``m``.
    """

    in_features: int
    out_features: int
    map_shape: tuple[int, int]
    kernel: tuple[int, int]
    padding: str
    pad: tuple[int, int, int, int]
    stride: tuple[int, int]
    out_shape: tuple[int, int]
    num_kernels: int

    @property
    def positions(self) -> int:
        """``P``: output positions per kernel."""
        return self.out_shape[0] * self.out_shape[1]

    @property
    def raw_out_features(self) -> int:
        """``m * P`` before cropping."""
        return self.num_kernels * self.positions

    @property
    def cropped(self) -> int:
        """Surplus outputs dropped by ``out_policy="crop"``."""
        return self.raw_out_features - self.out_features

    @property
    def whole_map(self) -> bool:
        """True when the layer is exactly a linear map (valid padding, whole-map kernel)."""
        return self.out_shape == (1, 1) and self.kernel == self.map_shape and self.pad == (0, 0, 0, 0)

    @property
    def padded_shape(self) -> tuple[int, int]:
        """Map shape after zero padding."""
        top, bottom, left, right = self.pad
        return self.map_shape[0] + top + bottom, self.map_shape[1] + left + right

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """Short human description, e.g. ``8x8 map, 3x3 valid, 16 kernels -> 6x6 (crop 0)``."""
        (h, w), (kh, kw), (oh, ow) = self.map_shape, self.kernel, self.out_shape
        stride = "" if self.stride == (1, 1) else f", stride {self.stride[0]}x{self.stride[1]}"
        crop = f", crop {self.cropped}" if self.cropped else ""
        return f"{h}x{w} map, {kh}x{kw} {self.padding}{stride}, {self.num_kernels} kernels -> {oh}x{ow}{crop}"


def _kernel_tuple(kernel_size: KernelSpec, map_shape: tuple[int, int]) -> tuple[int, int]:
    if isinstance(kernel_size, str):
        if kernel_size.lower() == "full":
            return map_shape
        if kernel_size.isdigit():
            return int(kernel_size), int(kernel_size)
        raise GeometryError(f"kernel_size {kernel_size!r} is not understood: use an int, 'full' or [kh, kw]")
    if isinstance(kernel_size, bool):
        raise GeometryError(f"kernel_size {kernel_size!r} is not understood: use an int, 'full' or [kh, kw]")
    if isinstance(kernel_size, int):
        return kernel_size, kernel_size
    ks = tuple(int(k) for k in kernel_size)
    if len(ks) != 2:
        raise GeometryError(f"kernel_size {list(kernel_size)} must have two entries [kh, kw]")
    return ks  # type: ignore[return-value]


def _same_pad(size: int, k: int, s: int) -> tuple[int, int, int]:
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return out, total // 2, total - total // 2


def _solve(
    in_features: int,
    out_features: int,
    map_shape: tuple[int, int],
    kernel: tuple[int, int],
    padding: str,
    out_policy: str,
) -> ConvGeometry | str:
    """Return the geometry, or a string saying why there is none."""
    (h, w), (kh, kw) = map_shape, kernel
    if kh < 1 or kw < 1:
        return f"kernel {kh}x{kw} must be at least 1x1"
    if kh > h or kw > w:
        return f"kernel {kh}x{kw} is larger than the {h}x{w} map"
    if padding == "valid":
        out = (h - kh + 1, w - kw + 1)
        p = out[0] * out[1]
        if out_features % p and out_policy == "exact":
            return (
                f"valid padding gives {out[0]}x{out[1]} = {p} positions per kernel, "
                f"and {out_features} is not a multiple of {p}"
            )
        m = -(-out_features // p)
        return ConvGeometry(in_features, out_features, map_shape, kernel, padding, (0, 0, 0, 0), (1, 1), out, m)
    # same padding: smallest stride (at most the kernel, so no input is skipped) whose output fits
    for s in range(1, min(kh, kw) + 1):
        oh, pt, pb = _same_pad(h, kh, s)
        ow, pl, pr = _same_pad(w, kw, s)
        p = oh * ow
        ok = (out_features % p == 0) if out_policy == "exact" else (p <= out_features)
        if ok:
            m = -(-out_features // p)
            return ConvGeometry(
                in_features, out_features, map_shape, kernel, padding, (pt, pb, pl, pr), (s, s), (oh, ow), m
            )
    return (
        f"same padding gives ceil({h}/s) x ceil({w}/s) positions per kernel, and for no stride "
        f"s <= {min(kh, kw)} (the kernel size) does that divide {out_features}"
    )


def working_kernel_sizes(
    in_features: int,
    out_features: int,
    map_shape: tuple[int, int],
    padding: str,
    out_policy: str = "exact",
) -> list[int | str]:
    """Square kernel sizes (and ``"full"``) that give a valid geometry for this layer."""
    sizes: list[int | str] = [
        k
        for k in range(1, min(map_shape) + 1)
        if isinstance(_solve(in_features, out_features, map_shape, (k, k), padding, out_policy), ConvGeometry)
    ]
    if padding == "valid" and map_shape[0] != map_shape[1]:
        sizes.append("full")
    return sizes


def resolve_geometry(
    in_features: int,
    out_features: int,
    *,
    kernel_size: KernelSpec = "full",
    padding: str = "valid",
    map_shape: Sequence[int] | None = None,
    out_policy: str = "exact",
    name: str = "",
) -> ConvGeometry:
    """Solve the ConvShare geometry of one layer (see the module docstring for the rule).

    Args:
        in_features: ``D_in`` of the replaced linear layer.
        out_features: ``D_out`` of the replaced linear layer.
        kernel_size: int ``k`` (k x k), ``"full"`` (whole map) or ``[kh, kw]``.
        padding: ``"valid"`` or ``"same"``.
        map_shape: ``(h, w)`` with ``h * w == in_features``; default: most square factorisation.
        out_policy: ``"exact"`` or ``"crop"``.
        name: layer name used in error messages (e.g. ``"blocks.3.mlp.fc2"``).

    Returns:
        The :class:`ConvGeometry`.

    Raises:
        GeometryError: naming the layer and map shape and listing the kernel sizes that work.
    """
    where = f"{name}: " if name else ""
    if padding not in PADDINGS:
        raise GeometryError(f"{where}padding {padding!r} is not supported; use one of {list(PADDINGS)}")
    if out_policy not in OUT_POLICIES:
        raise GeometryError(f"{where}out_policy {out_policy!r} is not supported; use one of {list(OUT_POLICIES)}")
    if map_shape is None:
        shape = default_map_shape(in_features)
    else:
        shape = tuple(int(s) for s in map_shape)
        if len(shape) != 2 or shape[0] * shape[1] != in_features:
            ok = [f"{d}x{in_features // d}" for d in range(1, in_features + 1) if in_features % d == 0]
            raise GeometryError(
                f"{where}map_shape {list(map_shape)} does not hold {in_features} features; "
                f"maps that do: {', '.join(ok[:12])}{' ...' if len(ok) > 12 else ''}"
            )
    kernel = _kernel_tuple(kernel_size, shape)  # type: ignore[arg-type]
    geom = _solve(in_features, out_features, shape, kernel, padding, out_policy)
    if isinstance(geom, ConvGeometry):
        return geom
    works = working_kernel_sizes(in_features, out_features, shape, padding, out_policy)
    hint = f"kernel sizes that work here: {works}" if works else "no kernel size works here"
    if out_policy == "exact" and "larger than" not in geom:
        hint += f"; or set out_policy=crop to allow any kernel up to {min(shape)}"
    raise GeometryError(
        f"{where}cannot turn Linear({in_features} -> {out_features}) into a ConvShare layer on a "
        f"{shape[0]}x{shape[1]} token map with a {kernel[0]}x{kernel[1]} kernel and {padding} padding: "
        f"{geom}. {hint[0].upper() + hint[1:]}."
    )
