"""Signed-value encodings: signed token maps and kernels on a 4f system that shows non-negative
values and reads intensity, one registry (:data:`SIGNED_ENCODINGS`).

Every encoding maps the normalised input ``x`` (a plane's maps over their full scale, in ``[-1, 1]``)
to ``A`` non-negative SLM parts and the normalised kernel ``k`` to ``Bk`` non-negative filter parts;
the system runs the ``A x Bk`` passes, the camera recovers each pass's field ``y_ab = u_a * v_b``
(``*``: the layer's correlation) as ``sqrt(intensity)``, and the electronics computes
``x * k = sum_ab w_ab y_ab - offset terms``. ``M`` is the map's content mask (1 on the map, 0 on the
layer's zero padding, which the guard band realises; the SLM's offset light covers the map only).

========================  ======  ==================================  =====================================
encoding                  passes  SLM / filter values                 electronic recombination
========================  ======  ==================================  =====================================
``pseudo_negativity``     4       ``x+, x-`` / ``k+, k-``              ``y++ - y+- - y-+ + y--``
``input_offset``          2       ``(x + M) / 2`` / ``k+, k-``         ``2 (y+ - y-) - M * k``
``kernel_offset``         2       ``x+, x-`` / ``(k + 1) / 2``         ``2 (y+ - y-) - x * 1``
``offset``                1       ``(x + M) / 2`` / ``(k + 1) / 2``    ``4 y - x * 1 - M * k - M * 1``
========================  ======  ==================================  =====================================

The offset terms are known electronically: ``M * k`` is the kernel's sum (valid padding; near the
edges of same-padded maps, the part of it over the map), ``x * 1`` a box filter of the input, ``M * 1``
the number of map pixels under the kernel. An aperture's PSF is folded into ``k`` and ``1`` alike.

Noise (docs/optics.md, "Signed-value encodings"): the camera normalises each pass's plane to its
brightest read pixel ``fs_ab = max y_ab^2``; shot noise of ``e`` photo-electrons at full scale gives the
recovered field ``sqrt(fs (I + n))`` the variance ``fs_ab / (4 e)`` whatever the signal (the square
root stabilises the Poisson variance), so the result's variance is ``sum_ab w_ab^2 fs_ab / (4 e)``
(:meth:`SignedEncoding.shot_noise_variance`). The offsets raise ``fs`` (``y`` carries the offset's
light): fewer passes, more shot noise. Read noise ``sigma`` gives ``fs sigma^2 / (4 I)``, large where a
pass is dark (``I -> 0``: pseudo-negativity's rectified parts) and bounded where the offset keeps every
pixel lit.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..registry import Registry
from .encoding import PSEUDO_NEGATIVE_WEIGHTS, effective_kernel, recombine_passes, split_signed
from .layout import PlaneLayout

__all__ = ["SIGNED_ENCODINGS", "SignedEncoding", "create_encoding", "register_encoding"]

SIGNED_ENCODINGS: Registry[Callable[[], SignedEncoding]] = Registry("signed-value encoding")


def register_encoding(name: str) -> Callable:
    """Decorator registering a :class:`SignedEncoding` class under ``name``."""
    return SIGNED_ENCODINGS.register(name)


class SignedEncoding:
    """Base class (see the module docstring).

    Attributes:
        name: registry name.
        weights: ``(A, Bk)`` pass weights of the electronic recombination.
        offsets_inputs / offsets_kernels: whether the SLM / filter values carry an offset.
        scaled: the encoding needs the full scales ``sx``, ``sk`` (an offset is relative to them);
            pseudo-negativity does not (the camera's normalisation makes it scale-invariant).
    """

    name = ""
    weights: tuple[tuple[float, ...], ...] = ((1.0,),)
    offsets_inputs = False
    offsets_kernels = False
    scaled = True

    @property
    def input_parts(self) -> int:
        return len(self.weights)

    @property
    def kernel_parts(self) -> int:
        return len(self.weights[0])

    @property
    def passes(self) -> int:
        """Optical passes per kernel and input block."""
        return self.input_parts * self.kernel_parts

    def encode_input(self, x: torch.Tensor) -> torch.Tensor:
        """``(A, ...)`` SLM values in ``[0, 1]`` from normalised maps ``x`` (``[-1, 1]``)."""
        return ((x + 1) / 2).unsqueeze(0) if self.offsets_inputs else split_signed(x)

    def encode_kernel(self, k: torch.Tensor) -> torch.Tensor:
        """``(Bk, ...)`` filter values in ``[0, 1]`` from a normalised kernel bank ``k``."""
        return ((k + 1) / 2).unsqueeze(0) if self.offsets_kernels else split_signed(k)

    def recombine(self, passes: torch.Tensor) -> torch.Tensor:
        """``sum_ab w_ab y_ab`` of ``(A, G, T, Bk, ...)`` recovered passes -> ``(G, T, ...)``."""
        return recombine_passes(passes, self.weights)

    def offset_terms(
        self, x: torch.Tensor, k: torch.Tensor, psf: Optional[torch.Tensor], layout: PlaneLayout
    ) -> Optional[torch.Tensor]:
        """The electronic offset terms to subtract from :meth:`recombine`'s result.

        Args:
            x: ``(G, T, h, w)`` normalised content maps (the digital input).
            k: ``(m, kh, kw)`` shared or ``(N, m, kh, kw)`` normalised signed kernels.
            psf: the aperture PSF folded into the kernels, or ``None``.
            layout: the layer's plane layout (padding, stride, read pixels).

        Returns:
            A tensor broadcastable to ``(G, T, m, oh, ow)``, or ``None`` (no offset).
        """
        kh, kw = k.shape[-2:]
        inside = psf is None and not any(layout.pad)  # valid padding, no aperture: every tap lands on the map
        terms = []
        if self.offsets_kernels:  # the kernel offset's light: a box filter of the input (x * 1)
            padded = _pad_to_reads(x, layout)  # G, T, H', W'
            if psf is None and padded.shape[-2:] == (kh, kw):  # one read pixel per map: the map's sum
                terms.append(padded.sum(dim=(-2, -1))[:, :, None, None, None])  # G, T, 1, 1, 1
            elif psf is None:
                G, T = padded.shape[:2]
                box = F.avg_pool2d(padded.reshape(G * T, 1, *padded.shape[-2:]), (kh, kw), layout.stride, divisor_override=1)
                terms.append(box.reshape(G, T, 1, *box.shape[-2:]))  # G, T, 1, oh, ow
            else:
                ones = effective_kernel(torch.ones((1, kh, kw), dtype=k.dtype, device=k.device), psf)  # 1, kh', kw'
                terms.append(_correlate(padded, ones, layout.stride))  # G, T, 1, oh, ow
        if self.offsets_inputs:  # the input offset's light: the kernel over the map (M * k)
            if inside:  # the kernel's sum at every read pixel
                total = k.sum(dim=(-2, -1))[..., None, None]  # [N,] m, 1, 1
                terms.append(total.unsqueeze(0).unsqueeze(0) if k.dim() == 3 else total.unsqueeze(1))  # 1|N, 1, m, 1, 1
            else:
                mask = _pad_to_reads(torch.ones((1, 1, *layout.tile), dtype=k.dtype, device=k.device), layout)  # 1, 1, H, W
                k_eff = effective_kernel(k, psf)  # [N,] m, kh', kw'
                if k.dim() == 3:
                    terms.append(_correlate(mask, k_eff, layout.stride))  # 1, 1, m, oh, ow
                else:
                    masks = mask.expand(k.shape[0], 1, *mask.shape[-2:])  # N, 1, H, W
                    terms.append(_correlate(masks, k_eff, layout.stride))  # N, 1, m, oh, ow
            if self.offsets_kernels:  # both offsets: their product's light (M * 1), the map pixels under the kernel
                if inside:
                    terms.append(torch.full((1, 1, 1, 1, 1), float(kh * kw), dtype=k.dtype, device=k.device))
                else:
                    mask = _pad_to_reads(torch.ones((1, 1, *layout.tile), dtype=k.dtype, device=k.device), layout)
                    ones = effective_kernel(torch.ones((1, kh, kw), dtype=k.dtype, device=k.device), psf)
                    terms.append(_correlate(mask, ones, layout.stride))  # 1, 1, 1, oh, ow
        if not terms:
            return None
        total = terms[0]
        for t in terms[1:]:
            total = total + t
        return total

    def shot_noise_variance(self, full_scales: torch.Tensor, electrons: float) -> torch.Tensor:
        """Variance of the normalised result ``x * k`` under shot noise alone (delta method).

        Args:
            full_scales: ``(A, Bk, ...)`` each pass's camera full scale ``fs_ab = max y_ab^2`` (in the
                units of the normalised SLM and filter values).
            electrons: photo-electrons at full scale (``shot.photons``).

        Returns:
            ``sum_ab w_ab^2 fs_ab / (4 electrons)`` (independent of the pixel's signal).
        """
        w2 = torch.tensor(self.weights, dtype=full_scales.dtype, device=full_scales.device).square()  # A, Bk
        w2 = w2.reshape(*w2.shape, *([1] * (full_scales.dim() - 2)))
        return (w2 * full_scales).sum(dim=(0, 1)) / (4 * electrons)

    def __repr__(self) -> str:
        return f"{self.name} ({self.passes} pass{'es' if self.passes > 1 else ''})"


def _pad_to_reads(x: torch.Tensor, layout: PlaneLayout) -> torch.Tensor:
    """Maps ``(..., h, w)`` padded by the read pixels' reach (``before``/``after``: the layer's padding
    and the aperture halo), so a valid correlation with the effective kernel gives the read pixels."""
    (bh, bw), (ah, aw) = layout.before, layout.after
    return F.pad(x, (bw, aw, bh, ah))


def _correlate(maps: torch.Tensor, kernels: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """``(G, T, H, W)`` maps with ``(m, kh, kw)`` kernels (or ``(G, m, kh, kw)``, one bank per ``G``)
    -> ``(G, T, m, oh, ow)``; the maps' ``T`` dimension broadcasts for a per-``G`` bank."""
    G, T, H, W = maps.shape
    if kernels.dim() == 3:
        out = F.conv2d(maps.reshape(G * T, 1, H, W), kernels.unsqueeze(1), stride=stride)  # G*T, m, oh, ow
        return out.reshape(G, T, *out.shape[1:])
    m = kernels.shape[1]
    bank = kernels.reshape(G * m, 1, *kernels.shape[-2:])  # G*m, 1, kh, kw
    out = F.conv2d(maps.transpose(0, 1), bank, stride=stride, groups=G)  # T, G*m, oh, ow
    return out.reshape(T, G, m, *out.shape[-2:]).transpose(0, 1)  # G, T, m, oh, ow


