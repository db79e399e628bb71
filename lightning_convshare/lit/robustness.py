"""Robustness of a trained checkpoint to 4f noise: evaluate across noise levels, write a table and a plot.

The checkpoint's network is rebuilt exactly (:func:`~lightning_convshare.models.load_run_checkpoint`)
and its ConvShare layers get a physical backend (:func:`~lightning_convshare.optics.set_backend`)
whose noise list gains the swept stage at each level; evaluation samples noise exactly (eval mode).
Results go to CSV, Markdown and PNG files and, when W&B logging is on, to a W&B run.
"""
from __future__ import annotations

import copy
import csv
import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..errors import ConfigError
from ..models import load_run_checkpoint
from ..optics import NOISE_STAGES, noise_disabled, set_backend
from .data import create_datamodule

__all__ = ["RobustnessRow", "evaluate", "find_run_config", "log_to_wandb", "robustness_sweep", "write_artifacts"]

log = logging.getLogger(__name__)
PHYSICAL = ("fourier", "optical", "wave")


@dataclass
class RobustnessRow:
    """One evaluated setting (accuracy and loss averaged over ``repeats`` noise draws)."""

    setting: str
    noise: str
    param: str
    level: Optional[float]
    acc: float
    acc_std: float
    loss: float
    repeats: int


