"""The hardware robustness study: trained networks evaluated on 4f devices across light budgets, bit depths
and signed-value encodings, several noise draws per point (plain torch; ``convshare robustness-study``).

A point is one network on one backend: ``optical`` with a device preset (:mod:`~lightning_convshare.optics.device`)
whose light budget (``light.photons``: photons per pixel per frame at full scale) and camera bit depth are
set, a signed-value encoding, and a noise seed (one per draw). The study has three axes, so that it stays
affordable on a CPU:

* ``preset``: every preset at its own light budget, bit depth and the configured encoding (the device as
  described);
* ``light``: every preset x every light budget (the preset's own bit depth, the configured encoding);
* ``bits``: every camera bit depth x every light budget, on the first preset;
* ``encoding``: every encoding x every light budget, on the first preset.

Each network also gets a ``clean`` row (the electronic ``direct`` conv) and, per preset, a ``noise-free``
row (the same optics with the noise stages off), so that "keeps 95% of its clean accuracy" can be read off.
"""
from __future__ import annotations

import copy
import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..errors import ConfigError
from ..files import atomic_write, write_csv
from ..optics import noise_disabled, set_backend
from .accuracy import evaluate

__all__ = ["AXES", "StudyGrid", "StudyRow", "keep_threshold", "run_study", "study_table", "write_study"]

log = logging.getLogger(__name__)
AXES = ("preset", "light", "bits", "encoding")


@dataclass(frozen=True)
class StudyGrid:
    """What to evaluate (see the module docstring for the three axes).

    Attributes:
        presets: device presets; the first one carries the ``bits`` and ``encoding`` axes.
        photons: light budgets (photons per pixel per frame at full scale).
        bits: camera bit depths.
        encodings: signed-value encodings.
        encoding: the encoding of the ``light`` and ``bits`` axes (the configured one).
        draws: noise draws (seeds) per point.
        backend: further options of the optical backend (e.g. ``compile``).
        max_batches: evaluate on at most this many batches.
    """

    presets: tuple[str, ...]
    photons: tuple[float, ...]
    bits: tuple[int, ...] = ()
    encodings: tuple[str, ...] = ()
    encoding: str = "offset"
    draws: int = 3
    backend: Mapping[str, Any] | None = None
    max_batches: Optional[int] = None

    def __post_init__(self) -> None:
        if not self.presets or not self.photons:
            raise ConfigError("the study needs at least one device preset and one light budget (study.evaluate)")
        if int(self.draws) < 1:
            raise ConfigError(f"study.evaluate.draws must be >= 1, got {self.draws}")
        bad = [p for p in self.photons if not (isinstance(p, (int, float)) and p > 0)]
        if bad:
            raise ConfigError(f"study.evaluate.photons must be positive numbers, got {bad}")

    def points(self) -> list[dict[str, Any]]:
        """``{axis, preset, encoding, bits, photons}`` of every point, without duplicates."""
        out, seen = [], set()

        def add(axis: str, preset: str, encoding: str, bits: Optional[int], photons: Optional[float]) -> None:
            photons = None if photons is None else float(photons)
            key = (preset, encoding, bits, photons)
            if key not in seen:
                seen.add(key)
                out.append({"axis": axis, "preset": preset, "encoding": encoding, "bits": bits, "photons": photons})

        for preset in self.presets:
            add("preset", preset, self.encoding, None, None)
        for preset in self.presets:
            for n in self.photons:
                add("light", preset, self.encoding, None, n)
        for b in self.bits:
            for n in self.photons:
                add("bits", self.presets[0], self.encoding, int(b), n)
        for enc in self.encodings:
            for n in self.photons:
                add("encoding", self.presets[0], enc, None, n)
        return out

    def spec(self, preset: str, encoding: str, bits: Optional[int], photons: Optional[float], seed: int) -> dict[str, Any]:
        """The optical backend of one point (``photons=None``: the preset's own light budget)."""
        device: dict[str, Any] = {"preset": preset}
        if photons is not None:
            device["light"] = {"photons": float(photons)}
        if bits is not None:
            device["camera"] = {"bits": int(bits)}
        return {**copy.deepcopy(dict(self.backend or {})), "name": "optical", "device": device, "encoding": encoding,
                "noise": ["device"], "seed": int(seed)}


