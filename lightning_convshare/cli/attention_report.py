"""Attention report: per-layer attention metrics of trained models, optionally against a reference ViT.

Each CKPT (a `convshare train` checkpoint, a weights file with --arch, or a timm hub name) runs in
eval mode over the validation split of the data: by default the data of the first checkpoint's run
(its config.yaml), else `--data NAME` (a conf/data/ file) with `data.key=value` overrides. Prints a
per-layer table per model and the models side by side, and writes to --out:

  summary.csv / summary.md / summary.json     the models (and the reference's own statistics) side by side
  <model>/layers.csv, layers.md, heads.csv    per layer / per head
  <model>/heatmap.png                         layers x metrics
  <model>/maps.png                            picture grid: image | model | reference, per layer

examples:
  convshare attention runs/valid/checkpoints/last.ckpt --reference runs/vit/checkpoints/last.ckpt
  convshare attention runs/a/checkpoints/last.ckpt runs/b/checkpoints/last.ckpt --reference runs/vit/checkpoints/last.ckpt
  convshare attention model.safetensors --arch vit_tiny_patch16_224 --data synthetic data.num_val=128
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Optional

from rich.console import Console
from rich.table import Table

OVERRIDES = True

console = Console()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="+", metavar="CKPT", help="run checkpoint(s), weights file(s) or timm name(s)")
    parser.add_argument("--reference", metavar="CKPT_OR_NAME", default=None,
                        help="the reference ViT (run checkpoint, weights file with --reference-arch, or timm hub name)")
    parser.add_argument("--reference-arch", default=None, help="timm architecture of a reference weights file")
    parser.add_argument("--arch", default=None, help="timm architecture of CKPT weights files")
    parser.add_argument("--data", default=None, help="conf/data/ file to evaluate on (default: the first run's data)")
    parser.add_argument("--out", default=None, help="output folder (default: <run>/attention/report for one run "
                                                     "checkpoint, else ./attention-report)")
    parser.add_argument("--images", type=int, default=4, help="validation images in the picture grid")
    parser.add_argument("--max-batches", type=int, default=None, help="evaluate on the first N batches only")
    parser.add_argument("--per-head", action="store_true", help="also print the per-head table")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--config-dir", default=None, help="configuration directory (default: the packaged conf/)")


def _run_dir(source: str) -> Optional[Path]:
    """The run directory of a ``runs/<run>/checkpoints/<name>.ckpt`` path (with its config.yaml)."""
    from ..errors import ConvShareError
    from ..models import resolve_source

    try:
        src = resolve_source(source)
    except ConvShareError:
        return None
    run = src.path.parent.parent if src.is_run else None
    return run if run is not None and (run / "config.yaml").is_file() else None


def _data_config(args: argparse.Namespace) -> Any:
    """The config whose ``data`` the models are evaluated on: the first run's saved config (with the
    overrides) unless ``--data`` chooses a data group."""
    from ..config import compose, compose_saved

    run = _run_dir(args.checkpoints[0])
    if args.data or run is None:
        return compose([f"data={args.data or 'digits'}", *args.overrides], args.config_dir)
    return compose_saved(run / "config.yaml", args.overrides)


def _label(source: str, taken: set[str]) -> str:
    run = _run_dir(source)
    name = run.name if run is not None else Path(source).stem
    label, i = name, 2
    while label in taken:
        label, i = f"{name}-{i}", i + 1
    taken.add(label)
    return label


def _layer_table(title: str, report: Any, reference: bool = False) -> Table:
    """Per-layer table of the model's metrics, or (``reference``) of the reference's own statistics."""
    from ..metrics import METRIC_INFO, format_value

    cols = [c for c in report.scores.columns() if c.startswith("ref_") == reference]
    units = ", ".join(f"{METRIC_INFO[c.removeprefix('ref_')][0]}: {METRIC_INFO[c.removeprefix('ref_')][1]}" for c in cols)
    table = Table(title=f"{title} ({report.num_images} images)", caption=units)
    table.add_column("layer")
    for c in cols:
        table.add_column(METRIC_INFO[c.removeprefix("ref_")][0], justify="right")
    for row in report.scores.layer_rows():
        table.add_row(str(row["layer"]), *(format_value(row[c]) for c in cols))
    overall = report.scores.overall()
    table.add_row("[bold]all[/]", *(f"[bold]{format_value(overall[c])}[/]" for c in cols))
    return table


def _summary(labels: list[str], reports: list[Any], reference: Optional[str]) -> list[dict[str, Any]]:
    """Rows: metrics; columns: the models, then the reference's own statistics."""
    from ..metrics import METRIC_INFO, SIMILARITY_METRICS, STATISTIC_METRICS

    overall = [r.scores.overall() for r in reports]
    ref_report = reports[0] if reference else None
    rows = []
    for metric in (*SIMILARITY_METRICS, *STATISTIC_METRICS, "accuracy"):
        if metric == "accuracy":
            title, unit = "val accuracy", ""
            values = [r.accuracy for r in reports]
            ref_value = ref_report.reference_accuracy if ref_report else None
        else:
            title, unit, _ = METRIC_INFO[metric]
            values = [o.get(metric) for o in overall]
            ref_value = overall[0].get(f"ref_{metric}") if ref_report else None
        if all(v is None or math.isnan(v) for v in values):
            continue
        row = {"metric": f"{title} ({unit})" if unit else title, **dict(zip(labels, values, strict=True))}
        if reference:
            row["reference"] = ref_value
        rows.append(row)
    return rows


