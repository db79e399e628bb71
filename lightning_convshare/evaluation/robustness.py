"""Robustness of a trained network to 4f noise: evaluate across noise levels, write a table and a plot.

The network's ConvShare layers get a physical backend (:func:`~lightning_convshare.optics.set_backend`)
whose noise list gains the swept stage at each level; evaluation samples noise exactly (eval mode).
Results go to CSV, Markdown and PNG files (``convshare robustness`` also logs them to W&B).
"""
from __future__ import annotations

import copy
import logging
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..errors import ConfigError
from ..files import atomic_write, write_csv
from ..optics import NOISE_STAGES, noise_disabled, set_backend
from .accuracy import evaluate

__all__ = ["PHYSICAL", "RobustnessRow", "robustness_sweep", "write_artifacts"]

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


def _with_stage(spec: Mapping[str, Any], noise: str, param: str, level: float, seed: int) -> dict[str, Any]:
    """``spec`` with the swept stage at ``level`` (replacing a stage of the same name) and ``seed``."""
    out = copy.deepcopy(dict(spec))
    stages = [dict(s) if isinstance(s, Mapping) else {"name": s} for s in out.get("noise") or []]
    stages = [s for s in stages if s.get("name") != noise] + [{"name": noise, param: level}]
    out.update(noise=stages, seed=seed)
    return out


def _score(net: nn.Module, loader: Any, device: torch.device, max_batches: Optional[int]) -> tuple[float, float]:
    score = evaluate({"net": net}, loader, device=device, max_batches=max_batches)["net"]
    if score.accuracy is None:
        raise ConfigError("the evaluation data have no labels the model can score (labels outside its classes?)")
    return score.accuracy, score.loss


def robustness_sweep(
    net: nn.Module,
    loader: Any,
    noise: str,
    levels: Sequence[float],
    *,
    backend: Optional[Mapping[str, Any]] = None,
    param: Optional[str] = None,
    repeats: int = 1,
    device: str = "cpu",
    max_batches: Optional[int] = None,
    seed: int = 0,
) -> list[RobustnessRow]:
    """Evaluate ``net`` on ``loader`` at every noise level.

    Args:
        net: a network with ConvShare layers (its backends are replaced; pass a copy to keep it).
        loader: labelled validation batches.
        noise: the swept stage (``shot``, ``read``, ``adc``, ``slm``, ``psf`` or any registered one).
        levels: values of the stage's level parameter (photons, sigma, bits, levels ...).
        backend: physical backend spec (default ``optical``).
        param: the option swept (default: the stage's ``level_param``).
        repeats: noise draws per level (different seeds); accuracy is averaged.
        device: evaluation device.
        max_batches: evaluate on at most this many batches.
        seed: first noise seed.

    Returns:
        Rows: ``direct`` (electronic), ``noise-free`` (the physical backend, stages off), then one per level.

    Raises:
        ConfigError: a network without ConvShare layers, an unknown stage or parameter, bad levels.
    """
    stage_cls = NOISE_STAGES.get(noise)
    param = param or stage_cls.level_param
    if not param:
        raise ConfigError(f"noise stage {noise!r} has no level parameter; pass --param")
    if not levels:
        raise ConfigError("give at least one level, e.g. --levels 1e2,1e3,1e4")
    if int(repeats) < 1:
        raise ConfigError(f"--repeats must be >= 1, got {repeats}")
    backend = dict(backend) if backend is not None else {"name": "optical"}
    if backend.get("name") not in PHYSICAL:
        raise ConfigError(f"robustness needs a physical backend ({', '.join(PHYSICAL)}); got {backend.get('name')!r}")
    dev = torch.device(device)
    net = net.to(dev).eval()

    rows: list[RobustnessRow] = []
    set_backend(net, "direct")
    acc, loss = _score(net, loader, dev, max_batches)
    rows.append(RobustnessRow("direct", "none", "", None, acc, 0.0, loss, 1))
    set_backend(net, dict(backend))
    with noise_disabled(net):
        acc, loss = _score(net, loader, dev, max_batches)
    rows.append(RobustnessRow(f"{backend['name']} noise-free", "none", "", None, acc, 0.0, loss, 1))
    for level in levels:
        accs, losses = [], []
        for r in range(repeats):
            set_backend(net, _with_stage(backend, noise, param, level, seed + r))
            a, lo = _score(net, loader, dev, max_batches)
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
    write_csv(paths["csv"], [asdict(r) for r in rows], fields)
    lines = [f"# {title}", "", "| setting | " + " | ".join(fields[1:]) + " |", "|---|" + "---:|" * (len(fields) - 1)]
    for r in rows:
        d = asdict(r)
        cells = [d["setting"]] + [("-" if d[k] is None else (f"{d[k]:.4f}" if isinstance(d[k], float) else str(d[k])))
                                  for k in fields[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    atomic_write(paths["md"], "\n".join(lines) + "\n")
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
