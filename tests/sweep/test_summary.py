"""Sweep summaries (tables, plot data, W&B upload) and the training side of a trial (history, STOP)."""
import json

import pytest
import yaml

from lightning_convshare.lit import run_training
from lightning_convshare.lit.loggers import log_report
from lightning_convshare.sweep import SweepState, summarize
from lightning_convshare.sweep.summary import plot_series
from lightning_convshare.trial_protocol import HISTORY_FILE, STOP_FILE, TRIAL_ENV


def _state(tmp_path):
    """Kernel x padding swept; heads not swept but different per trial config (read from config.yaml)."""
    state = SweepState.create(tmp_path / "s", {"name": "fake", "axes": None})
    rows = [  # padding, kernel, heads, status, val/acc, attention similarity
        ("valid", 3, 2, "finished", 0.90, 0.8), ("valid", "full", 2, "finished", 0.95, 0.9),
        ("same", 3, 2, "finished", 0.70, 0.3), ("same", 1, 2, "invalid", None, None),
        ("valid", 3, 4, "finished", 0.85, 0.7), ("same", 3, 4, "failed", None, None),
    ]
    for padding, kernel, heads, status, acc, attn in rows:
        trial = state.new_trial({"surgery.padding": padding, "surgery.kernel_size": kernel})
        trial.status = status
        if acc is not None:
            trial.metrics = {"val/acc": acc, "val/attn/cka": attn, "params": 6958}
        state.trial_dir(trial).mkdir(parents=True)
        (state.trial_dir(trial) / "config.yaml").write_text(yaml.safe_dump({"model": {"num_heads": heads}}))
    state.save()
    return state


def test_summary_table_is_sorted_by_the_metric_and_plots_metric_and_attention(tmp_path):
    state = _state(tmp_path)
    summary = summarize(state, {"name": "val/acc", "goal": "maximize"}, ["surgery.padding", "surgery.kernel_size"])
    assert summary.columns[:5] == ["trial", "status", "surgery.padding", "surgery.kernel_size", "val/acc"]
    assert "val/attn/cka" in summary.columns
    assert [r[4] for r in summary.rows] == [0.95, 0.90, 0.85, 0.70, None, None]
    assert [r[1] for r in summary.rows][-2:] == ["failed", "invalid"]
    md = summary.markdown.read_text().splitlines()
    assert md[2].startswith("| t001 | finished | valid | full | 0.9500 |") and "6,958" in md[2]
    assert [p.name for p in summary.plots] == ["val_acc.png", "val_attn_cka.png"]
    pivot = md[md.index("val/acc by surgery.kernel_size (columns), model.num_heads and surgery.padding (rows):") + 1:]
    assert pivot[:7] == ["", "| num_heads | padding | 1 | 3 | full |", "|---|---|---:|---:|---:|",
                         "| 2 | valid |  | 0.9000 | 0.9500 |", "| 2 | same | invalid | 0.7000 |  |",
                         "| 4 | valid |  | 0.8500 |  |", ""]  # (heads 4, same: failed only -> no row)
    series = plot_series(state, state.trials, "val/acc", ["surgery.padding", "surgery.kernel_size"],
                         {"x": "surgery.kernel_size", "lines": "surgery.padding", "panels": "model.num_heads"})
    assert series.xs == [1, 3, "full"] and series.panels == [2, 4] and series.lines == ["valid", "same"]
    assert series.points[2]["valid"] == [(3, 0.90), ("full", 0.95)] and series.points[4]["valid"] == [(3, 0.85)]
    assert series.invalid[2]["same"] == [1] and series.points[4]["same"] == []  # failed trials are not drawn
    summary = summarize(state, {"name": "val/acc", "goal": "minimize"}, ["surgery.padding"])
    assert [r[3] for r in summary.rows][:4] == [0.70, 0.85, 0.90, 0.95]


def test_a_sweep_over_presets_is_plotted_against_the_presets(tmp_path):
    """None of the default axes swept (variants.yaml sweeps `surgery`): one column per preset, no merged cells."""
    state = SweepState.create(tmp_path / "s", {"name": "fake", "axes": None})
    for surgery, kernel, acc in [("vit", None, 0.98), ("castling", None, 0.97), ("same_k3", 3, 0.93), ("cvt", 3, 0.99)]:
        trial = state.new_trial({"surgery": surgery})
        trial.status, trial.metrics = "finished", {"val/acc": acc}
        state.trial_dir(trial).mkdir(parents=True)
        (state.trial_dir(trial) / "config.yaml").write_text(yaml.safe_dump({"surgery": {"kernel_size": kernel}}))
    state.save()
    md = summarize(state, {"name": "val/acc", "goal": "maximize"}, ["surgery"]).markdown.read_text().splitlines()
    pivot = md[md.index("val/acc by surgery (columns):") + 1:]
    assert pivot[1:4] == ["| vit | castling | same_k3 | cvt |", "|---:|---:|---:|---:|",
                          "| 0.9800 | 0.9700 | 0.9300 | 0.9900 |"]


@pytest.mark.slow
def test_summary_goes_to_wandb_as_a_table_and_images(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    state = _state(tmp_path)
    summary = summarize(state, {"name": "val/acc", "goal": "maximize"}, ["surgery.padding", "surgery.kernel_size"])
    run_dir = log_report(mode="offline", directory=tmp_path / "w", name="fake-summary", job_type="sweep-summary",
                         table="sweep/summary", columns=summary.columns, rows=summary.rows,
                         images={f"sweep/{p.stem}": p for p in summary.plots}, group="fake")
    files = {p.name for p in (tmp_path / "w").rglob("*") if p.is_file()}
    assert run_dir and any(n.endswith(".wandb") for n in files)
    assert any(n.startswith("summary_") and n.endswith(".table.json") for n in files)
    assert sum(n.endswith(".png") for n in files) == 2
    assert log_report(mode="disabled", directory=tmp_path / "x", name="n", job_type="j", table="t", columns=[], rows=[]) is None


def test_trial_callback_writes_history_and_stops_on_request(tiny_cfg, tmp_path, monkeypatch):
    """(Without STOP, tests/sweep/test_end_to_end.py sees one history row per epoch.)"""
    monkeypatch.setenv(TRIAL_ENV, "1")
    run = tmp_path / "run"
    run.mkdir()
    (run / STOP_FILE).touch()  # the runner asked this trial to stop (hyperband): it ends after this epoch
    result = run_training(tiny_cfg("trainer.max_epochs=3", f"run.dir={run}"))
    history = [json.loads(line) for line in (run / HISTORY_FILE).read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1]
    assert all("val/acc" in h and "train/loss" in h for h in history)
    assert history[-1]["val/acc"] == pytest.approx(result.metrics["val/acc"])
    assert json.loads((run / "metrics.json").read_text())["epochs"] == len(history)
