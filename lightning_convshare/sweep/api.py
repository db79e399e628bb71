"""Start, resume, plan and summarise local sweeps (what ``convshare sweep`` calls)."""
from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any, Optional, Sequence

from ..errors import ConfigError
from ..files import atomic_write
from .devices import device_groups
from .runner import SweepRunner
from .spec import SweepSpec, load_spec, train_overrides
from .state import SweepLock, SweepState
from .summary import DEFAULT_AXES, Summary, summarize
from .trials import seeded
from .validate import check_fixed_reference, check_trial, warm_up

__all__ = ["PlannedTrial", "plan_sweep", "resume_sweep", "start_sweep", "write_summary"]

log = logging.getLogger(__name__)
WANDB_MODES = ("offline", "online", "disabled")
SPEC_FILE = "sweep.yaml"


def _run(state: SweepState, spec: SweepSpec, parallel: Optional[int], devices: Optional[str]) -> SweepState:
    """Run the sweep; the caller holds the directory's :class:`SweepLock`."""
    groups = device_groups(devices, parallel)
    state.options.update(parallel=len(groups), devices=devices)
    state.save()
    log.info("sweep %s (%s%s): %s at a time, %s; directory %s", spec.name, spec.method,
             f", {spec.grid_size()} grid points" if spec.grid_size() else "", len(groups), groups.describe(), state.dir)
    runner = SweepRunner(state, spec, groups)
    try:
        runner.run()
    finally:
        if state.trials:
            state.summary = write_summary(state, spec, log_wandb=True)
    return state


def start_sweep(
    sweep_file: str | Path,
    *,
    directory: Optional[str | Path] = None,
    parallel: Optional[int] = None,
    devices: Optional[str] = None,
    overrides: Sequence[str] = (),
    count: Optional[int] = None,
    wandb_mode: str = "offline",
    seed: int = 0,
    axes: Optional[dict[str, str]] = None,
) -> SweepState:
    """Create a sweep directory for ``sweep_file`` and run the sweep to the end.

    Args:
        sweep_file: a W&B sweep YAML.
        directory: the sweep directory (default ``sweep_runs/<name>-<date>-<time>``).
        parallel: trials at once (default: one per device group, 1 on CPU).
        devices: ``auto``, ``cpu`` or GPU ids ``0,1,2,3`` (see :func:`~.devices.device_groups`).
        overrides: config overrides appended to every trial (e.g. ``trainer.max_epochs=5``).
        count: maximum number of trials (overrides the sweep's ``run_cap``).
        wandb_mode: W&B mode of the trials: ``offline`` (default), ``online`` or ``disabled``.
        seed: seed of W&B's random and bayes suggestions (the grid ignores it).
        axes: plot axes ``{"x", "lines", "panels"}`` (config keys).

    Raises:
        ConfigError: invalid sweep file, parameter keys that do not resolve, a fixed ``reference.source``
            file that does not exist, an existing sweep directory.
        KeyboardInterrupt: Ctrl-C or SIGTERM, after the trials were stopped and the state saved.
    """
    if wandb_mode not in WANDB_MODES:
        raise ConfigError(f"--wandb {wandb_mode!r}: use one of {list(WANDB_MODES)}")
    spec = load_spec(sweep_file)
    spec.check_keys(list(overrides))
    check_fixed_reference(spec.render({}) + list(overrides), list(spec.parameters))
    directory = Path(directory or Path("sweep_runs") / f"{spec.name}-{datetime.now():%Y%m%d-%H%M%S}")
    if (directory / "state.json").exists():
        raise ConfigError(f"{directory} already holds a sweep; continue it with `convshare sweep --resume {directory}`")
    device_groups(devices, parallel)  # bad --devices / --parallel: refused before the directory exists
    with SweepLock(directory):
        state = SweepState.create(directory, {
            "name": spec.name, "method": spec.method, "metric": spec.metric, "overrides": list(overrides), "count": count,
            "wandb_mode": wandb_mode, "seed": seed, "axes": {**DEFAULT_AXES, **(axes or {})},
            "source": str(Path(sweep_file).resolve()),
        })
        atomic_write(directory / SPEC_FILE, Path(sweep_file).read_text())
        return _run(state, spec, parallel, devices)


