"""The callbacks a run gets, listed explicitly, and the surgery-report callback.

:func:`create_callbacks` asks each factory of :data:`CALLBACK_FACTORIES` in turn; a factory
``fn(cfg, run_dir) -> Callback | None`` decides from the resolved config whether its callback takes
part in the run. A new feature adds its factory to that tuple (no registration by import side effect).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Optional

import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from .attention_callback import create_attention_callback
from .trial_callback import create_trial_callback

__all__ = ["CALLBACK_FACTORIES", "SurgeryReportCallback", "create_callbacks"]

log = logging.getLogger(__name__)


class SurgeryReportCallback(pl.Callback):
    """Logs the module's ``surgery_report``: text file in the run dir, W&B table, parameter counts."""

    def __init__(self, run_dir: Path | str) -> None:
        self.run_dir = Path(run_dir)

    @rank_zero_only
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        report = getattr(pl_module, "surgery_report", None)
        if report is None:
            return
        log.info("%s", report)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "surgery.txt").write_text(str(report) + "\n")
        for lg in trainer.loggers:
            lg.log_metrics({"model/params": float(report.params_after)}, step=0)
            if isinstance(lg, WandbLogger):
                columns = ["layer", "role", "before", "after", "params"]
                lg.log_table("model/surgery", columns=columns, data=[list(r) for r in report.rows()])


def create_surgery_report_callback(cfg: Any, run_dir: Path) -> SurgeryReportCallback:
    return SurgeryReportCallback(run_dir)


#: every callback a run can get, in order; each factory returns ``None`` to sit out
CALLBACK_FACTORIES: tuple[Callable[[Any, Path], Optional[pl.Callback]], ...] = (
    create_surgery_report_callback,  # always: surgery.txt, parameter counts
    create_attention_callback,  # attention.enabled or reference.source: attention metrics on validation
    create_trial_callback,  # under `convshare sweep`: history.jsonl and the runner's stop request
)


def create_callbacks(cfg: Any, run_dir: Path) -> list[pl.Callback]:
    """The callbacks of :data:`CALLBACK_FACTORIES` that take part in this run."""
    return [cb for factory in CALLBACK_FACTORIES if (cb := factory(cfg, run_dir)) is not None]
