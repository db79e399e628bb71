"""The training side of ``convshare sweep``: live metric history and a graceful early stop.

The local sweep runner starts each trial with ``$CONVSHARE_SWEEP_TRIAL`` set (the protocol is
:mod:`lightning_convshare.trial_protocol`); the callback then

* appends the epoch's scalar metrics to ``<run dir>/history.jsonl`` (what W&B's early-termination
  rule reads as the run history), and
* stops training at the end of an epoch once the runner has written ``<run dir>/STOP`` (a
  hyperband decision): the run ends normally and still writes ``metrics.json``.

``wandb agent`` runs do not set the variable and are unaffected.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl

from ..files import atomic_write
from ..trial_protocol import HISTORY_FILE, STOP_FILE, TRIAL_ENV

__all__ = ["TrialMonitor", "create_trial_callback"]


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value) and not key.endswith("_step"):
            out[key] = value
    return out


def _epoch(line: str) -> float:
    try:
        return float(json.loads(line).get("epoch", 0))
    except (ValueError, AttributeError):
        return float("inf")  # a torn line: dropped


class TrialMonitor(pl.Callback):
    """Writes the per-epoch metric history and honours the sweep runner's stop request.

    Args:
        run_dir: the run directory (``history.jsonl`` and ``STOP`` live there).
    """

    def __init__(self, run_dir: Path | str) -> None:
        self.run_dir = Path(run_dir)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A resumed trial: drop the history rows of epochs after its checkpoint (they are run again)."""
        path = self.run_dir / HISTORY_FILE
        if trainer.is_global_zero and trainer.current_epoch > 0 and path.is_file():
            kept = [line for line in path.read_text().splitlines() if _epoch(line) <= trainer.current_epoch]
            atomic_write(path, "".join(line + "\n" for line in kept))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.is_global_zero:
            row = {"epoch": trainer.current_epoch + 1, **_scalars(trainer.callback_metrics)}
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.run_dir / HISTORY_FILE, "a") as f:  # one short line per epoch: append is atomic enough
                f.write(json.dumps(row, sort_keys=True) + "\n")
        # every rank must take the same decision, or DDP would hang in the next collective
        stop = trainer.strategy.reduce_boolean_decision((self.run_dir / STOP_FILE).exists(), all=False)
        if stop:
            trainer.should_stop = True


def create_trial_callback(cfg: Any, run_dir: Path) -> Optional[TrialMonitor]:
    """The trial monitor when the sweep runner started this run, else ``None``."""
    return TrialMonitor(run_dir) if os.environ.get(TRIAL_ENV) else None
