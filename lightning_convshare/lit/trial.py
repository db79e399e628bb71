"""The training side of ``convshare sweep``: live metric history, graceful early stop, summary upload.

The local sweep runner starts each trial with ``$CONVSHARE_SWEEP_TRIAL`` set; the callback
registered here then

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
from typing import Any, Optional, Sequence

import pytorch_lightning as pl

from .callbacks import register_callback

__all__ = ["HISTORY_FILE", "STOP_FILE", "TRIAL_ENV", "TrialMonitor", "log_sweep_summary"]

TRIAL_ENV = "CONVSHARE_SWEEP_TRIAL"
HISTORY_FILE = "history.jsonl"
STOP_FILE = "STOP"


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


class TrialMonitor(pl.Callback):
    """Writes the per-epoch metric history and honours the sweep runner's stop request.

    Args:
        run_dir: the run directory (``history.jsonl`` and ``STOP`` live there).
    """

    def __init__(self, run_dir: Path | str) -> None:
        self.run_dir = Path(run_dir)

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


@register_callback("sweep_trial")
def _sweep_trial(cfg: Any, run_dir: Path) -> Optional[TrialMonitor]:
    return TrialMonitor(run_dir) if os.environ.get(TRIAL_ENV) else None


def log_sweep_summary(
    *,
    mode: str,
    directory: Path,
    name: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    images: Sequence[Path],
    project: str = "lightning-convshare",
    entity: Optional[str] = None,
    group: Optional[str] = None,
) -> Optional[str]:
    """Log a sweep's summary table and plots as one W&B run; returns the run's directory.

    Args:
        mode: ``online`` or ``offline`` (``disabled`` logs nothing and returns ``None``).
        directory: where W&B writes its files (``<directory>/wandb/...``).
        name: the W&B run name.
        columns: table column names.
        rows: table rows (numbers and strings).
        images: PNG files, logged under ``sweep/<file stem>``.
        project: W&B project.
        entity: W&B entity (team or user).
        group: W&B run group (the trials of the sweep use the same one).
    """
    if mode == "disabled":
        return None
    import wandb

    directory.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=project, entity=entity, group=group, name=name, job_type="sweep-summary",
                     dir=str(directory), mode=mode, reinit="create_new")
    try:
        table = wandb.Table(columns=list(columns), data=_cells(rows))
        run.log({"sweep/summary": table, **{f"sweep/{p.stem}": wandb.Image(str(p)) for p in images}})
        return str(Path(run.dir).parent)
    finally:
        run.finish()


def _cells(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """W&B tables need one type per column: numeric columns stay numbers, mixed ones (kernel 3 or full) become text."""
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    numeric = [all(v is None or number(v) for v in col) for col in zip(*rows, strict=True)] if rows else []
    return [[v if v is None or numeric[i] else str(v) for i, v in enumerate(r)] for r in rows]
