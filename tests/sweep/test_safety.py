"""Sweeps stay inside their directory, never rewrite a live sweep, and say what happened to a killed trial."""
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
from lightning_convshare.sweep.trials import stray_pids

from .conftest import state_of, trials_of


def test_a_sweep_name_cannot_reach_outside_its_directory(write_sweep, tmp_path, capsys):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    sweep = write_sweep({"x": {"values": [0.5]}}, name="../../victim")
    out = tmp_path / "a" / "b" / "s"
    assert main(["sweep", str(sweep), "--dir", str(out), "--wandb", "disabled"]) == 2
    assert "name '../../victim' must be one folder name" in capsys.readouterr().err
    assert not out.exists() and (victim / "keep.txt").read_text() == "precious"
    # a state.json edited to point a trial elsewhere is refused before anything is deleted
    grid = write_sweep({"x": {"values": [0.5]}, "epochs": {"value": 1}}, name="g")
    assert main(["sweep", str(grid), "--dir", str(tmp_path / "g"), "--wandb", "disabled"]) == 0
    state = state_of(tmp_path / "g")
    state["name"], state["trials"][0]["status"] = "../../../victim", "interrupted"
    (tmp_path / "g" / "state.json").write_text(json.dumps(state))
    assert main(["sweep", "--resume", str(tmp_path / "g")]) == 2
    assert "must be one folder name" in capsys.readouterr().err
    assert (victim / "keep.txt").read_text() == "precious"


def test_a_refused_resume_changes_nothing_of_the_live_sweep(write_sweep, tmp_path, capsys):
    grid = write_sweep({"x": {"values": [0.5]}, "epochs": {"value": 1}}, name="g")
    assert main(["sweep", str(grid), "--dir", str(tmp_path / "g"), "--wandb", "disabled", "--parallel", "1"]) == 0
    before = (tmp_path / "g" / "state.json").read_bytes()
    with SweepLock(tmp_path / "g"):  # another runner works on it
        assert main(["sweep", "--resume", str(tmp_path / "g"), "--parallel", "3"]) == 2
    assert "another runner" in capsys.readouterr().err
    assert (tmp_path / "g" / "state.json").read_bytes() == before


def test_a_wrongly_structured_state_is_a_clean_error(tmp_path, capsys):
    (tmp_path / "s").mkdir()
    for bad in ([], {"trials": [{"params": {}}]}, {"trials": [{"id": "../x", "params": {}}]},
                {"trials": [{"id": "t000", "params": {}, "status": "done"}]}):
        (tmp_path / "s" / "state.json").write_text(json.dumps(bad))
        assert main(["sweep", "--resume", str(tmp_path / "s")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err
    (tmp_path / "s" / "state.json").write_text("[]")
    with pytest.raises(ConfigError, match="not a sweep state"):
        SweepState.load(tmp_path / "s")


def test_stray_trials_are_found_by_their_resolved_path(tmp_path):
    run = tmp_path / "trials" / "t000" / "run"
    run.mkdir(parents=True)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "run.dir=trials/t000/run"], cwd=tmp_path)
    try:
        deadline = time.time() + 5
        while child.pid not in stray_pids(run) and time.time() < deadline:
            time.sleep(0.05)
        assert child.pid in stray_pids(run)  # relative on its command line, absolute here
        assert child.pid in stray_pids(tmp_path / "trials" / ".." / "trials" / "t000" / "run")
    finally:
        child.kill()
        child.wait()


@pytest.mark.slow
def test_a_killed_trial_says_so_and_continues_from_its_checkpoint_on_resume(write_sweep, tmp_path):
    command = ["${env}", "convshare", "train", "data=synthetic", "model.embed_dim=32", "model.depth=1", "logger=csv",
               "trainer.max_epochs=6", "data.num_train=512", "${args_no_hyphens}"]
    sweep = write_sweep({"seed": {"values": [0]}}, command=command, name="k")
    out = tmp_path / "s"
    runner = subprocess.Popen([sys.executable, "-m", "lightning_convshare", "sweep", str(sweep), "--dir", str(out),
                               "--wandb", "disabled"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = out / "trials" / "t000" / "k-t000"
    deadline = time.time() + 300
    while time.time() < deadline:
        rows = (run / "history.jsonl").read_text().splitlines() if (run / "history.jsonl").exists() else []
        if len(rows) >= 2 and (run / "checkpoints" / "last.ckpt").exists():
            break
        time.sleep(0.1)
    pid = trials_of(out)["t000"]["pid"]
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    deadline = time.time() + 3
    while os.path.exists(f"/proc/{pid}") and time.time() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}"), "the trial outlived its runner by seconds"
    assert not (run / "metrics.json").exists()

    assert main(["sweep", "--resume", str(out)]) == 0
    trial = trials_of(out)["t000"]
    assert trial["status"] == "finished" and trial["attempts"] == 2
    log = (out / "trials" / "t000" / "train.log").read_text()
    assert "trainer.ckpt_path=last" in log.splitlines()[0] and "Restoring states from the checkpoint" in log
    epochs = [json.loads(r)["epoch"] for r in (run / "history.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4, 5, 6], epochs  # the cut epochs once each
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 6


def test_a_trial_killed_by_a_signal_is_reported_as_killed(write_sweep, tmp_path):
    grid = write_sweep({"x": {"values": [0.5]}, "kill": {"value": 1}}, name="g")
    assert main(["sweep", str(grid), "--dir", str(tmp_path / "g"), "--wandb", "disabled"]) == 1  # a trial failed
    trial = trials_of(tmp_path / "g")["t000"]
    assert trial["status"] == "failed" and trial["returncode"] == -9
    assert trial["message"].startswith("killed by SIGKILL (out of memory?")
    assert "convshare sweep --resume" in trial["message"]
