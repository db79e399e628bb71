"""Run a W&B sweep YAML locally on W&B's own search logic (grid, random, bayes, hyperband), no server
needed: every trial is a `convshare train` subprocess with offline W&B logging. State lives in a sweep
directory; a killed or interrupted sweep continues with --resume. Extra overrides apply to every trial.

examples:
  convshare sweep sweeps/grid_padding_kernel_heads.yaml --parallel 2
  convshare sweep sweeps/paper_grid.yaml --devices 0,1,2,3 trainer=gpu            # one trial per GPU
  convshare sweep sweeps/paper_grid.yaml --devices auto --parallel 2 trainer=ddp   # two trials, half the GPUs each
  convshare sweep sweeps/lr_wd_bayes.yaml --count 20 trainer.max_epochs=20
  convshare sweep sweeps/paper_grid.yaml --dry-run                    # list and check the trials only
  convshare sweep --resume sweep_runs/grid_padding_kernel_heads-20260101-120000
  convshare sweep --summary sweep_runs/grid_padding_kernel_heads-20260101-120000
"""
from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table

from ..errors import ConfigError

OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", nargs="?", help="W&B sweep YAML (flat dotted parameter keys)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--resume", metavar="DIR", help="continue the sweep in DIR (reruns only cut-off trials)")
    what.add_argument("--summary", metavar="DIR", help="(re)write the summary table and plots of DIR and show them")
    what.add_argument("--dry-run", action="store_true", help="list the trials with their check, start nothing")
    parser.add_argument("--dir", help="sweep directory (default: sweep_runs/<name>-<date>-<time>)")
    parser.add_argument("--parallel", type=int, help="trials at once (default: one per GPU group; 1 on CPU)")
    parser.add_argument("--devices", help="GPUs: auto, cpu, or ids like 0,1,2,3 (each trial sees its group only)")
    parser.add_argument("--count", type=int, help="maximum number of trials (default: the sweep's run_cap; grid: all)")
    parser.add_argument("--wandb", default="offline", choices=["offline", "online", "disabled"],
                        help="W&B mode of the trials (default offline; sync later with `wandb sync`)")
    parser.add_argument("--seed", type=int, default=0, help="seed of random/bayes suggestions")
    parser.add_argument("--retry-failed", action="store_true", help="with --resume: run failed trials again too")
    for axis, default in (("x", "surgery.kernel_size"), ("lines", "surgery.padding"), ("panels", "model.num_heads")):
        parser.add_argument(f"--plot-{axis}", metavar="KEY", help=f"config key of the plots' {axis} (default {default})")


def run(args: argparse.Namespace) -> int:
    from ..sweep import plan_sweep, resume_sweep, start_sweep, write_summary

    axes = {a: getattr(args, f"plot_{a}") for a in ("x", "lines", "panels") if getattr(args, f"plot_{a}")}
    if (args.resume or args.summary) and (args.sweep or args.overrides):
        raise ConfigError("--resume/--summary take a sweep directory only: the sweep file and overrides are stored there")
    if args.summary:
        summary = write_summary(args.summary, axes=axes or None)
        _show(summary, None)
        return 0
    start = time.time()
    if args.resume:
        state = resume_sweep(args.resume, parallel=args.parallel, devices=args.devices, retry_failed=args.retry_failed)
    elif not args.sweep:
        raise ConfigError("give a sweep YAML (e.g. sweeps/grid_padding_kernel_heads.yaml), --resume DIR or --summary DIR")
    elif args.dry_run:
        _show_plan(plan_sweep(args.sweep, args.overrides, args.count, args.seed))
        return 0
    else:
        state = start_sweep(args.sweep, directory=args.dir, parallel=args.parallel, devices=args.devices,
                            overrides=args.overrides, count=args.count, wandb_mode=args.wandb, seed=args.seed, axes=axes)
    _show(state.summary or write_summary(state), time.time() - start)
    return 1 if state.count("failed") else 0


def _show(summary, wall_s) -> None:
    from ..sweep.summary import format_cell

    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 160)
    table = Table(title="convshare sweep: trials (best first)")
    cols = [c for c in summary.columns if c != "message"]
    for c in cols:
        table.add_column(c.split(".")[-1] if "/" not in c else c, no_wrap=True)
    status_i = summary.columns.index("status")
    for row in summary.rows:
        cells = [format_cell(c, v) for c, v in zip(cols, row, strict=False)]
        style = {"invalid": "dim", "failed": "red", "interrupted": "yellow"}.get(row[status_i])
        table.add_row(*cells, style=style)
    console.print(table)
    statuses = [r[status_i] for r in summary.rows]
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
    timing = f" in {wall_s:.0f} s" if wall_s is not None else ""
    console.print(f"{len(statuses)} trials{timing}: {counts}")
    console.print(f"table: {summary.csv}, {summary.markdown}")
    for p in summary.plots:
        console.print(f"plot:  {p}")


def _show_plan(planned) -> None:
    table = Table(title="convshare sweep --dry-run")
    table.add_column("#")
    table.add_column("parameters")
    table.add_column("check")
    for i, t in enumerate(planned):
        params = " ".join(f"{k}={v}" for k, v in t["params"].items())
        check = "ok" if t["error"] is None else f"invalid: {t['error']}"
        table.add_row(str(i), params, f"{check} ({1000 * t['seconds']:.0f} ms)", style="dim" if t["error"] else None)
    Console().print(table)
    bad = sum(t["error"] is not None for t in planned)
    Console().print(f"{len(planned)} trials, {bad} invalid")