@dataclass
class StudyRow:
    """One evaluated point of one network (accuracy over ``draws`` noise draws)."""

    model: str
    architecture: str
    regime: str
    axis: str
    preset: str
    encoding: str
    bits: Optional[int]
    photons: Optional[float]
    acc: float
    acc_std: float
    acc_min: float
    acc_max: float
    draws: int


def _accuracy(net: nn.Module, loader: Any, device: torch.device, max_batches: Optional[int]) -> float:
    score = evaluate({"net": net}, loader, device=device, max_batches=max_batches)["net"]
    if score.accuracy is None:
        raise ConfigError("the evaluation data have no labels the model can score (labels outside its classes?)")
    return score.accuracy


def _row(meta: Mapping[str, str], axis: str, preset: str, encoding: str, bits: Optional[int], photons: Optional[float],
         accs: Sequence[float]) -> StudyRow:
    return StudyRow(meta["model"], meta["architecture"], meta["regime"], axis, preset, encoding, bits, photons,
                    statistics.fmean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0, min(accs), max(accs),
                    len(accs))


def run_study(
    models: Mapping[str, tuple[nn.Module, Mapping[str, str]]],
    loader: Any,
    grid: StudyGrid,
    *,
    device: str = "cpu",
) -> list[StudyRow]:
    """Evaluate every network at every point of ``grid``.

    Args:
        models: ``{label: (network, {"model", "architecture", "regime"})}``; the networks' backends are
            replaced (pass copies to keep them).
        loader: labelled validation batches.
        grid: the points.
        device: evaluation device.

    Returns:
        Per network: a ``clean`` row (``direct``), a ``noise-free`` row per preset, then the grid's points.
    """
    dev = torch.device(device)
    rows: list[StudyRow] = []
    points = grid.points()
    for label, (net, meta) in models.items():
        net = net.to(dev).eval()
        set_backend(net, "direct")
        clean = _accuracy(net, loader, dev, grid.max_batches)
        rows.append(_row(meta, "clean", "direct", "-", None, None, [clean]))
        for preset in grid.presets:
            set_backend(net, grid.spec(preset, grid.encoding, None, None, 0))
            with noise_disabled(net):
                rows.append(_row(meta, "noise-free", preset, grid.encoding, None, None,
                                 [_accuracy(net, loader, dev, grid.max_batches)]))
        for p in points:
            accs = []
            for draw in range(int(grid.draws)):
                set_backend(net, grid.spec(p["preset"], p["encoding"], p["bits"], p["photons"], draw))
                accs.append(_accuracy(net, loader, dev, grid.max_batches))
            rows.append(_row(meta, p["axis"], p["preset"], p["encoding"], p["bits"], p["photons"], accs))
            log.info("%s %s %s %s bits=%s photons=%s: acc %.4f ± %.4f", label, p["axis"], p["preset"], p["encoding"],
                     p["bits"] or "preset", "preset" if p["photons"] is None else f"{p['photons']:g}", rows[-1].acc,
                     rows[-1].acc_std)
    return rows


def keep_threshold(rows: Sequence[StudyRow], model: str, preset: str, fraction: float = 0.95) -> Optional[float]:
    """The smallest light budget on the ``light`` axis from which ``model`` keeps ``fraction`` of its clean accuracy
    on ``preset`` (at that budget and every larger one); ``None`` when it never does."""
    clean = next((r.acc for r in rows if r.model == model and r.axis == "clean"), None)
    curve = sorted((r.photons, r.acc) for r in rows if r.model == model and r.axis == "light" and r.preset == preset)
    if clean is None or not curve:
        return None
    target = fraction * clean
    threshold = None
    for photons, acc in reversed(curve):
        if acc < target:
            break
        threshold = photons
    return threshold


