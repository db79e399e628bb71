"""Train a model. Overrides select group files (`surgery=vit`) or set keys (`model.num_heads=2`,
`--trainer.max_epochs=3`, `+model.drop_rate=0.1` to add a key); see the README.

examples:
  convshare train                                   # ConvShare ViT on digits (the default)
  convshare train surgery=vit                       # the baseline
  convshare train surgery.padding=same surgery.kernel_size=3
  convshare train experiment=same_k3 logger=csv --trainer.max_epochs=5
"""
from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-dir", default=None, help="configuration directory (default: the packaged conf/)")
    parser.add_argument("--print-config", action="store_true", help="print the composed config and exit")
    add_resume_arguments(parser)


def add_resume_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", metavar="RUN_DIR", default=None,
                        help="continue an interrupted run in its directory, from its newest checkpoint, with its saved "
                             "config.yaml (key=value overrides still apply, e.g. trainer.max_epochs=100)")


def run(args: argparse.Namespace) -> int:
    from ..config import compose

    cfg = resumed_config(args) if args.resume else compose(args.overrides, args.config_dir)
    return train_and_summarise(cfg, args.print_config, _print_summary, resume=bool(args.resume))


def resumed_config(args: argparse.Namespace):
    """The saved config of the run in ``--resume RUN_DIR`` with the command line's key=value overrides."""
    from pathlib import Path

    from ..config import compose_saved
    from ..errors import ConfigError

    run_dir = Path(args.resume).expanduser()
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"--resume {args.resume}: no run there ({run_dir / 'config.yaml'} does not exist); give the "
                          "directory of a convshare train run")
    return compose_saved(run_dir / "config.yaml", args.overrides, values={"run.dir": str(run_dir.resolve())})


def train_and_summarise(cfg, print_config: bool, summary, resume: bool = False) -> int:
    """Resolve the composed config, then print it (``print_config``) or train it and print
    ``summary(cfg, result)``; the exit status (1 when training stopped before an epoch finished)."""
    from omegaconf import OmegaConf

    from ..resolve import resolve

    cfg = resolve(cfg)
    if print_config:
        print(OmegaConf.to_yaml(cfg))
        return 0
    from ..lit.train import run_training

    result = run_training(cfg, resume=resume)
    if result.metrics.get("epochs") is None:
        return 1
    summary(cfg, result)
    return 0


def _print_summary(cfg, result) -> None:
    m = result.metrics
    table = Table(title="convshare train: summary", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    fmt = lambda v: "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))  # noqa: E731
    table.add_row("variant", f"{cfg.surgery.name} ({cfg.choices.get('surgery')})")
    table.add_row("val/acc (last epoch)", fmt(m.get("val/acc")))
    table.add_row("val/acc (best)", fmt(m.get("val/acc_best")))
    table.add_row("val/loss", fmt(m.get("val/loss")))
    table.add_row("params", f"{m.get('params', 0):,}")
    table.add_row("wall time", f"{m.get('wall_time_s', 0):.1f} s")
    table.add_row("run dir", str(result.run_dir))
    table.add_row("best checkpoint", str(result.best_checkpoint))
    Console().print(table)