def run(args: argparse.Namespace) -> int:
    import torch
    from omegaconf import OmegaConf

    from ..errors import ConfigError
    from ..lit.data import create_datamodule
    from ..metrics import (
        TokenLayout,
        attention_grid,
        evaluate_attention,
        load_reference,
        markdown_table,
        metric_heatmap,
        picture_kind,
        save_figure,
        write_csv,
    )
    from ..models import ModelSpec, resolve_source

    cfg = _data_config(args)
    if args.images < 0:
        raise ConfigError(f"--images must be >= 0, got {args.images}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model_kwargs = ModelSpec.from_hparams(cfg.model).kwargs if cfg.get("model") else {}
    reference = None
    if args.reference:
        ref = cfg.get("reference") or {}
        ref_kwargs = OmegaConf.to_container(ref.kwargs, resolve=True) if ref.get("kwargs") else {}
        reference = load_reference(args.reference, args.reference_arch or ref.get("name"), **ref_kwargs)
    datamodule = create_datamodule(OmegaConf.to_container(cfg.data, resolve=True))
    datamodule.setup("validate")
    loader = datamodule.val_dataloader()
    run = _run_dir(args.checkpoints[0])
    out = Path(args.out) if args.out else (run / "attention" / "report" if run and len(args.checkpoints) == 1
                                          else Path("attention-report"))
    labels, reports, taken = [], [], set()
    for source in args.checkpoints:
        # weights files are built like the config's model; run checkpoints rebuild themselves; hub models keep their size
        kwargs = model_kwargs if resolve_source(source).kind == "file" else {}
        model = load_reference(source, args.arch or OmegaConf.select(cfg, "model.name"), **kwargs)
        label = _label(source, taken)
        report = evaluate_attention(model, loader, reference, num_images=args.images, max_batches=args.max_batches,
                                    device=device)
        labels.append(label)
        reports.append(report)
        folder = out / label
        write_csv(folder / "layers.csv", report.scores.layer_rows())
        (folder / "layers.md").write_text(markdown_table(report.scores.layer_rows()))
        write_csv(folder / "heads.csv", report.scores.head_rows())
        save_figure(metric_heatmap(report.scores.layer_rows(), report.scores.columns(), title=label), folder / "heatmap.png")
        if args.images and len(report.images):
            grid = attention_grid(report.images, report.pictures, report.reference_pictures,
                                  title=f"{label}: {picture_kind(TokenLayout.from_model(model))}"
                                  + (" | reference below" if reference else ""))
            save_figure(grid, folder / "maps.png")
        console.print(_layer_table(f"{label}: attention per layer", report))
        if args.per_head:
            _print_rows(f"{label}: per head", report.scores.head_rows())
    if reference is not None:
        console.print(_layer_table("reference: its own attention per layer", reports[0], reference=True))
    summary = _summary(labels, reports, args.reference)
    write_csv(out / "summary.csv", summary)
    (out / "summary.md").write_text(markdown_table(summary))
    (out / "summary.json").write_text(json.dumps({
        "reference": args.reference, "data": OmegaConf.to_container(cfg.data, resolve=True),
        "images": reports[0].num_images,
        "models": {
            label: {"source": src, "accuracy": r.accuracy, **r.scores.overall(), "layers": r.scores.layer_rows()}
            for label, src, r in zip(labels, args.checkpoints, reports, strict=True)
        },
    }, indent=2, default=str, allow_nan=True) + "\n")
    _print_rows("attention, side by side" + (f" (reference: {args.reference})" if args.reference else ""), summary)
    console.print(f"report written to {out}/")
    return 0


def _print_rows(title: str, rows: list[dict[str, Any]]) -> None:
    from ..metrics import format_value

    if not rows:
        return
    table = Table(title=title)
    for i, col in enumerate(rows[0]):
        table.add_column(str(col), justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(format_value(v) for v in row.values()))
    console.print(table)
