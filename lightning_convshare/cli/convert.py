"""Convert a pretrained timm ViT into ConvShare form and report how faithful the conversion is.

The source is a local file (--checkpoint: .safetensors/.pth/.pt/.bin with --model NAME, or a .ckpt
written by `convshare train/finetune/convert`, which brings its own architecture) or, without
--checkpoint, timm's hub weights of --model (needs network; fails in seconds without it). Surgery
options are overrides (surgery.padding=same surgery.kernel_size=3 surgery.init=lstsq); timm kwargs are
model.* overrides (model.img_size=32 resamples the position embeddings, model.num_classes=100 resets
the head). Valid padding with whole-map kernels is exact: the report shows the max absolute logit
difference (float rounding). Other geometries report each layer's relative approximation error
||M(w) - W||_F / ||W||_F and the end-to-end logit agreement; their kernels start at the least-squares
fit of the linear layer (surgery.init=lstsq, the default here; surgery.init=transfer for fresh kernels,
crop for kernels cut out of the weights). The output .ckpt is read by
`convshare train init_from=...`, `convshare finetune init_from=...` and `convshare attention`.

examples:
  convshare convert --model vit_tiny_patch16_224 --checkpoint vit_tiny.safetensors --inputs random
  convshare convert --checkpoint runs/vit/checkpoints/last.ckpt --eval --out valid_full.ckpt
  convshare convert --checkpoint runs/vit/checkpoints/last.ckpt --eval \\
      surgery.kernel_size=3 surgery.out_policy=crop
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

OVERRIDES = True
INPUTS = ("auto", "data", "random")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="timm model name (a .ckpt brings its own)")
    parser.add_argument("--checkpoint", default=None, help="local weights: .safetensors/.pth/.pt/.bin or a run .ckpt")
    parser.add_argument("--out", default=None, help="output .ckpt (default: <source>.convshare.ckpt)")
    parser.add_argument("--inputs", choices=INPUTS, default="auto",
                        help="images for the logit comparison: the data's validation split, Gaussian noise, or "
                             "auto (the data when it fits the model's input, else noise)")
    parser.add_argument("--batch-size", type=int, default=64, help="images in the logit comparison")
    parser.add_argument("--eval", action="store_true", help="also measure both models' accuracy on the validation split")
    parser.add_argument("--config-dir", default=None, help="configuration directory (default: the packaged conf/)")


def _inputs(args: argparse.Namespace, cfg: Any, model: Any) -> tuple[Any, Any, str]:
    """(comparison batches, labelled validation loader or None, description)."""
    import torch

    from ..errors import DataError
    from ..lit.data import create_datamodule

    img = tuple(model.patch_embed.img_size)
    chans = model.patch_embed.proj.in_channels
    dm, why = None, ""
    if args.inputs != "random" or args.eval:
        from omegaconf import OmegaConf

        dm = create_datamodule(OmegaConf.to_container(cfg.data, resolve=True))
        fits = (dm.img_size, dm.img_size) == img and dm.in_chans == chans
        why = f"data {cfg.data.name} ({dm.in_chans}x{dm.img_size}x{dm.img_size}) vs model input ({chans}x{img[0]}x{img[1]})"
        if not fits and (args.inputs == "data" or args.eval):
            raise DataError(f"the data does not fit the model: {why}; choose a data group/size that does, or --inputs random")
        if args.eval and dm.num_classes != model.num_classes:
            raise DataError(f"--eval: the model has {model.num_classes} classes and data {cfg.data.name} has {dm.num_classes}")
        if not fits:
            dm = None
    val = None
    if dm is not None:
        dm.setup("validate")
        val = dm.val_dataloader()
    if args.inputs == "random" or (args.inputs == "auto" and val is None):
        g = torch.Generator().manual_seed(0)
        batch = torch.randn(args.batch_size, chans, *img, generator=g)  # B, C, H, W
        return [batch], val, f"{args.batch_size} Gaussian-noise images" + (f" ({why})" if why else "")
    x, _ = next(iter(val))
    return [x[: args.batch_size]], val, f"{min(len(x), args.batch_size)} validation images of {cfg.data.name}"


def run(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from ..config import compose
    from ..conversion import convert, logit_agreement, save_conversion
    from ..errors import ConfigError
    from ..evaluation import evaluate
    from ..models import create_network
    from ..resolve import resolve_convert

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    job = resolve_convert(compose(args.overrides, args.config_dir), args.overrides, model=args.model,
                          checkpoint=args.checkpoint, conf_dir=args.config_dir)
    cfg = job.config
    original = create_network(job.source).model.eval()
    surgery = OmegaConf.to_container(cfg.surgery, resolve=True)
    converted, report = convert(original, surgery)
    batches, val, report.inputs = _inputs(args, cfg, original)
    report.logits = logit_agreement(original, converted, batches)
    if args.eval:
        report.accuracy = {k: s.accuracy for k, s in evaluate({"original": original, "converted": converted}, val).items()}
    ckpt = Path(args.checkpoint).expanduser() if args.checkpoint else None
    out = Path(args.out) if args.out else Path(f"{ckpt.with_suffix('') if ckpt else job.source.name}.convshare.ckpt")
    save_conversion(out, converted, original, job.source, surgery, report, optim=OmegaConf.to_container(cfg.optim, resolve=True),
                    loss=OmegaConf.to_container(cfg.loss, resolve=True))
    _print_report(report, out)
    return 0


def _print_report(report: Any, out: Path) -> None:
    console = Console()
    table = Table(title=f"convshare convert: {report.surgery.variant} {_options(report.surgery.options)}")
    for col, justify in (("layer", "left"), ("geometry", "left"), ("rel. error", "right"), ("params", "right")):
        table.add_column(col, justify=justify)
    for fit in report.layers:
        error = "0 (exact)" if fit.exact else f"{fit.rel_error:.4f}"
        table.add_row(fit.name, fit.geometry, error, f"{fit.params_before:,} -> {fit.params_after:,}")
    console.print(table)
    lg = report.logits
    summary = Table(show_header=False, title="end to end")
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("conversion", "exact (valid padding, whole-map kernels)" if report.exact
                    else f"approximate: mean layer rel. error {report.mean_rel_error:.4f}")
    summary.add_row("compared on", report.inputs)
    summary.add_row("max |logit diff|", f"{lg.max_abs_diff:.3g}")
    summary.add_row("logit rel. error", f"{lg.rel_error:.3g}")
    summary.add_row("top-1 agreement", f"{lg.top1_agreement:.4f}")
    for key, acc in report.accuracy.items():
        summary.add_row(f"val/acc {key}", f"{acc:.4f}")
    summary.add_row("params", f"{report.surgery.params_before:,} -> {report.surgery.params_after:,}")
    summary.add_row("written", str(out))
    console.print(summary)


def _options(options: dict[str, Any]) -> str:
    keys = ("padding", "kernel_size", "out_policy", "init", "targets", "blocks")
    return ", ".join(f"{k}={options[k]}" for k in keys if k in options)
