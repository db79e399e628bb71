"""Sweeps: W&B sweep YAMLs run by a local, resumable runner on W&B's own search logic, or by ``wandb agent``.

Nothing here imports Lightning or wandb: trials are ``convshare train`` subprocesses, and the
training-side pieces (metric history, early stop, summary upload) live in :mod:`lightning_convshare.lit.trial`.
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