def resume_sweep(directory: str | Path, *, parallel: Optional[int] = None, devices: Optional[str] = None,
                 retry_failed: bool = False) -> SweepState:
    """Continue a sweep: finished, stopped, failed and invalid trials stay; cut-off ones run again.

    Args:
        directory: the sweep directory.
        parallel: trials at once (default: as before).
        devices: devices (default: as before).
        retry_failed: also run the ``failed`` trials again.
    """
    state = SweepState.load(directory)  # a clean error for a directory that holds no sweep, before the lock file
    with SweepLock(state.dir):  # before any write: a refused resume changes nothing of the live sweep
        state = SweepState.load(state.dir)
        spec = load_spec(state.dir / SPEC_FILE)
        if retry_failed:
            state.options["retry"] = ["failed"]
        if devices is None:
            devices = state.options.get("devices")
        if parallel is None and devices in (None, "cpu"):
            parallel = state.options.get("parallel")
        return _run(state, spec, parallel, devices)


def write_summary(source: SweepState | str | Path, spec: Optional[SweepSpec] = None, *, log_wandb: bool = False,
                  axes: Optional[dict[str, str]] = None) -> Summary:
    """Write ``summary.csv``, ``summary.md`` and the plots of a sweep directory.

    With ``log_wandb`` and a sweep whose trials log online, the table and plots also go to W&B
    (one ``sweep-summary`` run in the trials' group).
    """
    state = source if isinstance(source, SweepState) else SweepState.load(source)
    spec = spec or load_spec(state.dir / SPEC_FILE)
    if axes:
        state.options["axes"] = {**state.options.get("axes", DEFAULT_AXES), **axes}
        state.save()
    summary = summarize(state, spec.metric, list(spec.parameters), state.options.get("axes"))
    if log_wandb and state.options.get("wandb_mode") == "online":
        from ..lit.loggers import log_report

        log_report(mode="online", directory=state.dir, name=f"{spec.name}-summary", job_type="sweep-summary",
                   table="sweep/summary", columns=summary.columns, rows=summary.rows,
                   images={f"sweep/{p.stem}": p for p in summary.plots},
                   project=spec.config.get("project") or "lightning-convshare",
                   entity=spec.config.get("entity"), group=state.options.get("name"))
    return summary


class PlannedTrial(dict):
    """``{"params": ..., "error": message or None, "seconds": check time}`` of one planned trial."""


def plan_sweep(
    sweep_file: str | Path, overrides: Sequence[str] = (), count: Optional[int] = None, seed: int = 0
) -> list[PlannedTrial]:
    """The trials a sweep would start, each checked like the runner checks it (nothing is trained).

    A grid lists every point; random and bayes list ``count`` (or ``run_cap``) suggestions made
    without results (bayes then behaves like random).
    """
    from sweeps import RunState, next_runs

    spec = load_spec(sweep_file)
    spec.check_keys(list(overrides))
    check_fixed_reference(spec.render({}) + list(overrides), list(spec.parameters))
    cap = count or spec.run_cap
    if spec.method != "grid" and not cap:
        raise ConfigError(f"method {spec.method} needs run_cap in the sweep or --count N to plan a finite list")
    convshare = train_overrides(spec.render({})) is not None
    if convshare:
        warm_up()
    runs: list[Any] = []
    out = []
    while cap is None or len(out) < cap:
        with seeded(seed * 100_003 + len(out)):  # the same suggestions as the runner makes
            suggestion = next_runs(spec.filled, runs, n=1)[0]
        if suggestion is None:
            break
        suggestion.state = RunState.finished if spec.method == "grid" else RunState.pending
        runs.append(suggestion)
        params = {k: v["value"] for k, v in suggestion.config.items()}
        error, seconds = None, 0.0
        if convshare:
            argv = spec.render(params) + list(overrides)
            config_dir, tokens = train_overrides(argv)
            check = check_trial(tokens, config_dir)
            error, seconds = check.error, check.seconds
        out.append(PlannedTrial(params=params, error=error, seconds=seconds))
    return out