def find_run_config(checkpoint: Path) -> Path:
    """``config.yaml`` of the run that wrote ``checkpoint`` (its folder or the one above ``checkpoints/``)."""
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    raise ConfigError(f"no config.yaml next to {checkpoint} or in {checkpoint.parent.parent}; pass --config")


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, device: torch.device, max_batches: Optional[int] = None) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``loader``."""
    model.eval()
    correct = total = 0
    loss = 0.0
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(-1) == y).sum())
        total += len(y)
    if total == 0:
        raise ConfigError("the evaluation split is empty")
    return correct / total, loss / total


def _with_stage(spec: Mapping[str, Any], noise: str, param: str, level: float, seed: int) -> dict[str, Any]:
    """``spec`` with the swept stage at ``level`` (replacing a stage of the same name) and ``seed``."""
    out = copy.deepcopy(dict(spec))
    stages = [dict(s) if isinstance(s, Mapping) else {"name": s} for s in out.get("noise") or []]
    stages = [s for s in stages if s.get("name") != noise] + [{"name": noise, param: level}]
    out.update(noise=stages, seed=seed)
    return out


def robustness_sweep(
    checkpoint: str | Path,
    noise: str,
    levels: Sequence[float],
    *,
    backend: Optional[Mapping[str, Any]] = None,
    param: Optional[str] = None,
    repeats: int = 1,
    config: Optional[DictConfig] = None,
    device: str = "cpu",
    max_batches: Optional[int] = None,
    seed: int = 0,
) -> list[RobustnessRow]:
    """Evaluate ``checkpoint`` on its validation split at every noise level.

    Args:
        checkpoint: a ``convshare train`` checkpoint.
        noise: the swept stage (``shot``, ``read``, ``adc``, ``slm``, ``psf`` or any registered one).
        levels: values of the stage's level parameter (photons, sigma, bits, levels ...).
        backend: physical backend spec; default: the checkpoint's own if physical, else ``optical``.
        param: the option swept (default: the stage's ``level_param``).
        repeats: noise draws per level (different seeds); accuracy is averaged.
        config: the run config (default: the run's ``config.yaml``) for the data.
        device: evaluation device.
        max_batches: evaluate on at most this many batches.
        seed: first noise seed.

    Returns:
        Rows: ``direct`` (electronic), ``noise-free`` (the physical backend, stages off), then one per level.

    Raises:
        ConfigError: a checkpoint without ConvShare layers, an unknown stage or parameter, bad levels.
    """
    path = Path(checkpoint).expanduser()
    stage_cls = NOISE_STAGES.get(noise)
    param = param or stage_cls.level_param
    if not param:
        raise ConfigError(f"noise stage {noise!r} has no level parameter; pass --param")
    if not levels:
        raise ConfigError("give at least one level, e.g. --levels 1e2,1e3,1e4")
    net = load_run_checkpoint(path).model.to(device).eval()
    hparams = torch.load(path, map_location="cpu", weights_only=False)["hyper_parameters"]
    own = (hparams.get("surgery") or {}).get("backend") if isinstance(hparams.get("surgery"), Mapping) else None
    if backend is None:
        backend = dict(own) if isinstance(own, Mapping) and own.get("name") in PHYSICAL else {"name": "optical"}
    if backend.get("name") not in PHYSICAL:
        raise ConfigError(f"robustness needs a physical backend ({', '.join(PHYSICAL)}); got {backend.get('name')!r}")
    cfg = config if config is not None else OmegaConf.load(find_run_config(path))
    datamodule = create_datamodule(OmegaConf.to_container(cfg.data, resolve=True))
    datamodule.setup("validate")
    loader = datamodule.val_dataloader()
    dev = torch.device(device)

    rows: list[RobustnessRow] = []
    set_backend(net, "direct")
    acc, loss = evaluate(net, loader, dev, max_batches)
    rows.append(RobustnessRow("direct", "none", "", None, acc, 0.0, loss, 1))
    set_backend(net, dict(backend))
    with noise_disabled(net):
        acc, loss = evaluate(net, loader, dev, max_batches)
    rows.append(RobustnessRow(f"{backend['name']} noise-free", "none", "", None, acc, 0.0, loss, 1))
    for level in levels:
        accs, losses = [], []
        for r in range(repeats):
            set_backend(net, _with_stage(backend, noise, param, level, seed + r))
            a, lo = evaluate(net, loader, dev, max_batches)
            accs.append(a)
            losses.append(lo)
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        rows.append(RobustnessRow(f"{backend['name']} + {noise}", noise, param, float(level),
                                  statistics.fmean(accs), std, statistics.fmean(losses), repeats))
        log.info("%s %s=%g: acc %.4f", noise, param, level, rows[-1].acc)
    return rows


def write_artifacts(rows: Sequence[RobustnessRow], out_dir: str | Path, title: str) -> dict[str, Path]:
    """``robustness.csv``, ``robustness.md`` and ``robustness.png`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "robustness.csv", "md": out / "robustness.md", "png": out / "robustness.png"}
    fields = list(asdict(rows[0]))
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    lines = [f"# {title}", "", "| setting | " + " | ".join(fields[1:]) + " |", "|---|" + "---:|" * (len(fields) - 1)]
    for r in rows:
        d = asdict(r)
        cells = [d["setting"]] + [("-" if d[k] is None else (f"{d[k]:.4f}" if isinstance(d[k], float) else str(d[k])))
                                  for k in fields[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    paths["md"].write_text("\n".join(lines) + "\n")
    _plot(rows, paths["png"], title)
    return paths


def _plot(rows: Sequence[RobustnessRow], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    swept = [r for r in rows if r.level is not None]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    xs = [r.level for r in swept]
    ax.errorbar(xs, [r.acc for r in swept], yerr=[r.acc_std for r in swept], marker="o", capsize=3, label=swept[0].setting)
    for r, style in zip([r for r in rows if r.level is None], ("--", ":"), strict=False):
        ax.axhline(r.acc, linestyle=style, color="grey", label=r.setting)
    positive = all(x > 0 for x in xs)
    if positive and len(xs) > 1 and max(xs) / min(xs) >= 100:
        ax.set_xscale("log")
    ax.set_xlabel(f"{swept[0].noise} {swept[0].param}")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def log_to_wandb(
    rows: Sequence[RobustnessRow], paths: Mapping[str, Path], *, mode: str = "auto", run_config: Optional[DictConfig] = None,
    name: str = "robustness", out_dir: Optional[Path] = None,
) -> Optional[str]:
    """Log the table and plot to the active W&B run, or to a new one unless ``mode`` is ``disabled``.

    Returns:
        Where it went (the run's directory or URL), or ``None`` when W&B logging is off.
    """
    import wandb

    from .loggers import resolve_wandb_mode

    run, own = wandb.run, False
    if run is None:
        mode = resolve_wandb_mode(mode)
        if mode == "disabled":
            return None
        wb = dict(OmegaConf.to_container(run_config.logger.wandb, resolve=True)) if (
            run_config is not None and "wandb" in (run_config.get("logger") or {})) else {}
        run = wandb.init(project=wb.get("project", "lightning-convshare"), entity=wb.get("entity"), group=wb.get("group"),
                         job_type="robustness", name=name, mode=mode, dir=str(out_dir) if out_dir else None,
                         config={"rows": len(rows)}, reinit=True)
        own = True
    data = [[getattr(r, k) for k in asdict(r)] for r in rows]
    run.log({
        "robustness/table": wandb.Table(columns=list(asdict(rows[0])), data=data),
        "robustness/plot": wandb.Image(str(paths["png"])),
        **{f"robustness/acc@{r.level:g}": r.acc for r in rows if r.level is not None and math.isfinite(r.level)},
    })
    where = getattr(run, "url", None) or getattr(run, "dir", None)
    if own:
        run.finish()
    return where
