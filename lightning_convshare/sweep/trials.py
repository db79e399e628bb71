"""What a trial leaves behind (history, metrics, log) and how its processes are tied to the runner."""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import random
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from ..trial_protocol import HISTORY_FILE, METRICS_FILE, TRIAL_DIR_ENV

__all__ = [
    "die_with_parent",
    "error_message",
    "log_tail",
    "read_history",
    "read_metrics",
    "seeded",
    "stray_pids",
]

LOG_TAIL_LINES = 25


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed Python's and numpy's global generators (which W&B's search uses), restoring them afterwards."""
    import numpy as np

    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """Per-epoch metrics a trial has written so far (``history.jsonl``; a torn last line is skipped)."""
    path = run_dir / HISTORY_FILE
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def read_metrics(run_dir: Path) -> Optional[dict[str, Any]]:
    """``metrics.json`` of a finished trial, or ``None``."""
    try:
        return json.loads((run_dir / METRICS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log."""
    try:
        text = path.read_text(errors="replace").rstrip().splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def error_message(path: Path) -> str:
    """The ``error: ...`` message ``convshare`` printed (Rich may have wrapped it over lines)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("error:"):
            return " ".join(s.strip() for s in lines[i:] if s.strip())[len("error:"):].strip()
    return log_tail(path, 5)


def die_with_parent() -> None:
    """``preexec_fn`` of a trial (runs in the child between fork and exec, Linux only): the kernel kills the
    trial the moment its runner dies, however the runner dies. SIGKILL, not SIGTERM: Lightning handles SIGTERM by
    finishing its step, which kept trials running for seconds; a killed trial continues from its last
    checkpoint when the sweep is resumed."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _run_dirs_of(pid: str, cmdline: list[str], environ: str) -> list[Path]:
    """The run directories a process works for: ``run.dir=`` on its command line (relative to its working
    directory) and ``$CONVSHARE_TRIAL_DIR``, resolved."""
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        cwd = Path("/")
    found = []
    for token in cmdline:
        key, _, value = token.lstrip("-").partition("=")
        if key == "run.dir" and value:
            found.append(value)
    for entry in environ.split("\0"):
        key, _, value = entry.partition("=")
        if key == TRIAL_DIR_ENV and value:
            found.append(value)
    out = []
    for value in found:
        path = Path(value).expanduser()
        try:
            out.append((path if path.is_absolute() else cwd / path).resolve())
        except OSError:
            continue
    return out


def stray_pids(run_dir: Path) -> list[int]:
    """Processes still working for a trial (their ``run.dir`` or ``$CONVSHARE_TRIAL_DIR`` is ``run_dir``, however
    it was spelled: relative or absolute, with or without symlinks)."""
    proc, found = Path("/proc"), []
    if not proc.is_dir():
        return found
    target = Path(run_dir).expanduser().resolve()
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            environ = (entry / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if target in _run_dirs_of(entry.name, cmdline, environ):
            found.append(int(entry.name))
    return found
