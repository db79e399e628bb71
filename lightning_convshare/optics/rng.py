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

Integers are carried in ``int64`` tensors holding unsigned 32-bit values: the 32x32-bit product
fits in 64 bits (two's complement wrap-around keeps the low 64 bits exact), and the masks undo the
sign extension of ``>>``.
"""
from __future__ import annotations

import math

import torch

__all__ = ["MASK32", "philox2x32", "philox_normal_pair"]

MASK32 = 0xFFFFFFFF
PHILOX_M = 0xD256D193  # Random123's PHILOX_M2x32_0
PHILOX_W = 0x9E3779B9  # key schedule increment (golden ratio)


def philox2x32(
    c0: torch.Tensor, c1: torch.Tensor, key: torch.Tensor | int, rounds: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Philox-2x32 block function on ``int64`` tensors of unsigned 32-bit values.

    Args:
        c0, c1: the two counter words (broadcastable).
        key: the key word (tensor or int).
        rounds: 10 is the standard (Crush-resistant) choice.

    Returns:
        The two output words, as ``int64`` tensors in ``[0, 2**32)``.

    >>> [hex(int(v)) for v in philox2x32(torch.tensor(0), torch.tensor(0), 0)]
    ['0xff1dae59', '0x6cd10df2']
    """
    for _ in range(rounds):
        prod = c0 * PHILOX_M
        c0, c1 = ((prod >> 32) & MASK32) ^ key ^ c1, prod & MASK32
        key = (key + PHILOX_W) & MASK32
    return c0, c1


def philox_normal_pair(counter: torch.Tensor, seed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent standard normals per counter, a pure function of ``(seed, counter)``.

    Args:
        counter: ``int64`` counters (e.g. ``torch.arange(n).view(shape)``), below ``2**32``.
        seed: ``int64`` scalar tensor; its low word is the Philox key, its high word the second
            counter word.

    Returns:
        Two ``float32`` tensors shaped like ``counter``: Box-Muller's ``r cos(theta)`` and
        ``r sin(theta)``, ``r = sqrt(-2 ln u1)``, ``theta = 2 pi u2``, from the block's two 32-bit
        outputs (``u1`` in ``(0, 1]``, so no ``log(0)``; tails reach about 6.6 sigma).
    """
    c0, c1 = philox2x32(counter & MASK32, (seed >> 32) & MASK32, seed & MASK32)
    r = torch.sqrt(-2.0 * torch.log((c0.to(torch.float32) + 0.5) * 2.0**-32))
    theta = c1.to(torch.float32) * (2.0 * math.pi * 2.0**-32)
    return r * torch.cos(theta), r * torch.sin(theta)
