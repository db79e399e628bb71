"""The training runs of ``convshare robustness-study``: every architecture under every regime, each a normal
``convshare train`` run in ``<study dir>/runs/<architecture>-<regime>``.

A run that finished (``metrics.json``) is reused, a run that was cut off is resumed from its last
checkpoint, so the study command can be run again after an interruption and only does what is missing.
A regime with ``from: <regime>`` starts from that regime's ``last.ckpt`` (``init_from``: the same
network, computed with the regime's optics, e.g. the clean network fine-tuned through the device's noise).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Optional

from ..config import compose
from ..errors import ConfigError
from ..resolve import resolve
from .train import run_training

__all__ = ["StudyRun", "study_runs", "train_study_runs"]

log = logging.getLogger(__name__)


class StudyRun(NamedTuple):
    """One training run of the study."""

    label: str
    architecture: str
    regime: str
    run_dir: Path
    overrides: list[str]

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "last.ckpt"

    @property
    def done(self) -> bool:
        return (self.run_dir / "metrics.json").is_file()


def _ordered(regimes: Mapping[str, Any]) -> list[str]:
    """Regimes in an order where every ``from`` comes before the regimes that start from it."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in path:
            raise ConfigError(f"study.regimes: circular 'from' {' -> '.join((*path, name))}")
        parent = (regimes[name] or {}).get("from")
        if parent is not None:
            if parent not in regimes:
                raise ConfigError(f"study.regimes.{name}.from={parent!r} is not a regime; regimes: {list(regimes)}")
            visit(parent, (*path, name))
        order.append(name)

    for name in regimes:
        visit(name, ())
    return order


def study_runs(study: Mapping[str, Any], out_dir: Path, base: Sequence[str]) -> list[StudyRun]:
    """The runs of a study config (``architectures`` x ``regimes``), parents first."""
    architectures, regimes = dict(study.get("architectures") or {}), dict(study.get("regimes") or {})
    if not architectures or not regimes:
        raise ConfigError("study.architectures and study.regimes must each name at least one entry")
    runs = []
    for regime in _ordered(regimes):
        spec = regimes[regime] or {}
        unknown = sorted(set(spec) - {"overrides", "from"})
        if unknown:
            raise ConfigError(f"study.regimes.{regime}: unknown keys {unknown}; a regime has overrides and from")
        for arch, arch_overrides in architectures.items():
            overrides = [*base, *map(str, arch_overrides or []), *map(str, spec.get("overrides") or [])]
            parent = spec.get("from")
            if parent:
                overrides.append(f"init_from={out_dir / 'runs' / f'{arch}-{parent}' / 'checkpoints' / 'last.ckpt'}")
            label = f"{arch}-{regime}"
            runs.append(StudyRun(label, str(arch), str(regime), out_dir / "runs" / label,
                                 [*overrides, f"run.dir={out_dir / 'runs' / label}"]))
    return runs


def check_study_runs(runs: Sequence[StudyRun], conf_dir: Optional[str] = None) -> None:
    """Compose every run's config now, so that a typo fails before hours of training (not after)."""
    for run in runs:
        try:
            compose(run.overrides, conf_dir)
        except ConfigError as e:
            raise ConfigError(f"study run {run.label}: {e}") from None


def train_study_runs(runs: Sequence[StudyRun], conf_dir: Optional[str] = None) -> list[StudyRun]:
    """Train what is missing: finished runs are kept, cut-off runs resumed, the rest trained."""
    check_study_runs(runs, conf_dir)
    for run in runs:
        if run.done:
            log.info("study run %s: finished before, kept (%s)", run.label, run.run_dir)
            continue
        resume = run.checkpoint.is_file()
        log.info("study run %s: %s", run.label, "resuming" if resume else "training")
        run_training(resolve(compose(run.overrides, conf_dir)), resume=resume)
    return list(runs)
