"""Sweep summaries: one table of all trials (CSV + markdown, sorted by the sweep metric) and plots.

The plots show a quantity (the sweep metric, and every ``val/attn/*`` attention-similarity metric
the trials report) against kernel size, one line per padding, one panel per head count. The three
axes are config keys (``surgery.kernel_size``, ``surgery.padding``, ``model.num_heads`` by default)
read from each trial's composed config, so they work whether or not a key was swept. An axis whose
key does not vary takes a swept parameter that does and is on no other axis (the one with the most
values becomes x, then lines, then panels), so trials that differ never share a point:
``sweeps/paper_grid.yaml`` (padding x sharing x placement) is drawn with placement on x, a line per
padding and a panel per sharing. A sweep that sweeps none of the default keys (e.g. ``surgery``
presets) is plotted against its own swept keys.
"""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..files import atomic_write
from .state import SweepState, Trial

__all__ = ["DEFAULT_AXES", "PlotSeries", "Summary", "format_cell", "plot_axes", "plot_series", "summarize"]

DEFAULT_AXES = {"x": "surgery.kernel_size", "lines": "surgery.padding", "panels": "model.num_heads"}
METRIC_COLUMNS = ("val/acc", "val/acc_best", "val/loss", "params", "epochs", "wall_time_s")
ATTN_PREFIX = "val/attn/"
MAX_ATTN_PLOTS = 8


@dataclass
class Summary:
    """What :func:`summarize` wrote."""

    columns: list[str]
    rows: list[list[Any]]
    csv: Path
    markdown: Path
    plots: list[Path]


def _lookup(config: Any, key: str) -> Any:
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _trial_config(state: SweepState, trial: Trial) -> dict[str, Any]:
    import yaml

    for path in (state.trial_dir(trial) / "config.yaml", state.run_dir(trial) / "config.yaml"):
        if path.is_file():
            try:
                return yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError:
                continue
    return {}


def _axis_value(state: SweepState, trial: Trial, key: Optional[str], cache: dict) -> Any:
    if key is None:  # an unused axis
        return None
    if key in trial.params:
        return trial.params[key]
    if trial.id not in cache:
        cache[trial.id] = _trial_config(state, trial)
    return _lookup(cache[trial.id], key)


def format_cell(column: str, value: Any) -> str:
    """How a summary cell reads: 4 decimals for metrics, 1 for seconds, thousands separators for counts."""
    if value is None:
        return ""
    if isinstance(value, float) and column.endswith("_s"):
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 1000:
        return f"{value:,}"
    return str(value)


def _sort_key(goal: str, metric: Optional[str]):
    order = {"finished": 0, "stopped": 1, "failed": 2, "invalid": 3, "interrupted": 4, "running": 5, "pending": 6}

    def key(trial: Trial):
        value = trial.metrics.get(metric) if metric else None
        has = isinstance(value, (int, float)) and math.isfinite(value)
        signed = (-value if goal == "maximize" else value) if has else 0.0
        return (not has, signed, order.get(trial.status, 9), trial.id)

    return key


def plot_axes(parameters: Sequence[str], axes: Optional[dict[str, str]] = None) -> dict[str, Optional[str]]:
    """The plot axes: ``axes`` over :data:`DEFAULT_AXES`; when those are the defaults and none of them is
    swept (a sweep over whole ``surgery`` presets, say), the swept keys themselves, in order, as x,
    lines and panels, so that trials which differ never share a cell."""
    merged: dict[str, Optional[str]] = {**DEFAULT_AXES, **(axes or {})}
    if merged == DEFAULT_AXES and parameters and not set(parameters) & set(DEFAULT_AXES.values()):
        merged = {a: (parameters[i] if i < len(parameters) else None) for i, a in enumerate(("x", "lines", "panels"))}
    return merged


