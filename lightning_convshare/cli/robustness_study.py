"""How much does a ConvShare ViT lose on real 4f hardware, and does noise-aware training win it back?

One command for the whole study (conf/study/robustness.yaml, docs/optics.md "Robustness study"): it trains
each architecture under each regime (clean on the electronic conv; the clean network fine-tuned through
the device's noise; trained from scratch through the noise), skipping runs that finished and resuming runs
that were cut off, then evaluates every network on every device preset across light budgets, on the first
preset also across camera bit depths and signed-value encodings, several noise draws per point. Writes
study.csv, study.md and study.png to --out (and to W&B when logging is on).

Overrides: study.* keys change the study (study.evaluate.draws=5, study.device=lcos-scmos ...); any other
key applies to every training run and to the evaluation data (trainer.max_epochs=30, data.batch_size=128).

examples:
  convshare robustness-study                                   # the README's study (about an hour on 2 CPU cores)
  convshare robustness-study --skip-training --out runs/robustness-study   # evaluate the runs that exist
  convshare robustness-study study.evaluate.presets=[dmd-scmos] study.evaluate.draws=2
"""
from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/robustness-study", help="study directory (runs/, study.csv, .md, .png)")
    parser.add_argument("--skip-training", action="store_true", help="evaluate the finished runs only")
    parser.add_argument("--device", default=None, help="evaluation device (default: cuda if available)")
    parser.add_argument("--wandb", default="auto", choices=("auto", "online", "offline", "disabled"),
                        help="auto: the config's W&B setting (offline without an account); disabled: files only")
    parser.add_argument("--config-dir", default=None, help="configuration directory (default: the packaged conf/)")


def run(args: argparse.Namespace) -> int:
    import time

    import torch
    from omegaconf import OmegaConf

    from ..config import compose
    from ..errors import ConfigError
    from ..evaluation.study import StudyGrid, run_study, study_table, write_study
    from ..lit.data import create_datamodule
    from ..lit.loggers import log_report
    from ..lit.study_runs import study_runs, train_study_runs
    from ..models import ModelSpec, create_network

    start = time.time()
    study_tokens = [t for t in args.overrides if t.lstrip("-+").split("=", 1)[0].split(".")[0] == "study"]
    base = [t for t in args.overrides if t not in study_tokens]
    cfg = compose(["study=robustness", *study_tokens, *base], args.config_dir)
    study = OmegaConf.to_container(cfg.study, resolve=True)
    out = Path(args.out).expanduser().resolve()
    runs = study_runs(study, out, base)
    if args.skip_training:
        missing = [r.label for r in runs if not r.done]
        if missing:
            raise ConfigError(f"--skip-training: runs {missing} have not finished in {out / 'runs'}; run without it")
    else:
        train_study_runs(runs, args.config_dir)
    ev = dict(study.get("evaluate") or {})
    encoding = compose(["optics=optical"], args.config_dir).optics.get("encoding", "offset")
    try:
        grid = StudyGrid(presets=tuple(ev.get("presets") or ()), photons=tuple(float(p) for p in ev.get("photons") or ()),
                         bits=tuple(int(b) for b in ev.get("bits") or ()), encodings=tuple(ev.get("encodings") or ()),
                         encoding=str(encoding), draws=int(ev.get("draws", 3)), backend=ev.get("backend") or {},
                         max_batches=ev.get("max_batches"))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"study.evaluate: {e}") from None
    models = {r.label: (create_network(ModelSpec.from_source(str(r.checkpoint), exact=True)).model,
                        {"model": r.label, "architecture": r.architecture, "regime": r.regime}) for r in runs}
    datamodule = create_datamodule(OmegaConf.to_container(cfg.data, resolve=True))
    datamodule.setup("validate")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows = run_study(models, datamodule.val_dataloader(), grid, device=device)
    keep = float(ev.get("keep", 0.95))
    title = f"robustness study: {cfg.data.name}, training device {study.get('device')}"
    paths = write_study(rows, out, grid.presets, title, keep)
    summary = study_table(rows, grid.presets, keep)
    table = Table(title=f"{title} ({time.time() - start:.0f} s): light budget keeping {keep:.0%} of clean accuracy")
    for col in summary[0]:
        table.add_column(col, justify="left" if col in ("model", "architecture", "regime") else "right")
    for row in summary:
        table.add_row(*("-" if v is None else (f"{v:.4f}" if isinstance(v, float) and v < 10 else f"{v:g}"
                                                if isinstance(v, float) else str(v)) for v in row.values()))
    Console(width=160).print(table)
    wb = dict(cfg.logger.wandb) if "wandb" in (cfg.get("logger") or {}) else {}
    mode = args.wandb if args.wandb != "auto" else (str(wb.get("mode", "auto")) if wb else "disabled")
    columns = list(rows[0].__dataclass_fields__)
    where = log_report(mode=mode, name="robustness-study", job_type="robustness-study", table="study/points",
                       columns=columns, rows=[[getattr(r, c) for c in columns] for r in rows],
                       images={"study/accuracy_vs_light": paths["png"]}, directory=out,
                       project=wb.get("project") or "lightning-convshare", entity=wb.get("entity"), group=wb.get("group"))
    Console().print(f"wrote {paths['csv']}, {paths['md'].name}, {paths['png'].name}" + (f"; W&B: {where}" if where else ""))
    return 0
