"""Sweeps: W&B sweep YAMLs run by a local, resumable runner on W&B's own search logic, or by ``wandb agent``.

Nothing here imports Lightning or wandb at import time: trials are ``convshare train`` subprocesses,
the protocol between runner and trial is :mod:`lightning_convshare.trial_protocol`, and the
training-side callback lives in :mod:`lightning_convshare.lit.trial_callback`.
"""
from .agents import AgentCommand, agent_commands, run_agents
from .api import plan_sweep, resume_sweep, start_sweep, write_summary
from .devices import DeviceGroups, device_groups
from .spec import SweepSpec, load_spec, render_command, sweep_args, train_overrides
from .state import SweepState, Trial
from .summary import DEFAULT_AXES, Summary, summarize
from .validate import TrialCheck, check_trial

__all__ = [
    "AgentCommand",
    "DEFAULT_AXES",
    "DeviceGroups",
    "Summary",
    "SweepSpec",
    "SweepState",
    "Trial",
    "TrialCheck",
    "agent_commands",
    "check_trial",
    "device_groups",
    "load_spec",
    "plan_sweep",
    "render_command",
    "resume_sweep",
    "run_agents",
    "start_sweep",
    "summarize",
    "sweep_args",
    "train_overrides",
    "write_summary",
]
