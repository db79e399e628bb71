"""Checks of a run's config that need Lightning or the built module, made before anything is written.

Types and ranges that would otherwise fail late (after an epoch), fail with a traceback, or do
something silently wrong: the trainer's arguments (names from ``Trainer.__init__``, epoch and step
counts, the accelerator actually present), the seed, the loss, the optimiser and schedule (built once
on a dummy parameter), and ``checkpoint.monitor`` against the metrics the module and callbacks log.
"""
from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Iterable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from ..errors import ConfigError
from .optim import create_optimizer, create_scheduler

__all__ = ["check_monitor", "check_run_config", "check_trainer_kwargs"]

#: trainer arguments that are counts: key -> smallest allowed value
_COUNTS = {"max_epochs": 1, "min_epochs": 0, "log_every_n_steps": 1, "num_sanity_val_steps": -1,
           "check_val_every_n_epoch": 1, "accumulate_grad_batches": 1, "num_nodes": 1}
_GPU_ACCELERATORS = ("gpu", "cuda")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def check_trainer_kwargs(kwargs: Mapping[str, Any]) -> None:
    """``trainer.*`` must be ``Trainer`` arguments of the right type, on hardware that exists.

    Raises:
        ConfigError: an unknown argument (with close matches), a count that is not an integer or out of
            range, a GPU accelerator on a machine without one.
    """
    known = [p for p in inspect.signature(pl.Trainer.__init__).parameters if p != "self"]
    for key in kwargs:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f" Did you mean {', '.join('trainer.' + c for c in close)}?" if close else ""
            raise ConfigError(f"trainer.{key} is not an argument of lightning's Trainer.{hint}")
    for key, low in _COUNTS.items():
        value = kwargs.get(key)
        if value is None:
            continue
        if not _is_int(value) or value < low:
            raise ConfigError(f"trainer.{key}={value!r} must be an integer >= {low}")
    max_steps = kwargs.get("max_steps")
    if max_steps is not None and (not _is_int(max_steps) or (max_steps < 1 and max_steps != -1)):
        raise ConfigError(f"trainer.max_steps={max_steps!r} must be a positive integer or -1 (no limit)")
    if kwargs.get("max_epochs") is None and kwargs.get("max_steps") in (None, -1):
        raise ConfigError("set trainer.max_epochs (or trainer.max_steps): a run needs an end")
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "val_check_interval"):
        value = kwargs.get(key)
        if value is not None and (not _number(value) or value < 0 or (isinstance(value, float) and value > 1)):
            raise ConfigError(f"trainer.{key}={value!r} must be a number of batches (int >= 0) or a fraction in [0, 1]")
    clip = kwargs.get("gradient_clip_val")
    if clip is not None and (not _number(clip) or clip < 0):
        raise ConfigError(f"trainer.gradient_clip_val={clip!r} must be a number >= 0")
    accelerator = str(kwargs.get("accelerator", "auto")).lower()
    if accelerator in _GPU_ACCELERATORS and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator} but this machine has no CUDA GPU; use trainer=cpu "
                          "(or trainer.accelerator=auto)")
    if accelerator == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("trainer.accelerator=mps but this machine has no MPS device; use trainer=cpu")


def check_run_config(cfg: Any) -> None:
    """The values of a resolved run config that are checked before the run directory exists.

    Raises:
        ConfigError: what was wrong, with the value, and what would work.
    """
    if not _is_int(cfg.get("seed")):
        raise ConfigError(f"seed={cfg.get('seed')!r} must be an integer")
    trainer = {k: v for k, v in dict(cfg.trainer).items() if k != "ckpt_path"}
    check_trainer_kwargs(trainer)
    smoothing = (cfg.get("loss") or {}).get("label_smoothing", 0.0)
    if not _number(smoothing) or not 0.0 <= float(smoothing) < 1.0:
        raise ConfigError(f"loss.label_smoothing={smoothing!r} must be a number in [0, 1)")
    optim = dict(cfg.optim)
    for key in ("lr", "weight_decay", "warmup_epochs", "warmup_lr", "min_lr"):
        value = optim.get(key)
        if value is not None and (not _number(value) or value < 0 or (key == "lr" and value == 0)):
            raise ConfigError(f"optim.{key}={value!r} must be a number {'> 0' if key == 'lr' else '>= 0'}")
    probe = nn.Linear(1, 1)
    try:
        optimizer = create_optimizer(probe, optim)
    except ConfigError:
        raise
    except Exception as e:  # timm's factory: unknown names are assertions or value errors
        raise ConfigError(f"cannot create optimizer {optim.get('name')!r}: {str(e).splitlines()[0][:200]}") from None
    create_scheduler(optimizer, optim, 10, 1)


def check_monitor(monitor: str | None, module: pl.LightningModule, callbacks: Iterable[pl.Callback]) -> None:
    """``checkpoint.monitor`` must be a metric that is logged every validation epoch.

    Raises:
        ConfigError: an unknown metric (with the ones that exist).
    """
    if monitor is None:
        return
    keys: set[str] = set(getattr(module, "monitor_keys", lambda: set())())
    prefixes: list[str] = []
    for cb in callbacks:
        keys |= set(getattr(cb, "monitor_keys", lambda: set())())
        prefixes += list(getattr(cb, "monitor_prefixes", lambda: [])())
    if monitor in keys or any(monitor.startswith(p) for p in prefixes):
        return
    close = difflib.get_close_matches(monitor, sorted(keys), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"checkpoint.monitor={monitor!r} is not a metric this run logs.{hint} "
                      f"Metrics: {', '.join(sorted(keys) + [p + '...' for p in prefixes])}")
