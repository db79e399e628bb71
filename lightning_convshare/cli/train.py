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


def run(args: argparse.Namespace) -> int:
    from ..config import compose

    return train_and_summarise(compose(args.overrides, args.config_dir), args.print_config, _print_summary)


def train_and_summarise(cfg, print_config: bool, summary) -> int:
    """Resolve the composed config, then print it (``print_config``) or train it and print
    ``summary(cfg, result)``; the exit status (1 when training stopped before an epoch finished)."""
    from omegaconf import OmegaConf

    from ..resolve import resolve

    cfg = resolve(cfg)
    if print_config:
        print(OmegaConf.to_yaml(cfg))
        return 0
    from ..lit.train import run_training

    result = run_training(cfg)
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
