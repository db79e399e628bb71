"""Per-layer attention in a sweep summary: each finished trial's last-epoch values per layer (its run's
``attention/layers.csv``), as ``layers.csv``, markdown tables and ``plots/layers_<quantity>.png``.

The plots use the summary's axes: a panel per value of the panels axis, a colour per value of the lines
axis, a line style per value of x, and the reference ViT's own statistic (``ref_<quantity>``, measured by
the trials on the same validation images) dashed black.
"""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from ..files import atomic_write
from .state import SweepState, Trial
from .summary import _axis_value, _hashable, _order

__all__ = ["LAYER_FILE", "LAYER_PLOTS", "draw_layers", "layer_rows", "layer_tables", "write_layer_csv"]

#: per-layer attention values of a run, written by lit/attention_callback.py (one row per epoch and layer)
LAYER_FILE = ("attention", "layers.csv")
#: per-layer quantities drawn (plots/layers_<q>.png) and tabulated in summary.md
LAYER_PLOTS = ("distance", "entropy", "cosine", "cka")


def layer_rows(state: SweepState, trial: Trial) -> list[dict[str, float]]:
    """The last epoch's per-layer attention values of a finished trial (its ``attention/layers.csv``)."""
    if trial.status not in ("finished", "stopped"):
        return []
    try:
        path = state.run_dir(trial).joinpath(*LAYER_FILE)
        rows = list(csv.DictReader(path.read_text().splitlines())) if path.is_file() else []
        last = max(int(r["epoch"]) for r in rows) if rows else None
        return [{k: (int(v) if k in ("epoch", "layer") else float(v)) for k, v in r.items() if v not in ("", None)}
                for r in rows if int(r["epoch"]) == last]
    except (OSError, ValueError, KeyError):
        return []  # a damaged file: the trial is still in the table, only not in the per-layer views


def write_layer_csv(state: SweepState, layers: dict[str, list[dict]], parameters: Sequence[str]) -> Path:
    by_id = {t.id: t for t in state.trials}
    metrics = list(dict.fromkeys(k for rows in layers.values() for r in rows for k in r if k not in ("epoch", "layer")))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["trial", *parameters, "epoch", "layer", *metrics])
    for tid, rows in layers.items():
        for r in rows:
            writer.writerow([tid, *[_hashable(by_id[tid].params.get(p)) for p in parameters], r["epoch"], r["layer"],
                             *[r.get(m, "") for m in metrics]])
    return atomic_write(state.dir / "layers.csv", buf.getvalue())


def layer_tables(state: SweepState, layers: dict[str, list[dict]], parameters: Sequence[str]) -> str:
    """Markdown: one table per :data:`LAYER_PLOTS` quantity, a row per trial (and the reference), a column per layer."""
    by_id = {t.id: t for t in state.trials}
    out = []
    for q in LAYER_PLOTS:
        have = {tid: {r["layer"]: r[q] for r in rows if q in r} for tid, rows in layers.items()}
        have = {tid: v for tid, v in have.items() if v}
        if not have:
            continue
        n = 1 + max(max(v) for v in have.values())
        head = ["trial", *[p.split(".")[-1] for p in parameters], *[f"layer {i}" for i in range(n)]]
        lines = [f"\nattention {q} per layer (last epoch):\n", "| " + " | ".join(head) + " |",
                 "|" + "---|" * (1 + len(parameters)) + "---:|" * n]
        for tid, v in have.items():
            cells = [f"{v[i]:.3f}" if i in v else "" for i in range(n)]
            lines.append("| " + " | ".join([tid, *[str(_hashable(by_id[tid].params.get(p))) for p in parameters], *cells]) + " |")
        ref = _reference_layers(layers, q)
        if ref:
            cells = [""] * len(parameters) + [f"{ref.get(i, float('nan')):.3f}" for i in range(n)]
            lines.append("| reference | " + " | ".join(cells) + " |")
        out.append("\n".join(lines) + "\n")
    return "".join(out)


def _reference_layers(layers: dict[str, list[dict]], quantity: str) -> dict[int, float]:
    """The reference's own per-layer statistic (``ref_<quantity>``), as the first trial that reports it measured it."""
    for rows in layers.values():
        ref = {r["layer"]: r[f"ref_{quantity}"] for r in rows if f"ref_{quantity}" in r}
        if ref:
            return ref
    return {}


def draw_layers(
    state: SweepState, layers: dict[str, list[dict]], quantity: str, keys: dict[str, Optional[str]]
) -> Optional[Path]:
    """``plots/layers_<quantity>.png``: the quantity per layer, a line per trial (colour: the lines axis, style: x),
    a panel per value of the panels axis, the reference dashed black."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_id = {t.id: t for t in state.trials}
    cache: dict = {}
    value = {tid: {a: _hashable(_axis_value(state, by_id[tid], k, cache)) if k else None for a, k in keys.items()}
             for tid in layers}
    curves = {tid: sorted((r["layer"], r[quantity]) for r in rows if quantity in r) for tid, rows in layers.items()}
    curves = {tid: c for tid, c in curves.items() if c}
    if not curves:
        return None
    panels, lines, xs = (_order([value[t][a] for t in curves]) for a in ("panels", "lines", "x"))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    ref = _reference_layers(layers, quantity)
    fig, axs = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 0.8, 3.8), sharey=True, squeeze=False)
    for ax, panel in zip(axs[0], panels, strict=True):
        for tid, c in curves.items():
            v = value[tid]
            if v["panels"] != panel:
                continue
            li, xi = lines.index(v["lines"]), xs.index(v["x"])
            label = ", ".join(f"{keys[a].split('.')[-1]}={v[a]}" for a, vals in (("lines", lines), ("x", xs))
                              if keys.get(a) and len(vals) > 1)
            ax.plot([p[0] for p in c], [p[1] for p in c], color=colors[li % len(colors)], ls=styles[xi % len(styles)],
                    marker=markers[xi % len(markers)], ms=4, label=label or tid)
        if ref:
            ax.plot(sorted(ref), [ref[k] for k in sorted(ref)], color="black", ls="--", lw=2, label="reference (vit)")
        ax.set_xlabel("layer")
        ax.set_xticks(sorted({p[0] for c in curves.values() for p in c}))
        if len(panels) > 1 and keys.get("panels"):
            ax.set_title(f"{keys['panels'].split('.')[-1]} = {panel}")
        ax.grid(alpha=0.3)
    axs[0][0].set_ylabel(f"attention {quantity}")
    handles, labels = [], []
    for ax in axs[0]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    ncol = max(1, min(len(labels), 3))
    rows = math.ceil(len(labels) / ncol)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, frameon=False, fontsize=8)
    fig.suptitle(f"{state.options.get('name', 'sweep')}: attention {quantity} per layer (last epoch)")
    fig.tight_layout(rect=(0, 0.02 + 0.06 * rows, 1, 1))
    out = state.dir / "plots" / f"layers_{quantity}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
