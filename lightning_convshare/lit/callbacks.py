"""Callbacks, and the registry of callback factories that ``run_training`` consults.

A factory ``fn(cfg, run_dir) -> Callback | None`` decides from the composed config whether its
callback takes part in a run; features add one factory each (``@register_callback("name")``)
instead of editing the training runner.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Optional

import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from ..registry import Registry

__all__ = ["CALLBACKS", "SurgeryReportCallback", "create_callbacks", "register_callback"]

log = logging.getLogger(__name__)

CALLBACKS: Registry[Callable[[Any, Path], Optional[pl.Callback]]] = Registry("callback")


def register_callback(name: str) -> Callable:
    """Decorator registering a factory ``fn(cfg, run_dir) -> Callback | None``."""
    return CALLBACKS.register(name)


def create_callbacks(cfg: Any, run_dir: Path) -> list[pl.Callback]:
    """Every registered factory's callback for this config (factories returning ``None`` sit out)."""
    out = []
    for name in CALLBACKS.names():
        callback = CALLBACKS.get(name)(cfg, run_dir)
        if callback is not None:
            out.append(callback)
    return out


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


@register_callback("surgery_report")
def _surgery_report(cfg: Any, run_dir: Path) -> SurgeryReportCallback:
    return SurgeryReportCallback(run_dir)