def study_table(rows: Sequence[StudyRow], presets: Sequence[str], fraction: float = 0.95) -> list[dict[str, Any]]:
    """One row per network: clean accuracy, then per preset the accuracy at the preset's own light budget
    (mean ± std over the draws) and the light budget that keeps ``fraction`` of the clean accuracy."""
    out = []
    for model in dict.fromkeys(r.model for r in rows):
        first = next(r for r in rows if r.model == model)
        clean = next(r.acc for r in rows if r.model == model and r.axis == "clean")
        row: dict[str, Any] = {"model": model, "architecture": first.architecture, "regime": first.regime, "clean": clean}
        for preset in presets:
            own = next((r for r in rows if r.model == model and r.axis == "preset" and r.preset == preset), None)
            row[f"{preset} acc"] = None if own is None else f"{own.acc:.4f} ± {own.acc_std:.4f}"
            row[f"{preset} photons@{int(fraction * 100)}%"] = keep_threshold(rows, model, preset, fraction)
        out.append(row)
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if value < 10 else f"{value:g}"
    return str(value)


def _markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(cols))) + "|"]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_study(rows: Sequence[StudyRow], out_dir: str | Path, presets: Sequence[str], title: str,
                fraction: float = 0.95) -> dict[str, Path]:
    """``study.csv`` (every point), ``study.md`` (the summary and the points) and ``study.png`` (accuracy
    against light budget, a panel per preset plus the bit-depth and encoding panels, a line per network)."""
    out = Path(out_dir)
    paths = {"csv": out / "study.csv", "md": out / "study.md", "png": out / "study.png"}
    write_csv(paths["csv"], [asdict(r) for r in rows], list(asdict(rows[0])))
    summary = study_table(rows, presets, fraction)
    points = [{k: v for k, v in asdict(r).items() if k not in ("architecture", "regime")} for r in rows]
    atomic_write(paths["md"], f"# {title}\n\nLight budget (photons per pixel per frame at full scale) from which each "
                              f"network keeps {int(fraction * 100)}% of its clean accuracy (`-`: not within the "
                              f"budgets evaluated):\n\n{_markdown(summary)}\n## Every point\n\n{_markdown(points)}")
    _plot(rows, presets, paths["png"], title)
    return paths


def _plot(rows: Sequence[StudyRow], presets: Sequence[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, Any]] = [(f"{p} ({next((r.encoding for r in rows if r.axis == 'light'), '')})",
                                     lambda r, p=p: r.axis == "light" and r.preset == p) for p in presets]
    for value in sorted({r.bits for r in rows if r.axis == "bits"}):
        panels.append((f"{presets[0]}, {value}-bit camera", lambda r, v=value: r.axis == "bits" and r.bits == v))
    for enc in sorted({r.encoding for r in rows if r.axis == "encoding"}):
        panels.append((f"{presets[0]}, encoding {enc}", lambda r, e=enc: r.axis == "encoding" and r.encoding == e))
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.2 * nrows), dpi=110, squeeze=False, sharey=True)
    models = list(dict.fromkeys(r.model for r in rows))
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(models)}
    for ax, (name, keep) in zip(axes.flat, panels, strict=False):
        for m in models:
            pts = sorted((r.photons, r.acc, r.acc_std) for r in rows if r.model == m and keep(r))
            if not pts:
                continue
            xs, ys, es = zip(*pts, strict=True)
            ax.errorbar(xs, ys, yerr=es, marker="o", ms=3, capsize=2, color=colors[m], label=m)
            clean = next(r.acc for r in rows if r.model == m and r.axis == "clean")
            ax.axhline(0.95 * clean, color=colors[m], lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("photons / pixel / frame at full scale", fontsize=8)
        ax.grid(True, alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    axes[0][0].set_ylabel("validation accuracy")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{title}  (dotted: 95% of each network's clean accuracy; bars: std over noise draws)", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
