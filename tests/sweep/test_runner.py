"""The local sweep runner with a stand-in training program (fake_train.py): search, statuses, stop, resume."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lightning_convshare.cli import main
from lightning_convshare.errors import ConfigError
from lightning_convshare.sweep import SweepState
from lightning_convshare.sweep.state import SweepLock

from .conftest import state_of, trials_of


def test_statuses_messages_and_summary(write_sweep, tmp_path, capsys):
    sweep = write_sweep({"x": {"values": [0.2, 0.9]}, "bad": {"values": [0, 1]}, "crash": {"values": [0, 1]}})
    rc = main(["sweep", str(sweep), "--dir", str(tmp_path / "s"), "--parallel", "2", "--wandb", "disabled"])
    assert rc == 1  # a trial failed
    trials = list(trials_of(tmp_path / "s").values())
    assert len(trials) == 8
    by = {(t["params"]["x"], t["params"]["bad"], t["params"]["crash"]): t for t in trials}
    assert {t["status"] for k, t in by.items() if k[1] == 1} == {"invalid"}
    assert by[(0.2, 1, 0)]["message"] == "fake: this combination cannot work; try bad=0"
    crashed = by[(0.9, 0, 1)]
    assert crashed["status"] == "failed" and crashed["returncode"] == 1
    assert "RuntimeError: fake crash in epoch 2" in crashed["message"] and crashed["message"].startswith("exit status 1")
    best = by[(0.9, 0, 0)]
    assert best["status"] == "finished" and best["metrics"]["val/acc"] == pytest.approx(0.9 * 1.05)
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, os.cpu_count() // 2))  # 2 trials share the cores
    assert best["metrics"]["env"] == {"CUDA_VISIBLE_DEVICES": None, "OMP_NUM_THREADS": threads, "WANDB_MODE": "disabled"}
    # the summary: sorted by the sweep metric, failures and invalid trials at the bottom
    lines = (tmp_path / "s" / "summary.csv").read_text().splitlines()
    assert lines[0].startswith("trial,status,x,bad,crash,val/acc") and "val/attn/similarity" in lines[0]
    assert [ln.split(",")[1] for ln in lines[1:]] == ["finished", "finished"] + ["failed"] * 2 + ["invalid"] * 4
    assert lines[1].split(",")[2] == "0.9"
    md = (tmp_path / "s" / "summary.md").read_text()
    table = md.split("\n\n")[0].splitlines()
    assert len(table) == 10 and "fake crash in epoch 2" in md
    # none of the default plot keys is swept: the swept keys are the axes (x, lines, panels)
    assert ("val/acc by x (columns), crash and bad (rows):\n\n| crash | bad | 0.2 | 0.9 |\n|---|---|---:|---:|\n"
            "| 0 | 0 | 0.2100 | 0.9450 |\n| 0 | 1 | invalid | invalid |\n| 1 | 1 | invalid | invalid |\n") in md
    plots = sorted(p.name for p in (tmp_path / "s" / "plots").iterdir())
    assert plots == ["val_acc.png", "val_attn_similarity.png"]
    assert (tmp_path / "s" / "plots" / "val_acc.png").read_bytes()[:4] == b"\x89PNG"


def test_ctrl_c_stops_trials_and_resume_runs_only_the_cut_off_ones(write_sweep, tmp_path):
    ledger = tmp_path / "ledger.txt"
    sweep = write_sweep({"x": {"values": [0.1, 0.2, 0.3, 0.4]}, "epochs": {"value": 8}, "sleep": {"value": 0.25}})
    env = {**os.environ, "FAKE_LEDGER": str(ledger)}
    cmd = [sys.executable, "-m", "lightning_convshare", "sweep", str(sweep), "--dir", str(tmp_path / "s"),
           "--parallel", "2", "--wandb", "disabled"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        if (tmp_path / "s" / "state.json").exists():
            trials = state_of(tmp_path / "s")["trials"]
            statuses = [t["status"] for t in trials]
            if statuses.count("finished") >= 1 and statuses.count("running") >= 1:
                break
        time.sleep(0.05)
    pids = [t["pid"] for t in trials if t["status"] == "running"]
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    trials = trials_of(tmp_path / "s")
    assert "running" not in [t["status"] for t in trials.values()], "state left inconsistent"
    cut = {i for i, t in trials.items() if t["status"] == "interrupted"}
    done = {i for i, t in trials.items() if t["status"] == "finished"}
    assert cut and done, trials
    for pid in pids:  # the trials' processes are gone
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    before = {i: (tmp_path / "s" / "trials" / i / f"t-{i}" / "metrics.json").stat().st_mtime_ns for i in done}

    os.environ["FAKE_LEDGER"] = str(ledger)
    try:
        assert main(["sweep", "--resume", str(tmp_path / "s")]) == 0
    finally:
        del os.environ["FAKE_LEDGER"]
    trials = trials_of(tmp_path / "s")
    assert [t["status"] for t in trials.values()] == ["finished"] * 4
    assert {i for i, t in trials.items() if t["attempts"] == 2} == cut
    for i in done:  # finished trials were not touched
        assert (tmp_path / "s" / "trials" / i / f"t-{i}" / "metrics.json").stat().st_mtime_ns == before[i]
    completions = [ln.split()[1] for ln in ledger.read_text().splitlines() if ln.startswith("done")]
    assert sorted(completions) == sorted(trials), "every trial must complete exactly once"
    assert (tmp_path / "s" / "trials" / sorted(cut)[0] / "train.attempt1.log").is_file()


def test_hyperband_stops_the_weak_trials_which_keep_their_metrics(write_sweep, tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    sweep = write_sweep({"x": {"values": [0.1, 0.2, 0.3, 0.4]}, "epochs": {"value": 12}, "sleep": {"value": 0.3}},
                        early_terminate={"type": "hyperband", "min_iter": 2, "eta": 2})
    # 4 "GPUs": 4 trials at once, each pinned to its own device through CUDA_VISIBLE_DEVICES
    assert main(["sweep", str(sweep), "--dir", str(tmp_path / "s"), "--devices", "0,1,2,3", "--wandb", "disabled"]) == 0
    trials = {t["params"]["x"]: t for t in trials_of(tmp_path / "s").values()}
    assert sorted(t["devices"] for t in trials.values()) == ["0", "1", "2", "3"]
    assert all(t["metrics"]["env"]["CUDA_VISIBLE_DEVICES"] == t["devices"] for t in trials.values())
    assert trials[0.1]["status"] == "stopped" and trials[0.1]["stop_requested"]
    assert trials[0.1]["metrics"]["epochs"] < 12  # stopped early, still wrote its metrics
    assert trials[0.4]["status"] == "finished" and trials[0.4]["metrics"]["epochs"] == 12
    assert "stopped" in (tmp_path / "s" / "summary.csv").read_text()


def test_random_and_bayes_use_wandb_search_reproducibly(write_sweep, tmp_path):
    params = {"x": {"distribution": "uniform", "min": 0.1, "max": 0.9}, "epochs": {"value": 2}, "sleep": {"value": 0.0}}
    xs = {}
    for method, d in (("random", "a"), ("random", "b"), ("bayes", "c")):
        sweep = write_sweep(params, name=method, method=method, run_cap=3)
        assert main(["sweep", str(sweep), "--dir", str(tmp_path / d), "--wandb", "disabled", "--seed", "3", "--count", "3"]) == 0
        trials = list(trials_of(tmp_path / d).values())
        assert len(trials) == 3 and all(t["status"] == "finished" for t in trials)
        xs[d] = [t["params"]["x"] for t in trials]
        assert len(set(xs[d])) == 3 and all(0.1 <= x <= 0.9 for x in xs[d])
    assert xs["a"] == xs["b"]  # seeded: the same suggestions again (and after a resume)


def test_endless_methods_need_a_cap_and_directories_are_not_reused(write_sweep, tmp_path, capsys):
    sweep = write_sweep({"x": {"min": 0.1, "max": 0.9}}, method="random")
    assert main(["sweep", str(sweep), "--dir", str(tmp_path / "r"), "--wandb", "disabled"]) == 2
    assert "set run_cap" in capsys.readouterr().err
    grid = write_sweep({"x": {"values": [0.5]}, "epochs": {"value": 1}}, name="g")
    assert main(["sweep", str(grid), "--dir", str(tmp_path / "g"), "--wandb", "disabled"]) == 0
    assert main(["sweep", str(grid), "--dir", str(tmp_path / "g"), "--wandb", "disabled"]) == 2
    assert "convshare sweep --resume" in capsys.readouterr().err
    with SweepLock(tmp_path / "g"), pytest.raises(ConfigError, match="another runner"):
        with SweepLock(tmp_path / "g"):
            pass
    assert json.loads((tmp_path / "g" / "state.json").read_text())["trials"][0]["status"] == "finished"
    assert SweepState.load(tmp_path / "g").count("finished") == 1
