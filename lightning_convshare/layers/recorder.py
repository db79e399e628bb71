"""Capture attention probabilities from every recording-capable attention module."""
from __future__ import annotations

from types import TracebackType
from typing import Optional

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["AttentionRecorder", "recording_modules"]


def recording_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Named modules that can record attention (they have ``record`` and ``attn_probs``)."""
    return {
        name: m for name, m in model.named_modules() if hasattr(m, "record") and hasattr(m, "attn_probs")
    }


class AttentionRecorder:
    """Context manager that switches attention recording on and always switches it off again.

    Args:
        model: a model whose attention modules were swapped in by surgery.
        detach: return detached maps (metrics); ``False`` keeps the graph (attention distillation).

    Example:
        >>> with AttentionRecorder(model) as rec:
        ...     logits = model(images)
        >>> rec.maps["blocks.0.attn"].shape  # B, heads, N, N

    Raises:
        ValueError: on entry, if the model has no attention module that can record.
    """

    def __init__(self, model: nn.Module, detach: bool = True) -> None:
        self.model, self.detach = model, detach
        self._modules: dict[str, nn.Module] = {}
        self._previous: dict[str, bool] = {}
        self._snapshot: dict[str, torch.Tensor] | None = None

    def __enter__(self) -> AttentionRecorder:
        self._modules, self._snapshot = recording_modules(self.model), None
        if not self._modules:
            raise ConfigError(
                f"{type(self.model).__name__} has no attention module that can record; "
                "apply a surgery variant (e.g. 'vit') to swap in lightning_convshare's Attention"
            )
        for name, m in self._modules.items():
            self._previous[name] = m.record
            m.record, m.attn_probs = True, None
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self._snapshot = self._live_maps()
        for name, m in self._modules.items():
            m.record, m.attn_probs = self._previous.get(name, False), None

    @property
    def maps(self) -> dict[str, torch.Tensor]:
        """Attention probabilities of the last forward, ``{module name: (B, heads, N, N)}``, in depth order.

        Inside the ``with`` block: the latest forward; after it: what was recorded last.
        """
        return self._live_maps() if self._snapshot is None else self._snapshot

    def _live_maps(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, m in self._modules.items():
            if m.attn_probs is not None:
                out[name] = m.attn_probs.detach() if self.detach else m.attn_probs
        return out
