"""``run_training(cfg)``: one composed config in, one trained run directory out."""
from __future__ import annotations

import logging
import math
import os
import secrets
import string
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, RichProgressBar
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from ..config import save_config
from ..errors import ConfigError
from ..files import atomic_write, write_json
from ..resolve import resolve
from .callbacks import create_callbacks
from .checks import check_monitor, check_run_config
from .data import create_datamodule
from .distributed import independent_launch_name, launched_by_lightning
from .factory import create_module
from .loggers import create_loggers
from .resume import ResumeState, resume_checkpoint

__all__ = ["TrainResult", "resolve_run_dir", "run_training"]

log = logging.getLogger(__name__)
RUN_DIR_ENV = "CONVSHARE_RUN_DIR"  # set for processes Lightning launches, so all ranks share one run dir
WANDB_ID_FILE = "wandb-run-id"  # the run's W&B id, so that a resumed run continues the same W&B run


@dataclass
class TrainResult:
    """What a finished run leaves behind."""

    run_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    best_checkpoint: str | None = None


def _check_name(value: Any, key: str) -> str:
    """A run name is one folder name: it never leaves ``run.root``."""
    name = str(value)
    if not name or name in (".", "..") or "/" in name or "\\" in name or Path(name).is_absolute() or "\0" in name:
        raise ConfigError(f"{key}={value!r} must be a single folder name (no '/', no '..'); it is created under "
                          "run.root. To write somewhere else, set run.dir=<path>")
    return name


def resolve_run_dir(cfg: DictConfig) -> Path:
    """``run.dir`` if set; else, for ranks started independently by torchrun or SLURM,
    ``<run.root>/<run.name or a name derived from the job id>``; else ``$CONVSHARE_RUN_DIR`` in the
    ranks Lightning's DDP launcher started (rank 0 sets it for them); else
    ``<run.root>/<run.name or surgery-date-time>`` (made unique with a suffix if taken).

    Raises:
        ConfigError: a ``run.name`` that is not a single folder name (``..``, ``/``, absolute).
    """
    if cfg.run.dir:
        return Path(cfg.run.dir)
    name = _check_name(cfg.run.name, "run.name") if cfg.run.name else None
    shared = independent_launch_name(cfg.surgery.name)
    if shared is not None:  # every rank must compute the same path: no date, no uniqueness suffix
        return Path(cfg.run.root) / (name or shared)
    if os.environ.get(RUN_DIR_ENV) and launched_by_lightning():  # not a leftover of an earlier run in this process
        return Path(os.environ[RUN_DIR_ENV])
    name = name or f"{cfg.surgery.name}-{datetime.now():%Y%m%d-%H%M%S}"
    path = Path(cfg.run.root) / name
    for i in range(1, 1000):
        if not path.exists():
            break
        path = Path(cfg.run.root) / f"{name}-{i}"
    return path


def _callbacks(cfg: DictConfig, run_dir: Path) -> tuple[list[Callback], ModelCheckpoint, ModelCheckpoint | None]:
    options = OmegaConf.to_container(cfg.checkpoint, resolve=True)
    save_last = options.pop("save_last", True)
    try:
        best = ModelCheckpoint(
            dirpath=run_dir / "checkpoints", filename="best-epoch{epoch:03d}", auto_insert_metric_name=False, **options
        )
    except (MisconfigurationException, TypeError, ValueError) as e:
        raise ConfigError(f"checkpoint: {str(e).splitlines()[0][:300]}") from None
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


def _wandb_id(run_dir: Path, in_place: bool) -> str | None:
    """The W&B run id of this run directory: the one it already has when it is resumed, else a new one."""
    path = run_dir / WANDB_ID_FILE
    if in_place and path.is_file():
        return path.read_text().strip() or None
    alphabet = string.ascii_lowercase + string.digits  # W&B's id alphabet; secrets never touches the seeded RNGs
    return "".join(secrets.choice(alphabet) for _ in range(8))


