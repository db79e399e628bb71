"""Experiment loggers (W&B and CSV) from ``cfg.logger``; W&B goes offline when there is no account."""
from __future__ import annotations

import csv
import logging
import netrc
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger

from ..errors import ConfigError

__all__ = ["ResumableCSVLogger", "create_loggers", "log_report", "resolve_wandb_mode", "wandb_logger"]

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


def create_loggers(
    cfg: Mapping[str, Any], run_dir: Path, run_name: str, *, wandb_id: str | None = None, resume_step: int | None = None
) -> list[Logger]:
    """Loggers for every key of ``cfg`` (``wandb``, ``csv``), writing under ``run_dir``; nothing is written yet.

    Args:
        cfg: ``cfg.logger``: ``{wandb: {project, entity, mode, group, tags, log_model}, csv: {}}``.
        run_dir: the run directory.
        run_name: W&B run name.
        wandb_id: the W&B run id (the same id resumes that run, online or offline).
        resume_step: the global step of the checkpoint a resumed run continues from: the CSV log keeps
            its rows up to that step and appends.

    Raises:
        ConfigError: an unknown logger or W&B mode.
    """
    unknown = sorted(set(cfg) - {"wandb", "csv"})
    if unknown:
        raise ConfigError(f"unknown loggers {unknown}; available: wandb, csv")
    loggers: list[Logger] = []
    if "wandb" in cfg:
        wb = wandb_logger(dict(cfg["wandb"]), run_dir, run_name, run_id=wandb_id, resume=resume_step is not None)
        if wb is not None:
            loggers.append(wb)
    if "csv" in cfg:
        loggers.append(ResumableCSVLogger(save_dir=str(run_dir), name="csv", version="", keep_until_step=resume_step,
                                          **dict(cfg["csv"] or {})))
    return loggers


class ResumableCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger``, which continues ``metrics.csv`` when a run resumes.

    Lightning's writer deletes an existing ``metrics.csv``; with ``keep_until_step`` the rows logged up
    to the checkpoint's step are kept (later ones, logged after the checkpoint by the interrupted
    session, are dropped: the resumed run logs them again) and new rows are appended.
    """

    def __init__(self, *args: Any, keep_until_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._keep_until_step = keep_until_step

    @property
    def experiment(self) -> Any:
        if self._experiment is not None or self._keep_until_step is None:
            return super().experiment
        path = Path(self.log_dir) / "metrics.csv"
        rows, header = [], []
        if path.is_file():
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                header = list(reader.fieldnames or [])
                rows = [r for r in reader if _step_of(r) <= self._keep_until_step]
        writer = super().experiment  # deletes metrics.csv
        if header:
            writer.metrics_keys = sorted(header)
            with path.open("w", newline="") as f:
                out = csv.DictWriter(f, fieldnames=writer.metrics_keys)
                out.writeheader()
                out.writerows(rows)
        return writer


def _step_of(row: Mapping[str, str]) -> float:
    try:
        return float(row.get("step") or 0)
    except ValueError:
        return 0.0


def wandb_logger(
    cfg: dict[str, Any], run_dir: Path, run_name: str, *, run_id: str | None = None, resume: bool = False
) -> WandbLogger | None:
    """A ``WandbLogger`` under ``run_dir`` (``None`` when the mode is ``disabled``).

    Args:
        cfg: ``logger.wandb`` options.
        run_dir: the run directory.
        run_name: the W&B run's name.
        run_id: its id; with ``resume`` the W&B run of that id continues (``resume="allow"``).
        resume: a resumed run.
    """
    mode = resolve_wandb_mode(cfg.pop("mode", "auto"))
    if mode == "disabled":
        return None
    os.environ["WANDB_MODE"] = mode  # also for processes Lightning launches (DDP) and the wandb service
    os.environ.setdefault("WANDB_DIR", str(run_dir))
    hint = "" if mode == "online" else " (sync later with `wandb sync <run dir>/wandb/offline-run-*`)"
    log.info("W&B logging %s%s%s", mode, hint, f"; resuming W&B run {run_id}" if resume and run_id else "")
    extra: dict[str, Any] = {}
    if run_id:
        extra["id"] = run_id
        if resume:
            extra["resume"] = "allow"
    logger = WandbLogger(name=run_name, save_dir=str(run_dir), mode=mode, **extra, **cfg)
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
