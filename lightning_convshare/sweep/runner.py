"""The local sweep runner: W&B's search logic (PyPI ``sweeps``) driving ``convshare train`` subprocesses.

One loop, one thread: reap finished trials, apply W&B's early-termination rule, fill free slots
with the next suggestions of ``sweeps.next_runs`` (grid, random, bayes), and save the state after
every change. Each trial is checked in-process first (:mod:`.validate`): an impossible
configuration is recorded as ``invalid`` without starting anything. Trials run in their own
process groups and die with the runner (``PR_SET_PDEATHSIG`` on Linux); Ctrl-C (or SIGTERM)
terminates them and leaves a state that ``--resume`` continues.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Optional

from omegaconf import OmegaConf

from ..errors import ConfigError
from ..files import atomic_write
from ..trial_protocol import STOP_FILE, TRIAL_DIR_ENV, TRIAL_ENV
from .devices import DeviceGroups
from .spec import SweepSpec, quote, train_overrides
from .state import SweepState, Trial
from .trials import (
    die_with_parent,
    error_message,
    log_tail,
    read_history,
    read_metrics,
    seeded,
    stray_pids,
)
from .validate import check_trial, warm_up

__all__ = ["SweepRunner"]

log = logging.getLogger(__name__)


@dataclass
class _Running:
    trial: Trial
    proc: subprocess.Popen
    slot: int
    log: IO[str]


@dataclass
class SweepRunner:
    """Runs (or resumes) the sweep stored in ``state.dir``.

    Args:
        state: the sweep directory's state (options: ``overrides``, ``count``, ``wandb_mode``, ``seed``).
        spec: the validated sweep.
        groups: one device group per parallel slot.
        grace_s: seconds trials get to exit after SIGTERM before SIGKILL.
        poll_s: loop period.
    """

    state: SweepState
    spec: SweepSpec
    groups: DeviceGroups
    grace_s: float = 15.0
    poll_s: float = 0.2
    _running: dict[int, _Running] = field(default_factory=dict, init=False)
    _last_et: float = field(default=0.0, init=False)
    _exhausted: bool = field(default=False, init=False)
    _signals: int = field(default=0, init=False)
    _warned_cpu: bool = field(default=False, init=False)

    # -- public ------------------------------------------------------------------------------
    @property
    def overrides(self) -> list[str]:
        return list(self.state.options.get("overrides", []))

    @property
    def cap(self) -> Optional[int]:
        return self.state.options.get("count") or self.spec.run_cap

    @property
    def is_convshare(self) -> bool:
        return train_overrides(self.spec.render({})) is not None

    def run(self) -> SweepState:
        """Run until every trial is done (or Ctrl-C / SIGTERM, re-raised as ``KeyboardInterrupt``).

        The caller holds the directory's :class:`~.state.SweepLock` (``start_sweep`` / ``resume_sweep``).
        """
        if self.spec.method != "grid" and not self.cap:
            raise ConfigError(f"method {self.spec.method} never runs out of suggestions: set run_cap in "
                              f"{self.spec.path or 'the sweep'} or pass --count N")
        self._recover()
        if self.is_convshare:
            warm_up()
        # SIGINT and SIGTERM only raise a flag, checked between steps, so that no trial is half
        # started or half recorded; this also works when a shell started the runner in the
        # background (which would make it ignore SIGINT)
        self._signals = 0
        previous = {s: signal.signal(s, self._on_stop_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while True:
                self._check_stop()
                self._reap()
                self._early_terminate()
                self._fill_slots()
                if not self._running:
                    break
                self._sleep(self.poll_s)
        except KeyboardInterrupt:
            log.warning("stopping: terminating %d running trial(s)", len(self._running))
            self._shutdown()
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.state.save()
        return self.state

    # -- recovery ----------------------------------------------------------------------------
    def _recover(self) -> None:
        """Cut-off trials (``running`` when the runner died, ``interrupted``) become ``pending``;
        a trial that completed after its runner died is adopted with its metrics."""
        retry = set(self.state.options.pop("retry", []))
        for trial in self.state.trials:
            if trial.status in retry:
                trial.status = "pending"
            if trial.status not in ("running", "interrupted", "pending"):
                continue
            run_dir = self.state.run_dir(trial)
            strays = stray_pids(run_dir)  # (a pending trial may have been started just before a kill -9)
            for pid in strays:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            deadline = time.time() + 10
            while strays and stray_pids(run_dir) and time.time() < deadline:
                time.sleep(0.1)
            if trial.status == "pending":
                continue
            metrics = read_metrics(run_dir) if trial.status == "running" else None
            if metrics is not None:
                trial.status, trial.metrics = ("stopped" if trial.stop_requested else "finished"), metrics
                log.info("%s completed while no runner watched it: kept", trial.id)
            else:
                trial.status = "pending"
                log.info("%s was cut off after attempt %d: it will run again", trial.id, trial.attempts)
        self.state.save()

    # -- the loop ----------------------------------------------------------------------------
    def _free_slot(self) -> Optional[int]:
        return next((s for s in range(len(self.groups)) if s not in self._running), None)

    def _fill_slots(self) -> None:
        while (slot := self._free_slot()) is not None:
            self._check_stop()
            trial = next((t for t in self.state.trials if t.status == "pending"), None) or self._propose()
            if trial is None:
                return
            self._start(trial, slot)

    def _propose(self) -> Optional[Trial]:
        if self._exhausted or (self.cap is not None and len(self.state.trials) >= self.cap):
            return None
        from sweeps import RunState, SweepRun, next_runs

        runs = [self._as_sweep_run(t, RunState, SweepRun) for t in self.state.trials]
        try:  # seeded per trial index: a resumed sweep suggests what the uninterrupted one would have
            with seeded(int(self.state.options.get("seed", 0)) * 100_003 + len(self.state.trials)):
                suggestion = next_runs(self.spec.filled, runs, n=1)[0]
        except ValueError as e:
            raise ConfigError(f"W&B's {self.spec.method} search rejected the sweep: {e}") from None
        if suggestion is None:
            self._exhausted = True
            return None
        params = {k: v["value"] for k, v in suggestion.config.items()}
        return self.state.new_trial(params)

    def _as_sweep_run(self, trial: Trial, RunState: Any, SweepRun: Any) -> Any:
        states = {"finished": RunState.finished, "stopped": RunState.finished, "failed": RunState.failed,
                  "invalid": RunState.failed, "running": RunState.running}
        metric = self.spec.metric
        summary = {}
        if metric and trial.metrics.get(metric["name"]) is not None:
            summary[metric["name"]] = trial.metrics[metric["name"]]
        return SweepRun(name=trial.id, state=states.get(trial.status, RunState.pending),
                        config={k: {"value": v} for k, v in trial.params.items()},
                        summary_metrics=summary, history=read_history(self.state.run_dir(trial)))

    def _start(self, trial: Trial, slot: int) -> None:
        run_dir, trial_dir = self.state.run_dir(trial), self.state.trial_dir(trial)
        argv = self.spec.render(trial.params) + self.overrides
        convshare = train_overrides(argv)
        if convshare is not None:
            argv.append(f"run.dir={run_dir}")
            check = check_trial(train_overrides(argv)[1], convshare[0])
            trial.validate_s = round(check.seconds, 4)
            if check.config is not None:
                atomic_write(trial_dir / "config.yaml", OmegaConf.to_yaml(check.config))
                accelerator = OmegaConf.select(check.config, "trainer.accelerator")
                if self.groups.groups[slot] is not None and accelerator == "cpu" and not self._warned_cpu:
                    self._warned_cpu = True
                    log.warning("GPUs were given (--devices) but the trials use trainer.accelerator=cpu: add "
                                "trainer=gpu (one GPU per trial) or trainer=ddp (the whole group) to the overrides")
            if check.error is not None:
                trial.status, trial.message, trial.command = "invalid", check.error, argv
                log.info("%s invalid (checked in %.0f ms): %s", trial.id, 1000 * check.seconds, check.error)
                self.state.save()
                return
        trial.attempts += 1
        if convshare is not None and (run_dir / "checkpoints" / "last.ckpt").is_file():
            argv.append("trainer.ckpt_path=last")  # a cut-off attempt with a checkpoint: continue from it
            log.info("%s continues from %s", trial.id, run_dir / "checkpoints" / "last.ckpt")
        elif run_dir.exists():  # a cut-off attempt without a checkpoint: start clean (inside the sweep directory only)
            if not run_dir.resolve().is_relative_to(self.state.dir / "trials"):
                raise ConfigError(f"refusing to delete {run_dir}: it is not inside {self.state.dir / 'trials'}")
            shutil.rmtree(run_dir)
        logfile = trial_dir / "train.log"
        if logfile.exists():
            logfile.rename(trial_dir / f"train.attempt{trial.attempts - 1}.log")
        trial_dir.mkdir(parents=True, exist_ok=True)
        env = self.groups.env(slot)
        env.update({
            TRIAL_ENV: "1", TRIAL_DIR_ENV: str(run_dir), "PYTHONUNBUFFERED": "1",
            "WANDB_MODE": self.state.options.get("wandb_mode", "offline"),
            "WANDB_RUN_GROUP": self.state.options.get("name", self.spec.name),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),  # our convshare first
        })
        handle = open(logfile, "w")
        handle.write(f"$ {quote(argv)}\n")
        handle.flush()
        try:
            proc = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                    preexec_fn=die_with_parent if sys.platform.startswith("linux") else None)
        except OSError as e:
            handle.close()
            trial.status, trial.message = "failed", f"cannot start {argv[0]!r}: {e}"
            self.state.save()
            return
        trial.status, trial.pid, trial.devices, trial.command = "running", proc.pid, self.groups.groups[slot], argv
        trial.started, trial.ended, trial.returncode, trial.message = time.time(), None, None, None
        trial.stop_requested = False
        self._running[slot] = _Running(trial, proc, slot, handle)
        self.state.save()
        where = f" on GPU {trial.devices}" if trial.devices else ""
        log.info("%s started%s: %s", trial.id, where, " ".join(f"{k}={v}" for k, v in trial.params.items()))

    def _reap(self, interrupted: bool = False) -> None:
        for slot, item in list(self._running.items()):
            rc = item.proc.poll()
            if rc is None:
                continue
            item.log.close()
            del self._running[slot]
            self._finish(item.trial, rc, interrupted)

    def _finish(self, trial: Trial, rc: int, interrupted: bool) -> None:
        run_dir, logfile = self.state.run_dir(trial), self.state.trial_dir(trial) / "train.log"
        metrics = read_metrics(run_dir)
        trial.returncode, trial.ended, trial.pid = rc, time.time(), None
        if rc == 0 and metrics is not None:
            trial.status, trial.metrics = ("stopped" if trial.stop_requested else "finished"), metrics
        elif interrupted:
            trial.status = "interrupted"
        elif rc == 2:
            trial.status, trial.message = "invalid", error_message(logfile)
        elif rc < 0:
            name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else f"signal {-rc}"
            hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if -rc == signal.SIGKILL else ""
            trial.status = "failed"
            trial.message = f"killed by {name}{hint}; `convshare sweep --resume` continues it from its last checkpoint"
        else:
            trial.status = "failed"
            trial.message = (f"exit status {rc}: " if rc else "exited without writing metrics.json: ") + log_tail(logfile)
        self.state.save()
        metric = self.spec.metric
        value = trial.metrics.get(metric["name"]) if metric else None
        shown = f" {metric['name']}={value:.4f}" if isinstance(value, (int, float)) else ""
        log.info("%s %s%s (%.0f s)%s", trial.id, trial.status, shown, trial.wall_s or 0,
                 f": {trial.message.splitlines()[-1]}" if trial.message and trial.status != "finished" else "")

    def _early_terminate(self) -> None:
        if "early_terminate" not in self.spec.config or not self._running or time.time() - self._last_et < 1.0:
            return
        self._last_et = time.time()
        from sweeps import RunState, SweepRun, stop_runs

        runs = [self._as_sweep_run(t, RunState, SweepRun) for t in self.state.trials]
        try:
            to_stop = stop_runs(self.spec.filled, runs)
        except ValueError as e:
            raise ConfigError(f"early_terminate: {e}") from None
        for run in to_stop:
            trial = next(t for t in self.state.trials if t.id == run.name)
            if trial.status == "running" and not trial.stop_requested:
                (self.state.run_dir(trial) / STOP_FILE).touch()
                trial.stop_requested = True
                self.state.save()
                info = (run.early_terminate_info or {}).get("lines", [""])[-1]
                log.info("%s early-terminated by hyperband: %s", trial.id, info.strip())

    # -- stopping ----------------------------------------------------------------------------
    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        self._signals += 1

    def _check_stop(self) -> None:
        if self._signals:
            raise KeyboardInterrupt

    def _sleep(self, seconds: float) -> None:
        end = time.time() + seconds
        while time.time() < end and not self._signals:
            time.sleep(0.05)

    def _signal_all(self, sig: int) -> None:
        for item in self._running.values():
            try:
                os.killpg(item.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def _shutdown(self) -> None:
        """SIGTERM every trial's process group, SIGKILL what is left after ``grace_s`` (or a second Ctrl-C)."""
        self._signal_all(signal.SIGTERM)
        deadline, seen = time.time() + self.grace_s, max(self._signals, 1)
        try:
            while self._running and time.time() < deadline and self._signals <= seen:
                self._reap(interrupted=True)
                time.sleep(0.1)
        except KeyboardInterrupt:  # the default handler, if ours is not installed
            pass
        if self._running and self._signals > seen:
            log.warning("second interrupt: killing the trials now")
        self._signal_all(signal.SIGKILL)
        for item in self._running.values():
            item.proc.wait()
        self._reap(interrupted=True)
        self.state.save()
