"""The one accuracy loop: top-1 accuracy and cross-entropy of one or several models on labelled batches.

Used by ``convshare convert --eval``, the distillation's start-of-training check, the robustness
sweep and the attention report (which records attention inside the forward it passes).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

__all__ = ["Forward", "Score", "evaluate", "logits_of"]

#: ``forward(name, model, images) -> output``: how each model is run (default: ``model(images)``)
Forward = Callable[[str, nn.Module, torch.Tensor], Any]


@dataclass
class Score:
    """One model's result: ``accuracy`` and mean ``loss`` are ``None`` when the batches carry no
    labels or labels outside the model's classes."""

    accuracy: Optional[float]
    loss: Optional[float]
    samples: int


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a model's output (distilled DeiTs return ``(cls, dist)`` in train mode)."""
    return output[0] if isinstance(output, tuple) else output


def _split(batch: Any) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    if isinstance(batch, (list, tuple)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def evaluate(
    models: Mapping[str, nn.Module],
    batches: Iterable[Any],
    *,
    device: str | torch.device | None = None,
    max_batches: Optional[int] = None,
    forward: Optional[Forward] = None,
) -> dict[str, Score]:
    """Run every model in eval mode over ``batches`` once (their modes are restored afterwards).

    Args:
        models: ``{name: model}``; each batch goes through the models in this order.
        batches: images or ``(images, labels, ...)`` (e.g. a DataLoader).
        device: where to run (default: each model's own device).
        max_batches: stop after this many batches.
        forward: how to run a model (e.g. with attention recording); default ``model(images)``.

    Returns:
        ``{name: Score}``.

    Raises:
        ConfigError: no batches at all (an empty split).
    """
    forward = forward or (lambda name, model, x: model(x))
    modes = {k: m.training for k, m in models.items()}
    correct: dict[str, Optional[int]] = dict.fromkeys(models, 0)
    loss: dict[str, Optional[float]] = dict.fromkeys(models, 0.0)
    total = 0
    for m in models.values():
        m.eval()
    try:
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            x, y = _split(batch)
            total += len(x)
            for name, model in models.items():
                dev = torch.device(device) if device is not None else _device(model)
                logits = logits_of(forward(name, model, x.to(dev)))
                labelled = (y is not None and logits.dim() == 2 and y.shape == logits.shape[:1] and len(y)
                            and int(y.max()) < logits.shape[1] and int(y.min()) >= 0)
                if not labelled or correct[name] is None:
                    correct[name] = loss[name] = None
                    continue
                target = y.to(logits.device)
                correct[name] += int((logits.argmax(-1) == target).sum())
                loss[name] += float(F.cross_entropy(logits.float(), target, reduction="sum"))
    finally:
        for name, model in models.items():
            model.train(modes[name])
    if total == 0:
        raise ConfigError("nothing to evaluate: the data loader is empty")
    return {name: Score(None if correct[name] is None else correct[name] / total,
                        None if loss[name] is None else loss[name] / total, total) for name in models}
