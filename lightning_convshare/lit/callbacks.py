"""Callbacks: the surgery report at the start of training."""
from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only

__all__ = ["SurgeryReportCallback"]

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
