"""Experiment loggers (W&B and CSV) from ``cfg.logger``; W&B goes offline when there is no account."""
from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger

from ..errors import ConfigError

__all__ = ["create_loggers", "log_report", "resolve_wandb_mode", "wandb_logger"]

log = logging.getLogger(__name__)
WANDB_MODES = ("auto", "online", "offline", "disabled")


def _has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        path = os.environ.get("NETRC") or Path.home() / ".netrc"
        return Path(path).is_file() and netrc.netrc(path).authenticators("api.wandb.ai") is not None
    except (netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: str = "auto") -> str:
    """``auto`` -> ``$WANDB_MODE`` if set, ``online`` with an API key (env or ``wandb login``), else ``offline``.

    Offline mode never prompts and never touches the network; ``wandb sync`` uploads such runs later.
    """
    if mode not in WANDB_MODES:
        raise ConfigError(f"logger.wandb.mode {mode!r} is not one of {list(WANDB_MODES)}")
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env:
        return "offline" if env == "dryrun" else env
    return "online" if _has_wandb_credentials() else "offline"


def create_loggers(cfg: Mapping[str, Any], run_dir: Path, run_name: str, config: dict | None = None) -> list[Logger]:
    """Loggers for every key of ``cfg`` (``wandb``, ``csv``), writing under ``run_dir``.

    Args:
        cfg: ``cfg.logger``: ``{wandb: {project, entity, mode, group, tags, log_model}, csv: {}}``.
        run_dir: the run directory.
        run_name: W&B run name.
        config: the full resolved config, logged as the run's hyperparameters.
    """
    unknown = sorted(set(cfg) - {"wandb", "csv"})
    if unknown:
        raise ConfigError(f"unknown loggers {unknown}; available: wandb, csv")
    loggers: list[Logger] = []
    if "wandb" in cfg:
        wb = wandb_logger(dict(cfg["wandb"]), run_dir, run_name)
        if wb is not None:
            loggers.append(wb)
    if "csv" in cfg:
        loggers.append(CSVLogger(save_dir=str(run_dir), name="csv", version="", **dict(cfg["csv"] or {})))
    if config is not None:
        for lg in loggers:
            lg.log_hyperparams(config)
    return loggers


def wandb_logger(cfg: dict[str, Any], run_dir: Path, run_name: str) -> WandbLogger | None:
    """A ``WandbLogger`` under ``run_dir`` (``None`` when the mode is ``disabled``)."""
    mode = resolve_wandb_mode(cfg.pop("mode", "auto"))
    if mode == "disabled":
        return None
    os.environ["WANDB_MODE"] = mode  # also for processes Lightning launches (DDP) and the wandb service
    os.environ.setdefault("WANDB_DIR", str(run_dir))
    hint = "" if mode == "online" else " (sync later with `wandb sync <run dir>/wandb/offline-run-*`)"
    log.info("W&B logging %s%s", mode, hint)
    logger = WandbLogger(name=run_name, save_dir=str(run_dir), mode=mode, **cfg)
    if getattr(logger, "_wandb_init", {}).get("anonymous", False) is None:
        # Lightning always passes anonymous=None, which wandb >= 0.19 answers with a deprecation warning on every run
        logger._wandb_init.pop("anonymous")
    return logger


def _cells(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """W&B tables need one type per column: numeric columns stay numbers, mixed ones (kernel 3 or full) become text."""
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    numeric = [all(v is None or number(v) for v in col) for col in zip(*rows, strict=True)] if rows else []
    return [[v if v is None or numeric[i] else str(v) for i, v in enumerate(r)] for r in rows]


def log_report(
    *,
    mode: str,
    name: str,
    job_type: str,
    table: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    images: Mapping[str, Path] | None = None,
    scalars: Mapping[str, float] | None = None,
    directory: Path | None = None,
    project: str = "lightning-convshare",
    entity: str | None = None,
    group: str | None = None,
) -> str | None:
    """Log a report (a table, figures, scalars) to the active W&B run, or to a new one of its own.

    Used by the sweep summary and ``convshare robustness``.

    Args:
        mode: ``auto``, ``online``, ``offline`` or ``disabled`` (nothing is logged; returns ``None``);
            ignored when a W&B run is already active.
        name: the new run's name.
        job_type: the new run's job type (``sweep-summary``, ``robustness`` ...).
        table: the table's key.
        columns: table column names.
        rows: table rows (numbers and strings).
        images: ``{key: PNG file}``.
        scalars: further ``{key: value}`` to log.
        directory: where W&B writes its files (``<directory>/wandb/...``).
        project: W&B project.
        entity: W&B entity (team or user).
        group: W&B run group.

    Returns:
        Where it went (the run's directory or URL), or ``None`` when W&B logging is off.
    """
    import wandb

    run, own = wandb.run, False
    if run is None:
        mode = resolve_wandb_mode(mode)
        if mode == "disabled":
            return None
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        run = wandb.init(project=project, entity=entity, group=group, name=name, job_type=job_type,
                         dir=str(directory) if directory is not None else None, mode=mode, reinit="create_new")
        own = True
    try:
        run.log({table: wandb.Table(columns=list(columns), data=_cells(rows)),
                 **{key: wandb.Image(str(path)) for key, path in (images or {}).items()}, **dict(scalars or {})})
        return getattr(run, "url", None) or str(Path(run.dir).parent)
    finally:
        if own:
            run.finish()
