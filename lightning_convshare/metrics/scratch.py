"""Reusable buffers for the large temporaries of repeated metric updates on the CPU."""
from __future__ import annotations

import math
from typing import Callable

import torch

__all__ = ["Scratch", "ScratchBuffers"]

#: ``scratch(name, shape, like) -> tensor``: where an update writes a large temporary
Scratch = Callable[[str, tuple[int, ...], torch.Tensor], torch.Tensor]


def _fresh(name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    return like.new_empty(shape)


class ScratchBuffers:
    """Reusable buffers for the large temporaries of repeated updates on the CPU.

    Each fresh large CPU allocation gets new pages from the C library, which fault on first touch
    on every call (about a third of an update on the default model); reusing one buffer per
    (name, shape) avoids that. CUDA tensors, and tensors above ``max_numel`` elements (where the
    arithmetic dominates), are allocated normally: CUDA's caching allocator already reuses memory.

    Args:
        max_numel: largest buffer kept, in elements.
    """

    def __init__(self, max_numel: int = 1 << 22) -> None:
        self.max_numel = max_numel
        self._buffers: dict[tuple[str, tuple[int, ...], torch.dtype], torch.Tensor] = {}

    def __call__(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        if like.device.type != "cpu" or math.prod(shape) > self.max_numel:
            return like.new_empty(shape)
        key = (name, tuple(shape), like.dtype)
        buf = self._buffers.get(key)
        if buf is None or buf.is_inference() != torch.is_inference_mode_enabled():
            buf = self._buffers[key] = like.new_empty(shape)
        return buf
