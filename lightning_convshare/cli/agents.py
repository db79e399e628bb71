"""Start one `wandb agent` per GPU or GPU group for a sweep registered on a W&B server
(`wandb sweep sweeps/X.yaml` prints its id). Each agent sees only its GPUs through
CUDA_VISIBLE_DEVICES and starts the sweep's own command (`convshare train ... ${args_no_hyphens}`).
Ctrl-C stops every agent.

examples:
  convshare agents ENTITY/PROJECT/SWEEP_ID --devices 0,1,2,3             # 4 agents, one GPU each
  convshare agents SWEEP_ID --project lightning-convshare --devices auto --parallel 2
  convshare agents ENTITY/PROJECT/SWEEP_ID --devices 0,1 --count 5 --dry-run
"""
from __future__ import annotations

import argparse

from rich.console import Console


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep_id", help="ID or ENTITY/PROJECT/ID, as printed by `wandb sweep`")
    parser.add_argument("--devices", default="auto", help="GPUs: auto (default), cpu, or ids like 0,1,2,3")
    parser.add_argument("--parallel", type=int, help="number of agents (default: one per GPU; 1 on CPU)")
    parser.add_argument("--count", type=int, help="runs per agent (wandb agent --count)")
    parser.add_argument("--project", help="W&B project (for a bare sweep id)")
    parser.add_argument("--entity", help="W&B entity (for a bare sweep id)")
    parser.add_argument("--dry-run", action="store_true", help="print the agents' command lines and exit")


def run(args: argparse.Namespace) -> int:
    from ..sweep import agent_commands, device_groups, run_agents

    groups = device_groups(args.devices, args.parallel)
    commands = agent_commands(args.sweep_id, groups, count=args.count, project=args.project, entity=args.entity)
    if args.dry_run:
        for cmd in commands:
            print(cmd.shell())
        return 0
    Console(stderr=True).print(f"{len(commands)} agent(s): {groups.describe()}")
    return run_agents(commands)