def summarize(state: SweepState, metric: Optional[dict[str, str]], parameters: Sequence[str],
              axes: Optional[dict[str, str]] = None) -> Summary:
    """Write ``summary.csv``, ``summary.md`` and ``plots/*.png`` into the sweep directory, and, when the trials
    recorded attention, ``layers.csv`` and the per-layer tables and plots (:mod:`.layer_summary`).

    Args:
        state: the sweep's state.
        metric: ``{"name", "goal"}`` of the sweep (rows are sorted by it; ``None`` keeps trial order).
        parameters: the swept keys (one column each).
        axes: ``{"x", "lines", "panels"}`` config keys of the plots (default :data:`DEFAULT_AXES`).
    """
    name, goal = (metric["name"], metric["goal"]) if metric else (None, "maximize")
    trials = sorted(state.trials, key=_sort_key(goal, name))
    attn = sorted({k for t in trials for k in t.metrics if k.startswith(ATTN_PREFIX)})
    metric_cols = [c for c in dict.fromkeys([*([name] if name else []), *METRIC_COLUMNS, *attn])
                   if any(c in t.metrics for t in trials) or c == name]
    columns = ["trial", "status", *parameters, *metric_cols, "trial_s", "message"]
    rows = []
    for t in trials:
        message = (t.message or "").strip().splitlines()
        rows.append([t.id, t.status, *[t.params.get(p) for p in parameters], *[t.metrics.get(c) for c in metric_cols],
                     None if t.wall_s is None else round(t.wall_s, 1), message[-1] if message else ""])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([[("" if v is None else v) for v in r] for r in rows])
    csv_path, md_path = state.dir / "summary.csv", state.dir / "summary.md"
    atomic_write(csv_path, buf.getvalue())
    quantities = [q for q in [name, *attn[:MAX_ATTN_PLOTS]] if q]
    axes = plot_axes(parameters, axes)
    series = [s for q in quantities if (s := plot_series(state, state.trials, q, parameters, axes))]  # sweep order
    from .layer_summary import LAYER_PLOTS, draw_layers, layer_rows, layer_tables, write_layer_csv

    layers = {t.id: found for t in state.trials if (found := layer_rows(state, t))}
    atomic_write(md_path, _markdown(columns, rows) + "".join(_pivot(s) for s in series)
                 + layer_tables(state, layers, parameters))
    plots = [_draw(state, s) for s in series]
    if layers:
        write_layer_csv(state, layers, parameters)
        keys = series[0].keys if series else axes  # the same axes as the other plots
        plots += [p for q in LAYER_PLOTS if (p := draw_layers(state, layers, q, keys))]
    return Summary(columns, rows, csv_path, md_path, plots)


