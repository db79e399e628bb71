"""``wandb agent`` processes, one per GPU (or GPU group), for a sweep on a W&B server.

``wandb sweep sweeps/X.yaml`` registers the sweep and prints its id; :func:`agent_commands` gives
the agents' command lines with their ``CUDA_VISIBLE_DEVICES``, and :func:`run_agents` starts them,
waits, and terminates them all on Ctrl-C. The agents start the sweep's own ``command:``
(``convshare train ... ${args_no_hyphens}``), exactly what the local runner starts.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import ConfigError
from .devices import DeviceGroups, clean_env
from .spec import quote

__all__ = ["AgentCommand", "agent_commands", "run_agents", "wandb_executable"]

log = logging.getLogger(__name__)


@dataclass
class AgentCommand:
    """One agent: its argv and the environment variables it adds (``CUDA_VISIBLE_DEVICES`` ...)."""

    argv: list[str]
    env: dict[str, str]

    def shell(self) -> str:
        """The command line as one would type it, e.g. ``CUDA_VISIBLE_DEVICES=0 wandb agent ent/proj/abc123``."""
        prefix = " ".join(f"{k}={v}" for k, v in sorted(self.env.items()))
        return f"{prefix} {quote(self.argv)}".strip()


def wandb_executable() -> str:
    """The ``wandb`` command of this environment (next to this Python), else the one on ``PATH``."""
    here = Path(sys.executable).parent / "wandb"
    if here.is_file():
        return str(here)
    found = shutil.which("wandb")
    if found is None:
        raise ConfigError("the `wandb` command is not installed in this environment (pip install wandb)")
    return found


def agent_commands(sweep_id: str, groups: DeviceGroups, *, count: Optional[int] = None, project: Optional[str] = None,
                   entity: Optional[str] = None, executable: Optional[str] = None) -> list[AgentCommand]:
    """One ``wandb agent`` command per device group.

    Args:
        sweep_id: ``ID`` or ``ENTITY/PROJECT/ID`` as printed by ``wandb sweep``.
        groups: device groups (``CUDA_VISIBLE_DEVICES`` per agent; CPU groups set ``OMP_NUM_THREADS``).
        count: runs per agent (``wandb agent --count``).
        project: W&B project (when ``sweep_id`` is a bare id).
        entity: W&B entity (when ``sweep_id`` is a bare id).
        executable: the ``wandb`` command (default :func:`wandb_executable`).
    """
    if not sweep_id or sweep_id.count("/") not in (0, 2) or any(not p for p in sweep_id.split("/")):
        raise ConfigError(f"sweep id {sweep_id!r}: expected ID or ENTITY/PROJECT/ID, as printed by `wandb sweep`")
    argv = [executable or wandb_executable(), "agent"]
    if count is not None:
        argv += ["--count", str(count)]
    if project:
        argv += ["--project", project]
    if entity:
        argv += ["--entity", entity]
    argv.append(sweep_id)
    base = clean_env()
    return [AgentCommand(list(argv), {k: v for k, v in groups.env(slot, base).items() if base.get(k) != v})
            for slot in range(len(groups))]


def run_agents(commands: list[AgentCommand], grace_s: float = 30.0) -> int:
    """Start every agent (each in its own process group), wait for all; Ctrl-C stops them all.

    Returns:
        The highest exit status of the agents (130 after Ctrl-C).
    """
    procs = []
    for cmd in commands:
        env = {**clean_env(), **cmd.env}
        log.info("starting %s", cmd.shell())
        procs.append(subprocess.Popen(cmd.argv, env=env, start_new_session=True))
    try:
        return max(p.wait() for p in procs)
    except KeyboardInterrupt:
        log.warning("stopping %d agent(s)", len(procs))
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for p in procs:
                if p.poll() is None:
                    try:
                        os.killpg(p.pid, sig)
                    except ProcessLookupError:
                        pass
            deadline = time.time() + grace_s
            while any(p.poll() is None for p in procs) and time.time() < deadline:
                time.sleep(0.2)
        return 130