def _trainer(kwargs: dict[str, Any], **extra: Any) -> pl.Trainer:
    try:
        return pl.Trainer(**extra, **kwargs)
    except (MisconfigurationException, ValueError, TypeError) as e:
        raise ConfigError(f"trainer: {str(e).splitlines()[0][:300]}") from None


def run_training(cfg: DictConfig, *, resume: bool = False) -> TrainResult:
    """Train ``cfg`` and write ``config.yaml``, checkpoints, logs and ``metrics.json`` to the run dir.

    Everything that can be checked is checked before the run directory is written (the config's
    values, the network, the data, the callbacks, the trainer); then the fit runs, continuing from a
    checkpoint when asked (:func:`~lightning_convshare.lit.resume.resume_checkpoint`).

    Args:
        cfg: a composed config (resolved here) or one already returned by
            :func:`lightning_convshare.resolve.resolve`.
        resume: continue the run in ``run.dir`` from its newest checkpoint (``convshare train --resume``).

    Raises:
        ConfigError, GeometryError, DataError: bad configuration (before anything is written).
    """
    if not OmegaConf.is_readonly(cfg):
        cfg = resolve(cfg)  # once here: the config saved with the run is the resolved one
    check_run_config(cfg)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    module = create_module(cfg)  # fails fast on impossible configurations
    datamodule = create_datamodule(OmegaConf.to_container(cfg.data, resolve=True))
    datamodule.prepare_data()
    datamodule.setup("fit")  # missing or malformed data: an error now, not after the run directory exists
    run_dir = resolve_run_dir(cfg).resolve()
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    resumption = resume_checkpoint(run_dir, trainer_kwargs.pop("ckpt_path", None), resume)
    callbacks, ckpt, last = _callbacks(cfg, run_dir)  # factories may load models (a reference): fail before writing
    state = ResumeState()
    callbacks.append(state)
    check_monitor(ckpt.monitor, module, callbacks)
    wandb_id = _wandb_id(run_dir, resumption.in_place) if "wandb" in (cfg.logger or {}) else None
    loggers = create_loggers(cfg.logger or {}, run_dir, run_dir.name, wandb_id=wandb_id,
                             resume_step=resumption.global_step if resumption.in_place and resumption.path else None)
    trainer_kwargs.setdefault("enable_progress_bar", sys.stdout.isatty())
    trainer = _trainer(trainer_kwargs, default_root_dir=str(run_dir), logger=loggers or False, callbacks=callbacks)
    # ---- from here on, files are written
    os.environ[RUN_DIR_ENV] = str(run_dir)
    if rank_zero_only.rank == 0:
        save_config(cfg, run_dir / "config.yaml")
        if wandb_id:
            atomic_write(run_dir / WANDB_ID_FILE, wandb_id + "\n")
    config = OmegaConf.to_container(cfg, resolve=True)
    for lg in loggers:
        lg.log_hyperparams(config)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resumption.path) if resumption.path else None,
                    weights_only=True)
    except BaseException:
        _finish_wandb(loggers, exit_code=1)  # marked failed; `convshare train --resume` continues the same W&B run
        raise
    metrics = {k: _scalar(v) for k, v in trainer.callback_metrics.items() if not k.endswith("_step")}
    best = ckpt.best_model_score
    metrics.update({
        f"{ckpt.monitor}_best": _scalar(best) if best is not None else None,
        "params": module.surgery_report.params_after if module.surgery_report is not None else None,
        "epochs": trainer.current_epoch,
        "wall_time_s": round(state.wall_time_s, 2),
    })
    if resumption.path is not None:
        metrics["resumed_from"] = str(resumption.path)
    result = TrainResult(run_dir, metrics, ckpt.best_model_path or None)
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", {**metrics, "best_checkpoint": result.best_checkpoint,
                                              "last_checkpoint": (last.best_model_path or None) if last else None})
    if trainer.is_global_zero:
        _finish_wandb(loggers)
    return result


def _finish_wandb(loggers: list, exit_code: int = 0) -> None:
    for lg in loggers:
        if isinstance(lg, WandbLogger) and lg._experiment is not None:
            lg._experiment.finish(exit_code=exit_code)
