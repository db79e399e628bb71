"""Optimiser and LR schedule from config, both timm's."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn

from ..errors import ConfigError

__all__ = ["create_optimizer", "create_scheduler"]

_SCHEDULE_KEYS = ("warmup_epochs", "warmup_lr", "min_lr")


def create_optimizer(model: nn.Module, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """``timm.optim.create_optimizer_v2`` (no weight decay on biases, norms, pos/cls embeddings).

    Args:
        model: the network.
        cfg: ``{name, lr, weight_decay, **optimizer kwargs}`` plus the schedule keys
            (``warmup_epochs``, ``warmup_lr``, ``min_lr``), which are ignored here.
    """
    opts = {k: v for k, v in cfg.items() if k not in _SCHEDULE_KEYS}
    name = opts.pop("name", "adamw")
    try:
        return create_optimizer_v2(model, opt=name, **opts)
    except (TypeError, ValueError, AssertionError) as e:
        raise ConfigError(f"cannot create optimizer {name!r} with {opts}: {e}") from None


def create_scheduler(
    optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any], total_steps: int, steps_per_epoch: int
) -> CosineLRScheduler:
    """Per-step cosine decay to ``min_lr`` after a linear warmup of ``warmup_epochs`` from ``warmup_lr``."""
    warmup = int(round(float(cfg.get("warmup_epochs", 0)) * steps_per_epoch))
    return CosineLRScheduler(
        optimizer,
        t_initial=max(total_steps, 1),
        lr_min=float(cfg.get("min_lr", 0.0)),
        warmup_t=min(warmup, max(total_steps - 1, 0)),
        warmup_lr_init=float(cfg.get("warmup_lr", 0.0)),
        t_in_epochs=False,
    )