@register_encoding("pseudo_negativity")
class PseudoNegativity(SignedEncoding):
    """``x = x+ - x-``, ``k = k+ - k-``: four passes, no offset light."""

    name = "pseudo_negativity"
    weights = PSEUDO_NEGATIVE_WEIGHTS
    scaled = False


@register_encoding("input_offset")
class InputOffset(SignedEncoding):
    """The input offset to ``[0, 1]``, the kernel split: two passes."""

    name = "input_offset"
    weights = ((2.0, -2.0),)
    offsets_inputs = True


@register_encoding("kernel_offset")
class KernelOffset(SignedEncoding):
    """The input split, the kernel offset to ``[0, 1]``: two passes."""

    name = "kernel_offset"
    weights = ((2.0,), (-2.0,))
    offsets_kernels = True


@register_encoding("offset")
class Offset(SignedEncoding):
    """Input and kernel offset to ``[0, 1]``: one pass."""

    name = "offset"
    weights = ((4.0,),)
    offsets_inputs = True
    offsets_kernels = True


def create_encoding(spec: str | SignedEncoding) -> SignedEncoding:
    """An encoding from its registry name (``pseudo_negativity``, ``input_offset``, ``kernel_offset``, ``offset``).

    Raises:
        UnknownNameError: an unknown name (lists the registered ones).
    """
    return spec if isinstance(spec, SignedEncoding) else SIGNED_ENCODINGS.get(spec)()
