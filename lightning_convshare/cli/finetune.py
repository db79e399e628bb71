"""Fine-tune a pretrained ViT into ConvShare form with knowledge distillation from the frozen original.

--source is the pretrained ViT: a run .ckpt (e.g. of `convshare train surgery=vit`), a weights file
(.safetensors/.pth/.pt/.bin; architecture from the model group and model.* overrides) or a timm hub
name. It is converted by the `surgery` config (init: lstsq, the least-squares fit of every linear
layer) and trained on the data with CE + logit KD + hidden-state KD (block outputs; attention-map KD
with distill.attn_weight) from the unconverted source, or
from --teacher; experiment=finetune_shrink starts from the source itself and anneals every layer
into its ConvShare layer instead (it starts as the ViT, not at chance). The head is resized when the
data has another class count and position embeddings are resampled (timm) when the image size
differs. Uses experiment=finetune unless you choose another experiment; `convshare train
experiment=finetune distill.source=...` is the same run. To continue a checkpoint written by
`convshare convert`, pass init_from=<it> instead of --source (the teacher defaults to the model it
was converted from). `convshare finetune --resume RUN_DIR` continues an interrupted fine-tune from
its last checkpoint (staged layers and the frozen teacher included). See docs/finetune.md.

examples:
  convshare finetune --source runs/vit/checkpoints/last.ckpt surgery.kernel_size=3 surgery.out_policy=crop
  convshare finetune --source runs/vit/checkpoints/last.ckpt surgery.padding=same surgery.kernel_size=3 \\
      distill.attn_weight=1.0
  convshare finetune experiment=finetune_shrink --source runs/vit/checkpoints/last.ckpt surgery.padding=same \\
      surgery.kernel_size=3
  convshare finetune experiment=finetune_progressive --source runs/vit/checkpoints/last.ckpt surgery.kernel_size=5
  convshare finetune init_from=last.convshare.ckpt --trainer.max_epochs=5
"""
from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from .train import add_resume_arguments

OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", default=None, help="pretrained ViT to convert: run .ckpt, weights file or timm hub name")
    parser.add_argument("--teacher", default=None, help="frozen teacher (default: the source, unconverted)")
    parser.add_argument("--config-dir", default=None, help="configuration directory (default: the packaged conf/)")
    parser.add_argument("--print-config", action="store_true", help="print the composed config and exit")
    add_resume_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..config import compose
    from ..errors import ConfigError
    from .train import resumed_config, train_and_summarise

    if args.resume:
        if args.source or args.teacher:
            raise ConfigError("--resume continues a run with its saved config: leave out --source and --teacher")
        return train_and_summarise(resumed_config(args), args.print_config, _print_summary, resume=True)

    overrides = ["experiment=finetune", *args.overrides]  # a chosen experiment wins (the later choice)
    cfg = compose(overrides, args.config_dir)
    if not cfg.get("distill"):
        raise ConfigError(f"experiment {cfg.choices.get('experiment')} has no distill settings; add distill=kd")
    values = {f"distill.{key}": value for key, value in (("source", args.source), ("teacher", args.teacher))
              if value is not None}
    if values:
        cfg = compose(overrides, args.config_dir, values=values)
    return train_and_summarise(cfg, args.print_config, _print_summary)


def _conversion(distill) -> str:
    """How the student was converted, in words."""
    if distill.get("shrink"):
        sh = distill.shrink
        return (f"shrinking: support {list(sh.get('support', []))}, blend {list(sh.get('blend', []))} of the fine-tune "
                f"({sh.get('ease', 'cosine')}), then ConvShare only")
    if distill.get("progressive"):
        return f"progressive: {dict(distill.progressive)}"
    return "one-shot (every layer converted at the start)"


def _print_summary(cfg, result) -> None:
    m = result.metrics
    fmt = lambda v: "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))  # noqa: E731
    table = Table(title="convshare finetune: summary", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    s = cfg.surgery
    options = ", ".join(f"{k}={s[k]}" for k in ("padding", "kernel_size", "out_policy", "init") if k in s)
    table.add_row("student", f"{s.name} {options}")
    table.add_row("conversion", _conversion(cfg.distill))
    table.add_row("source", str(cfg.distill.source or cfg.get("init_from")))
    table.add_row("teacher val/acc", fmt(m.get("teacher/val_acc")))
    table.add_row("student val/acc before", fmt(m.get("val/acc_start")))
    table.add_row("student val/acc after", fmt(m.get("val/acc")))
    table.add_row("val/acc (best)", fmt(m.get(f"{cfg.checkpoint.monitor}_best")))
    table.add_row("params", f"{m.get('params', 0):,}")
    table.add_row("wall time", f"{m.get('wall_time_s', 0):.1f} s")
    table.add_row("run dir", str(result.run_dir))
    table.add_row("best checkpoint", str(result.best_checkpoint))
    Console().print(table)