def _markdown(columns: list[str], rows: list[list[Any]]) -> str:
    def cell(c: str, v: Any) -> str:
        text = format_cell(c, v).replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= 90 else text[:87] + "..."

    numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) for i in range(len(columns))]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(cell(c, v) for c, v in zip(columns, r, strict=True)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _order(values: Sequence[Any]) -> list[Any]:
    """Distinct values: numbers ascending, then everything else in first-seen order (``full`` last)."""
    distinct = list(dict.fromkeys(_hashable(v) for v in values))
    nums = sorted(v for v in distinct if isinstance(v, (int, float)) and not isinstance(v, bool))
    return nums + [v for v in distinct if v not in nums]


def _hashable(value: Any) -> Any:
    """Plot and table labels: scalars as they are, lists as ``[attn, mlp]``, anything else as ``str``."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(_hashable(v)) for v in value) + "]"
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)


@dataclass
class PlotSeries:
    """What one plot shows: ``points[panel][line]`` is ``[(x, mean value)]`` in x order.

    Attributes:
        keys: the config keys of ``x``, ``lines`` and ``panels`` actually used.
        xs, lines, panels: their values in display order.
        points: finished (and early-stopped) trials, averaged per (panel, line, x).
        invalid: ``invalid[panel][line]``: x values whose configuration was impossible.
    """

    quantity: str
    keys: dict[str, str]
    xs: list[Any]
    lines: list[Any]
    panels: list[Any]
    points: dict[Any, dict[Any, list[tuple[Any, float]]]]
    invalid: dict[Any, dict[Any, list[Any]]]

    @property
    def scatter(self) -> bool:
        """Many numeric x values (random/bayes searches): points instead of lines."""
        return all(isinstance(x, (int, float)) for x in self.xs) and len(self.xs) > 8


def plot_series(state: SweepState, trials: Sequence[Trial], quantity: str, parameters: Sequence[str],
                axes: dict[str, str]) -> Optional[PlotSeries]:
    """The data of the plot of ``quantity`` (``None`` when nothing can be plotted)."""
    cache: dict = {}
    value = {t.id: {a: _hashable(_axis_value(state, t, k, cache)) for a, k in axes.items()} for t in trials}
    keys = dict(axes)
    # an axis whose key does not vary takes a swept parameter that does and is on no axis yet: the one with the
    # most values becomes x, the next lines, the next panels (paper_grid: x targets, lines padding, panels shared)
    fixed = [a for a in ("x", "lines", "panels") if len(_order([v[a] for v in value.values()])) < 2]
    spare = sorted((p for p in parameters if p not in keys.values() and len(_order([t.params.get(p) for t in trials])) > 1),
                   key=lambda p: -len(_order([t.params.get(p) for t in trials])))
    for axis, key in zip(fixed, spare, strict=False):
        keys[axis] = key
        for t in trials:
            value[t.id][axis] = _hashable(t.params.get(key))
    if len(_order([v["x"] for v in value.values()])) < 2:
        return None
    done = [t for t in trials if t.status in ("finished", "stopped") and isinstance(t.metrics.get(quantity), (int, float))]
    if not done:
        return None
    xs, lines, panels = (_order([value[t.id][a] for t in trials]) for a in ("x", "lines", "panels"))
    points: dict = {p: {ln: [] for ln in lines} for p in panels}
    invalid: dict = {p: {ln: [] for ln in lines} for p in panels}
    for x in xs:
        for panel in panels:
            for line in lines:
                at = [t for t in trials if value[t.id] == {"x": x, "lines": line, "panels": panel}]
                got = [t.metrics[quantity] for t in at if t in done]
                if got:
                    points[panel][line].append((x, sum(got) / len(got)))
                if any(t.status == "invalid" for t in at):
                    invalid[panel][line].append(x)
    return PlotSeries(quantity, keys, xs, lines, panels, points, invalid)


def _pivot(series: PlotSeries) -> str:
    """The plot as a table: one row per (panel, line), one column per x; ``invalid`` where impossible."""
    if series.scatter:
        return ""
    keys = series.keys
    by = [a for a in ("panels", "lines") if getattr(series, a) != [None]]  # axes that exist in the configs
    rows_by = " and ".join(keys[a] for a in by)
    head = [*[keys[a].split(".")[-1] for a in by], *[str(x) for x in series.xs]]
    lines = [f"\n{series.quantity} by {keys['x']} (columns)" + (f", {rows_by} (rows)" if by else "") + ":\n",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(by) + "---:|" * len(series.xs)]
    for panel in series.panels:
        for line in series.lines:
            got = dict(series.points[panel][line])
            cells = [format_cell(series.quantity, got[x]) if x in got else
                     ("invalid" if x in series.invalid[panel][line] else "") for x in series.xs]
            labels = [str(v) for a, v in (("panels", panel), ("lines", line)) if a in by]
            if any(cells):
                lines.append("| " + " | ".join([*labels, *cells]) + " |")
    return "\n".join(lines) + "\n"


def _draw(state: SweepState, series: PlotSeries) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, keys = series, series.keys
    fig, axs = plt.subplots(1, len(s.panels), figsize=(4.2 * len(s.panels) + 0.8, 3.4 + 0.3 * len(s.lines)),
                            sharey=True, squeeze=False)
    for ax, panel in zip(axs[0], s.panels, strict=True):
        for line in s.lines:
            pts = s.points[panel][line]
            label = f"{keys['lines'].split('.')[-1]}={line}" if len(s.lines) > 1 else None
            pos = [p[0] if s.scatter else s.xs.index(p[0]) for p in pts]
            if s.scatter:
                handle = ax.scatter(pos, [p[1] for p in pts], label=label, s=18)
                color = handle.get_facecolor()[0]
            else:
                (handle,) = ax.plot(pos, [p[1] for p in pts], marker="o", label=label)
                color = handle.get_color()
            bad = s.invalid[panel][line]
            if bad and not s.scatter:  # impossible configurations: a cross on the x axis, in the line's colour
                ax.plot([s.xs.index(x) for x in bad], [0.03] * len(bad), "x", color=color, markersize=8, mew=2,
                        transform=ax.get_xaxis_transform(), label="invalid (not trained)")
        if not s.scatter:
            ax.set_xticks(range(len(s.xs)), [str(x) for x in s.xs])
        elif max(s.xs) > 20 * min(s.xs) > 0:
            ax.set_xscale("log")
        ax.set_xlabel(keys["x"])
        if len(s.panels) > 1:
            ax.set_title(f"{keys['panels'].split('.')[-1]} = {panel}")
        ax.grid(alpha=0.3)
    axs[0][0].set_ylabel(s.quantity)
    handles, labels = [], []
    for ax in axs[0]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    ncol = max(1, min(len(labels), 2 * len(s.panels)))
    legend_rows = math.ceil(len(labels) / ncol) if labels else 0
    if labels:
        fig.legend(handles, labels, loc="lower center", ncol=ncol, frameon=False)
    fig.suptitle(f"{state.options.get('name', 'sweep')}: {s.quantity}")
    fig.tight_layout(rect=(0, 0.02 + 0.075 * legend_rows, 1, 1))
    out = state.dir / "plots" / f"{s.quantity.replace('/', '_')}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
