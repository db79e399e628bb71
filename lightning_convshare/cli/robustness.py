"""Evaluate a trained checkpoint across 4f noise levels: a table (CSV + Markdown) and a plot (PNG).

The checkpoint's network is rebuilt exactly; its ConvShare layers run through a physical backend
(the checkpoint's own if it was trained with one, else `optical`, or --backend) to which the swept
noise stage is added at each level. Rows for the electronic `direct` conv and the noise-free
backend come first. Unrecognised tokens override the run's config (e.g. data.batch_size=256).
Results also go to W&B when a run is active or --wandb asks for one.

examples:
  convshare robustness runs/x/checkpoints/last.ckpt --noise shot --levels 1e1,1e2,1e3,1e4
  convshare robustness CKPT --noise adc --levels 2,4,6,8 --backend "{name: optical, noise: [{name: shot, photons: 1e4}]}"
  convshare robustness CKPT --noise read --levels 1e-3,1e-2,1e-1 --repeats 3 --wandb offline
"""
from __future__ import annotations

import argparse
import math
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint written by `convshare train` (.ckpt)")
    parser.add_argument("--noise", required=True, help="noise stage to sweep: shot, read, adc, slm, psf")
    parser.add_argument("--levels", required=True, help="comma-separated levels of the stage's parameter, e.g. 1e2,1e3,1e4")
    parser.add_argument("--param", default=None, help="the stage option to sweep (default: its level parameter)")
    parser.add_argument("--backend", default=None, help="physical backend spec as YAML (default: the checkpoint's, else optical)")
    parser.add_argument("--repeats", type=int, default=1, help="noise draws per level (accuracy is averaged)")
    parser.add_argument("--seed", type=int, default=0, help="first noise seed")
    parser.add_argument("--max-batches", type=int, default=None, help="evaluate on at most this many batches")
    parser.add_argument("--device", default=None, help="evaluation device (default: cuda if available)")
    parser.add_argument("--out", default=None, help="output folder (default: <run dir>/robustness/<noise>)")
    parser.add_argument("--wandb", default="auto", choices=("auto", "online", "offline", "disabled"),
                        help="auto: the run's W&B setting (offline without an account); disabled: files only")


def run(args: argparse.Namespace) -> int:
    import torch
    import yaml
    from omegaconf import OmegaConf

    from ..config import compose_saved, run_config_path
    from ..errors import ConfigError
    from ..evaluation import PHYSICAL, robustness_sweep, write_artifacts
    from ..lit.data import create_datamodule
    from ..lit.loggers import log_report
    from ..models import ModelSpec, create_network

    try:
        levels = [float(v) for v in args.levels.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--levels {args.levels!r} must be comma-separated numbers, e.g. 1e2,1e3,1e4") from None
    if args.repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {args.repeats}")
    backend = None
    if args.backend:
        try:
            backend = yaml.safe_load(args.backend)
        except yaml.YAMLError as e:
            raise ConfigError(f"--backend {args.backend!r} is not valid YAML ({str(e).splitlines()[0]}); "
                              "give a name or a mapping like '{name: optical, noise: [{name: shot, photons: 1e4}]}'") from None
        backend = {"name": backend} if isinstance(backend, str) else backend
        if not isinstance(backend, dict):
            raise ConfigError(f"--backend {args.backend!r} must be a name or a mapping like '{{name: optical}}'")
    spec = ModelSpec.from_source(args.checkpoint, exact=True)
    if spec.state is None:
        raise ConfigError(f"{args.checkpoint} is not a run checkpoint (.ckpt of convshare train/finetune/convert)")
    cfg_path = run_config_path(spec.state)
    cfg = compose_saved(cfg_path, args.overrides)
    own = spec.surgery.get("backend") if isinstance(spec.surgery, dict) else None
    if backend is None:  # the network's own physical backend, else the optical one
        backend = dict(own) if isinstance(own, dict) and own.get("name") in PHYSICAL else {"name": "optical"}
    net = create_network(spec).model
    datamodule = create_datamodule(OmegaConf.to_container(cfg.data, resolve=True))
    datamodule.setup("validate")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows = robustness_sweep(net, datamodule.val_dataloader(), args.noise, levels, backend=backend, param=args.param,
                            repeats=args.repeats, device=device, max_batches=args.max_batches, seed=args.seed)
    out = Path(args.out) if args.out else cfg_path.parent / "robustness" / args.noise
    title = f"{cfg_path.parent.name}: accuracy vs {args.noise} {rows[-1].param}"
    paths = write_artifacts(rows, out, title)
    table = Table(title=title)
    for col in ("setting", rows[-1].param or "level", "val/acc", "± std", "val/loss"):
        table.add_column(col, justify="left" if col == "setting" else "right")
    for r in rows:
        table.add_row(r.setting, "-" if r.level is None else f"{r.level:g}", f"{r.acc:.4f}", f"{r.acc_std:.4f}", f"{r.loss:.4f}")
    console = Console(width=120)
    console.print(table)
    wb = dict(cfg.logger.wandb) if "wandb" in (cfg.get("logger") or {}) else {}
    columns = list(asdict(rows[0]))
    where = log_report(
        mode=args.wandb if args.wandb != "auto" else _auto_mode(cfg), name=f"{cfg_path.parent.name}-robustness-{args.noise}",
        job_type="robustness", table="robustness/table", columns=columns, rows=[[getattr(r, c) for c in columns] for r in rows],
        images={"robustness/plot": paths["png"]}, directory=out, project=wb.get("project") or "lightning-convshare",
        entity=wb.get("entity"), group=wb.get("group"),
        scalars={f"robustness/acc@{r.level:g}": r.acc for r in rows if r.level is not None and math.isfinite(r.level)},
    )
    console.print(f"wrote {paths['csv']}, {paths['md'].name}, {paths['png'].name}" + (f"; W&B: {where}" if where else ""))
    return 0


def _auto_mode(cfg) -> str:
    """The run's own W&B setting: its logger's mode, or disabled when it did not log to W&B."""
    logger = cfg.get("logger") or {}
    return str(logger["wandb"].get("mode", "auto")) if "wandb" in logger else "disabled"
