"""Counter-based Gaussian draws for the compiled camera chain: Philox-2x32-10 + Box-Muller.

Why not ``torch.randn``: on a CPU it fills one value at a time from a serial Mersenne Twister
(about 3.5 ns per value on a 2-core machine), which made the random draws of the four camera
passes cost more than the whole ``direct`` training step. A counter-based generator is a pure
function of ``(key, counter)``, so inside ``torch.compile`` it becomes part of the fused camera
kernel: vectorised, parallel, no noise tensor in memory, and the backward pass recomputes the
same draws instead of storing them. Philox-2x32-10 (Salmon et al., "Parallel random numbers: as
easy as 1, 2, 3", SC 2011; the generator behind cuRAND and PyTorch's CUDA RNG) passes BigCrush;
:func:`philox2x32` reproduces the Random123 known-answer vectors (tested). The draws depend only on
the seed and the element's position, so they are the same on every device.

The words are carried in ``int32`` tensors holding the unsigned 32-bit bit patterns: additions and
products wrap around modulo ``2**32`` (two's complement), masks after ``>>`` undo its sign extension,
and the high word of each round's 32x32-bit product is put together from 16x16-bit products
(:func:`mulhilo32`). Every step is then a 32-bit vector operation: AVX2 has no 64-bit vector multiply,
so a form in ``int64`` words (one 64-bit product per round) runs its products one lane at a time
(docs/optics.md, "Benchmarks").
"""
from __future__ import annotations

import math

import torch

__all__ = ["MASK32", "box_muller", "mulhilo32", "philox2x32", "philox_normal_pair", "to_words"]

MASK32 = 0xFFFFFFFF
PHILOX_M = 0xD256D193  # Random123's PHILOX_M2x32_0
PHILOX_W = 0x9E3779B9  # key schedule increment (golden ratio)


def _signed(v: int) -> int:
    """The ``int32`` value whose bit pattern is the unsigned 32-bit ``v`` (taken modulo ``2**32``)."""
    v &= MASK32
    return v - (1 << 32) if v >= 1 << 31 else v


def _shr16(x: torch.Tensor) -> torch.Tensor:
    """Logical ``x >> 16`` of ``int32`` bit patterns."""
    return (x >> 16) & 0xFFFF


def to_words(x: torch.Tensor | int) -> torch.Tensor | int:
    """Unsigned 32-bit values (an integer tensor or an int, taken modulo ``2**32``) as ``int32`` bit
    patterns; ``int32`` tensors pass through."""
    if isinstance(x, int):
        return _signed(x)
    if x.dtype == torch.int32:
        return x
    return (((x & MASK32) ^ 0x80000000) - 0x80000000).to(torch.int32)


def mulhilo32(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The high and low words of the 64-bit product of the unsigned 32-bit values ``a`` (``int32`` bit
    patterns) and ``m`` (an int), with 32-bit operations only."""
    lo = a * _signed(m)
    a_lo, a_hi = a & 0xFFFF, _shr16(a)
    m_lo, m_hi = m & 0xFFFF, (m >> 16) & 0xFFFF
    p0, p1, p2 = a_lo * m_lo, a_hi * m_lo, a_lo * m_hi  # each below 2**32: its bit pattern is exact
    carry = _shr16(p0) + (p1 & 0xFFFF) + (p2 & 0xFFFF)  # below 3 * 2**16
    hi = a_hi * m_hi + _shr16(p1) + _shr16(p2) + _shr16(carry)
    return hi, lo


def philox2x32(
    c0: torch.Tensor, c1: torch.Tensor, key: torch.Tensor | int, rounds: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Philox-2x32 block function.

    Args:
        c0, c1: the two counter words (broadcastable): ``int32`` bit patterns, or ``int64`` tensors of
            unsigned 32-bit values.
        key: the key word (a tensor of either kind, or an int).
        rounds: 10 is the standard (Crush-resistant) choice.

    Returns:
        The two output words: ``int32`` bit patterns when ``c0`` is ``int32``, else ``int64`` tensors in
        ``[0, 2**32)``.

    >>> [hex(int(v)) for v in philox2x32(torch.tensor(0), torch.tensor(0), 0)]
    ['0xff1dae59', '0x6cd10df2']
    """
    wide = c0.dtype != torch.int32
    c0, c1, key = to_words(c0), to_words(c1), to_words(key)
    for _ in range(rounds):
        hi, lo = mulhilo32(c0, PHILOX_M)
        c0, c1 = hi ^ key ^ c1, lo
        key = key + _signed(PHILOX_W)  # wraps around modulo 2**32
    if wide:
        return c0.to(torch.int64) & MASK32, c1.to(torch.int64) & MASK32
    return c0, c1


def philox_normal_pair(counter: torch.Tensor, seed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent standard normals per counter, a pure function of ``(seed, counter)``.

    Args:
        counter: counters, e.g. ``torch.arange(n, dtype=torch.int32).view(shape)`` (``int32``: the words
            themselves; wider integers are taken modulo ``2**32``).
        seed: ``int64`` scalar tensor; its low word is the Philox key, its high word the second
            counter word.

    Returns:
        Two ``float32`` tensors shaped like ``counter``: Box-Muller's ``r cos(theta)`` and
        ``r sin(theta)``, ``r = sqrt(-2 ln u1)``, ``theta = 2 pi u2`` (:func:`box_muller`).
    """
    return box_muller(*philox2x32(to_words(counter), to_words(seed >> 32), to_words(seed)))


def box_muller(w0: torch.Tensor, w1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two standard normals from two ``int32`` words (bit patterns of uniform 32-bit values).

    ``u1 = (w0 + 1/2) / 2**32`` from all 32 bits of the first word, in ``(0, 1]`` (no ``log(0)``; the
    tails reach about 6.6 sigma), summed from its top 24 and low 8 bits so that each part is exact in
    float32; ``theta`` from the top 24 bits of the second (float32's resolution of ``2 pi``).
    """
    top, low = ((w0 >> 8) & 0xFFFFFF).to(torch.float32), (w0 & 0xFF).to(torch.float32) + 0.5
    r = torch.sqrt(-2.0 * torch.log(top * 2.0**-24 + low * 2.0**-32))
    theta = ((w1 >> 8) & 0xFFFFFF).to(torch.float32) * (2.0 * math.pi * 2.0**-24)
    return r * torch.cos(theta), r * torch.sin(theta)
