"""`convshare sweep` with real `convshare train` trials on synthetic data."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lightning_convshare.cli import main
from lightning_convshare.sweep import SweepState
from lightning_convshare.sweep.summary import plot_series

from .conftest import state_of, trials_of

TINY = ["data=synthetic", "model.embed_dim=32", "model.depth=1", "trainer.max_epochs=2"]  # 4x8 token maps


def _command(*extra):
    return ["${env}", "convshare", "train", *TINY, *extra, "${args_no_hyphens}"]


@pytest.mark.slow
def test_2x2x1_grid_runs_in_parallel_with_offline_wandb_and_summarises(write_sweep, tmp_path):
    sweep = write_sweep({"surgery.padding": {"values": ["valid", "same"]}, "surgery.kernel_size": {"values": ["full", 3]},
                         "model.num_heads": {"values": [2]}}, command=_command())
    out = tmp_path / "s"
    assert main(["sweep", str(sweep), "--dir", str(out), "--parallel", "2"]) == 0
    trials = trials_of(out)
    by = {(t["params"]["surgery.padding"], t["params"]["surgery.kernel_size"]): t for t in trials.values()}
    # valid padding cannot make 32 outputs from 3x3 kernels on a 4x8 map: invalid, checked in-process
    bad = by[("valid", 3)]
    assert bad["status"] == "invalid" and bad["attempts"] == 0 and bad["validate_s"] is not None
    assert bad["message"].startswith("blocks.0.attn.") and "Kernel sizes that work here" in bad["message"]
    assert not (out / "trials" / bad["id"] / "train.log").exists()  # no process was started for it
    for key in [("valid", "full"), ("same", "full"), ("same", 3)]:
        t = by[key]
        run = out / "trials" / t["id"] / f"t-{t['id']}"  # named <sweep name>-<trial id>
        assert t["status"] == "finished" and t["returncode"] == 0
        assert json.loads((run / "metrics.json").read_text())["val/acc"] == t["metrics"]["val/acc"]
        assert len((run / "history.jsonl").read_text().splitlines()) == 2  # one row per epoch
        assert list((run / "wandb").glob("offline-run-*")), "trials log to W&B offline"
    first, second = by[("valid", "full")], by[("same", "full")]
    assert first["started"] < second["ended"] and second["started"] < first["ended"], "--parallel 2 ran them together"

    rows = (out / "summary.csv").read_text().splitlines()[1:]
    accs = [float(r.split(",")[5]) for r in rows[:3]]
    assert accs == sorted(accs, reverse=True) and rows[3].split(",")[1] == "invalid"
    assert (out / "summary.md").read_text().count("| finished |") == 3
    assert (out / "plots" / "val_acc.png").read_bytes()[:4] == b"\x89PNG"
    state = SweepState.load(out)
    series = plot_series(state, state.trials, "val/acc", list(state_of(out)["trials"][0]["params"]), state.options["axes"])
    assert (series.xs, series.lines, series.panels) == ([3, "full"], ["valid", "same"], [2])
    assert series.invalid[2]["valid"] == [3] and [x for x, _ in series.points[2]["same"]] == [3, "full"]


@pytest.mark.slow
def test_killed_runner_resumes_and_every_trial_completes_exactly_once(write_sweep, tmp_path):
    # t000 ends long before t001, so the runner is killed while t001 certainly still trains
    sweep = write_sweep({"trainer.max_epochs": {"values": [1, 40, 2]}}, command=_command("logger=csv"))
    out = tmp_path / "s"
    cmd = [sys.executable, "-m", "lightning_convshare", "sweep", str(sweep), "--dir", str(out), "--parallel", "2",
           "--wandb", "disabled"]
    runner = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:
        statuses = [t["status"] for t in state_of(out)["trials"]] if (out / "state.json").exists() else []
        if "finished" in statuses and "running" in statuses:
            break
        time.sleep(0.1)
    runner.send_signal(signal.SIGKILL)  # no chance to clean up: the state says "running"
    runner.wait()
    killed = trials_of(out)
    done = {i for i, t in killed.items() if t["status"] == "finished"}
    cut = {i for i, t in killed.items() if t["status"] == "running"}
    assert done and cut
    mtimes = {i: (out / "trials" / i / f"t-{i}" / "metrics.json").stat().st_mtime_ns for i in done}

    assert main(["sweep", "--resume", str(out)]) == 0
    trials = trials_of(out)
    assert len(trials) == 3 and all(t["status"] == "finished" for t in trials.values())
    for i, t in trials.items():
        assert t["attempts"] == (2 if i in cut else 1)
        logs = sorted((out / "trials" / i).glob("train*.log"))
        completed = sum("convshare train: summary" in p.read_text() for p in logs)
        assert completed == 1, f"{i} completed {completed} times ({[p.name for p in logs]})"
    for i in done:  # finished before the kill: untouched by the resume
        assert (out / "trials" / i / f"t-{i}" / "metrics.json").stat().st_mtime_ns == mtimes[i]
    assert not any(os.path.exists(f"/proc/{t['pid']}") for t in killed.values() if t["pid"]), "orphaned trials"
