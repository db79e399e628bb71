"""The sweep directory: trials, their status and results, written atomically.

Layout::

    <sweep dir>/
      sweep.yaml           the sweep as given (resume reads this copy)
      state.json           runner state: options and one record per trial (atomic replace)
      runner.lock          held (flock) while a runner works on the directory
      trials/<id>/         config.yaml (composed trial config), train.log, <name>-<id>/ (the run dir)
      summary.csv, summary.md, plots/*.png

Trial status: ``pending`` -> ``running`` -> ``finished`` | ``stopped`` (early-terminated, has
metrics) | ``failed`` (crashed; message = log tail) | ``invalid`` (impossible configuration;
message = the layer's error). ``interrupted`` (Ctrl-C) and ``running`` found on resume are the
cut-off trials that resume runs again.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from ..errors import ConfigError
from ..files import atomic_write

__all__ = ["DONE", "STATUSES", "SweepLock", "SweepState", "Trial"]

STATUSES = ("pending", "running", "finished", "stopped", "failed", "invalid", "interrupted")
#: trials that resume never runs again
DONE = ("finished", "stopped", "failed", "invalid")
STATE_VERSION = 1


def _check_state(data: Any, path: Path) -> None:
    """``state.json`` must have the structure :meth:`SweepState.save` writes.

    Raises:
        ConfigError: what is wrong and where.
    """
    from .spec import check_sweep_name

    if not isinstance(data, dict) or not isinstance(data.get("trials", []), list):
        raise ConfigError(f"{path} is not a sweep state (a mapping with a list of trials); was it written by convshare sweep?")
    check_sweep_name(data.get("name"), str(path))
    for i, t in enumerate(data.get("trials", [])):
        if not isinstance(t, dict) or not isinstance(t.get("id"), str) or not isinstance(t.get("params", {}), dict):
            raise ConfigError(f"{path}: trial {i} is not a trial record (id and params); was it edited by hand?")
        if not _ID.fullmatch(t["id"]):
            raise ConfigError(f"{path}: trial id {t['id']!r} is not a plain folder name")
        if t.get("status", "pending") not in STATUSES:
            raise ConfigError(f"{path}: trial {t['id']} has status {t.get('status')!r}, not one of {list(STATUSES)}")


_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def _plain(value: Any) -> Any:
    """numpy scalars and tuples -> JSON-friendly Python values."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass
class Trial:
    """One point of the sweep and what became of it."""

    id: str
    params: dict[str, Any]
    status: str = "pending"
    attempts: int = 0
    message: Optional[str] = None
    metrics: dict[str, Any] = field(default_factory=dict)
    returncode: Optional[int] = None
    devices: Optional[str] = None
    pid: Optional[int] = None
    started: Optional[float] = None
    ended: Optional[float] = None
    validate_s: Optional[float] = None
    stop_requested: bool = False
    command: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trial:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))

    @property
    def wall_s(self) -> Optional[float]:
        return None if self.started is None or self.ended is None else self.ended - self.started


class SweepState:
    """The state of one sweep directory (``state.json``) with atomic saves.

    Args:
        directory: the sweep directory.
        data: the decoded ``state.json`` (options and trials).
    """

    def __init__(self, directory: Path, data: dict[str, Any]) -> None:
        self.dir = Path(directory).expanduser().resolve()  # trials are found by this path: one spelling of it
        self.options: dict[str, Any] = {k: v for k, v in data.items() if k != "trials"}
        self.trials: list[Trial] = [Trial.from_dict(t) for t in data.get("trials", [])]
        self.summary: Any = None  # the last summary written (sweep.summary.Summary)

    @property
    def path(self) -> Path:
        return self.dir / "state.json"

    @classmethod
    def create(cls, directory: Path, options: dict[str, Any]) -> SweepState:
        """A new, empty state (refuses a directory that already holds a sweep)."""
        directory = Path(directory)
        if (directory / "state.json").exists():
            raise ConfigError(f"{directory} already holds a sweep; continue it with `convshare sweep --resume {directory}`")
        state = cls(directory, {"version": STATE_VERSION, "created": time.time(), **options})
        state.save()
        return state

    @classmethod
    def load(cls, directory: str | os.PathLike) -> SweepState:
        """Read ``<directory>/state.json``.

        Raises:
            ConfigError: no sweep there, or an unreadable state file.
        """
        directory = Path(directory).expanduser()
        path = directory / "state.json"
        if not path.is_file():
            raise ConfigError(f"{directory} is not a sweep directory (no state.json); "
                              "start one with `convshare sweep SWEEP.yaml`")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON ({e})") from None
        _check_state(data, path)
        return cls(directory, data)

    def save(self) -> None:
        data = {**self.options, "updated": time.time(), "trials": [t.to_dict() for t in self.trials]}
        atomic_write(self.path, json.dumps(_plain(data), indent=1, sort_keys=True, default=str) + "\n")

    def trial_dir(self, trial: Trial) -> Path:
        return self.dir / "trials" / trial.id

    def run_dir(self, trial: Trial) -> Path:
        """``trials/<id>/<sweep name>-<id>``: the run directory's name is also the trial's W&B run name.

        Raises:
            ConfigError: a path that would leave the sweep directory (a tampered ``state.json``).
        """
        path = (self.trial_dir(trial) / f"{self.options.get('name', 'sweep')}-{trial.id}").resolve()
        if not path.is_relative_to(self.dir / "trials"):
            raise ConfigError(f"trial {trial.id!r} of {self.path} would run in {path}, outside {self.dir / 'trials'}: "
                              "the sweep's name and trial ids must be plain folder names")
        return path

    def new_trial(self, params: dict[str, Any]) -> Trial:
        trial = Trial(id=f"t{len(self.trials):03d}", params=_plain(dict(params)))
        self.trials.append(trial)
        return trial

    def count(self, *statuses: str) -> int:
        return sum(t.status in statuses for t in self.trials)


class SweepLock:
    """An exclusive ``flock`` on ``<dir>/runner.lock``: one runner per sweep directory.

    The kernel releases it when the runner dies, however it dies, so a killed sweep can be resumed
    at once.
    """

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / "runner.lock"
        self._fd: Optional[int] = None

    def __enter__(self) -> SweepLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            owner = self.path.read_text().strip() or "another process"
            raise ConfigError(f"another runner ({owner}) is working on {self.path.parent}; "
                              "wait for it or stop it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
