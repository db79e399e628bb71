"""``convshare`` command line: ``convshare COMMAND [options] [overrides]``.

Commands are modules of this package with ``add_arguments(parser)`` and ``run(args) -> int``;
they are imported only when chosen, so ``convshare --help`` is instant. Commands that take
config overrides set ``OVERRIDES = True`` and receive every unrecognised token, in order, as
``args.overrides``.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import sys
from typing import Sequence

from rich.console import Console

from ..errors import ConvShareError

__all__ = ["COMMANDS", "main"]

#: command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("lightning_convshare.cli.train", "train a model from conf/ plus overrides (the main job)"),
    "convert": ("lightning_convshare.cli.convert", "convert a pretrained timm ViT into ConvShare form, with a fidelity report"),
    "finetune": ("lightning_convshare.cli.finetune", "fine-tune a pretrained ViT into ConvShare form with distillation"),
    "sweep": ("lightning_convshare.cli.sweep", "run a W&B sweep YAML locally: parallel, resumable, summary + plots"),
    "agents": ("lightning_convshare.cli.agents", "start one `wandb agent` per GPU (group) for a W&B server sweep"),
    "attention": ("lightning_convshare.cli.attention_report", "attention metrics of models vs a reference: tables, maps"),
    "speed": ("lightning_convshare.cli.speed", "4f speed model: optical passes per layer and the speed-up over this device"),
    "robustness": ("lightning_convshare.cli.robustness", "evaluate a checkpoint across 4f noise levels: CSV, Markdown, PNG, W&B"),
    "robustness-study": ("lightning_convshare.cli.robustness_study",
                         "train clean / noise-aware models and evaluate them on 4f device presets"),
}

console = Console(stderr=True)


def _error(message: str) -> None:
    """One line on stderr (never wrapped, never read as Rich markup): ``error: <what was wrong and what would work>``."""
    from rich.markup import escape

    console.print(f"[red]error:[/] {escape(' '.join(message.split()))}", soft_wrap=True)


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: convshare COMMAND [options] [overrides]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`convshare COMMAND --help` describes one command."]
    return "\n".join(lines)


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    handler = RichHandler(console=console, show_path=False, show_time=False, markup=False)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", handlers=[handler], force=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``convshare`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from .. import __version__

        print(__version__)
        return 0
    name = argv.pop(0)
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        _error(f"unknown command {name!r}.{hint} Commands: {', '.join(COMMANDS)}")
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"convshare {name}", description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--trust-checkpoints", action="store_true",
                        help="load checkpoint files that need full unpickling, which can run code from the file "
                             "(files written by convshare never need it; only for files you trust)")
    module.add_arguments(parser)
    if getattr(module, "OVERRIDES", False):
        args, rest = parser.parse_known_args(argv)
        args.overrides = rest
    else:
        args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    if args.trust_checkpoints:
        import os

        os.environ["CONVSHARE_TRUST_CHECKPOINTS"] = "1"  # models.checkpoint.TRUST_ENV (not imported: keep --help instant)
    try:
        return int(module.run(args) or 0)
    except ConvShareError as e:
        _error(str(e))
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130
