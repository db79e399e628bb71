"""``run_training(cfg)``: one composed config in, one trained run directory out."""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, RichProgressBar
from pytorch_lightning.utilities import rank_zero_only

from ..config import save_config
from ..files import write_json
from ..resolve import resolve
from .callbacks import create_callbacks
from .data import create_datamodule
from .distributed import independent_launch_name, launched_by_lightning
from .factory import create_module
from .loggers import create_loggers

__all__ = ["TrainResult", "resolve_run_dir", "run_training"]

log = logging.getLogger(__name__)
RUN_DIR_ENV = "CONVSHARE_RUN_DIR"  # set for processes Lightning launches, so all ranks share one run dir


@dataclass
class TrainResult:
    """What a finished run leaves behind."""

    run_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    best_checkpoint: str | None = None


def resolve_run_dir(cfg: DictConfig) -> Path:
    """``run.dir`` if set; else, for ranks started independently by torchrun or SLURM,
    ``<run.root>/<run.name or a name derived from the job id>``; else ``$CONVSHARE_RUN_DIR`` in the
    ranks Lightning's DDP launcher started (rank 0 sets it for them); else
    ``<run.root>/<run.name or surgery-date-time>`` (made unique with a suffix if taken)."""
    if cfg.run.dir:
        return Path(cfg.run.dir)
    shared = independent_launch_name(cfg.surgery.name)
    if shared is not None:  # every rank must compute the same path: no date, no uniqueness suffix
        return Path(cfg.run.root) / (cfg.run.name or shared)
    if os.environ.get(RUN_DIR_ENV) and launched_by_lightning():  # not a leftover of an earlier run in this process
        return Path(os.environ[RUN_DIR_ENV])
    name = cfg.run.name or f"{cfg.surgery.name}-{datetime.now():%Y%m%d-%H%M%S}"
    path = Path(cfg.run.root) / name
    for i in range(1, 1000):
        if not path.exists():
            break
        path = Path(cfg.run.root) / f"{name}-{i}"
    return path


def _callbacks(cfg: DictConfig, run_dir: Path) -> tuple[list[Callback], ModelCheckpoint, ModelCheckpoint | None]:
    options = OmegaConf.to_container(cfg.checkpoint, resolve=True)
    save_last = options.pop("save_last", True)
    best = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="best-epoch{epoch:03d}", auto_insert_metric_name=False, **options
    )
    # Lightning's save_last only rewrites last.ckpt when a new top-k checkpoint is saved; a second,
    # unmonitored callback keeps last.ckpt at the latest epoch, which is what resuming needs
    last = (
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", monitor=None, save_top_k=1,
                        enable_version_counter=False)
        if save_last else None
    )
    callbacks: list[Callback] = [best, *([last] if last else []), *create_callbacks(cfg, run_dir)]
    if cfg.logger:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    if sys.stdout.isatty():
        callbacks.append(RichProgressBar())
    return callbacks, best, last


def _scalar(value: Any) -> Any:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return value
    return None if math.isnan(value) else value


def run_training(cfg: DictConfig) -> TrainResult:
    """Train ``cfg`` and write ``config.yaml``, checkpoints, logs and ``metrics.json`` to the run dir.

    Args:
        cfg: a composed config (resolved here) or one already returned by
            :func:`lightning_convshare.resolve.resolve`.

    Raises:
        ConfigError, GeometryError, DataError: bad configuration (before anything is written).
    """
    start = time.time()
    if not OmegaConf.is_readonly(cfg):
        cfg = resolve(cfg)  # once here: the config saved with the run is the resolved one
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    module = create_module(cfg)  # fails fast on impossible configurations
    datamodule = create_datamodule(OmegaConf.to_container(cfg.data, resolve=True))
    run_dir = resolve_run_dir(cfg).resolve()
    callbacks, ckpt, last = _callbacks(cfg, run_dir)  # factories may load models (a reference): fail before writing
    os.environ[RUN_DIR_ENV] = str(run_dir)
    if rank_zero_only.rank == 0:
        save_config(cfg, run_dir / "config.yaml")
    config = OmegaConf.to_container(cfg, resolve=True)
    loggers = create_loggers(cfg.logger or {}, run_dir, run_dir.name, config)
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_kwargs.setdefault("enable_progress_bar", sys.stdout.isatty())
    trainer = pl.Trainer(default_root_dir=str(run_dir), logger=loggers or False, callbacks=callbacks, **trainer_kwargs)
    trainer.fit(module, datamodule=datamodule)
    metrics = {k: _scalar(v) for k, v in trainer.callback_metrics.items() if not k.endswith("_step")}
    best = ckpt.best_model_score
    metrics.update({
        f"{ckpt.monitor}_best": _scalar(best) if best is not None else None,
        "params": module.surgery_report.params_after,
        "epochs": trainer.current_epoch,
        "wall_time_s": round(time.time() - start, 2),
    })
    result = TrainResult(run_dir, metrics, ckpt.best_model_path or None)
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", {**metrics, "best_checkpoint": result.best_checkpoint,
                                              "last_checkpoint": (last.best_model_path or None) if last else None})
    for lg in loggers:
        if hasattr(lg, "experiment") and hasattr(lg.experiment, "finish") and trainer.is_global_zero:
            lg.experiment.finish()
    return result
