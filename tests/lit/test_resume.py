"""Resuming an interrupted run continues it exactly: same directory, state, data order and W&B run."""
import csv
import json

import pytest
import pytorch_lightning as pl
import torch

from lightning_convshare.cli import main
from lightning_convshare.errors import ConfigError
from lightning_convshare.lit import callbacks as callback_module
from lightning_convshare.lit import run_training
from lightning_convshare.lit.distributed import independent_launch_name
from lightning_convshare.lit.resume import capture_rng, restore_rng, resume_checkpoint

DETERMINISTIC = ["trainer.deterministic=true", "trainer.max_epochs=3", "data.num_train=96", "data.batch_size=16",
                 "model.drop_path_rate=0.1"]  # drop path: the model itself draws random numbers while training


class Killed(RuntimeError):
    """Stands for the process dying (a kill, a node failure) in the middle of an epoch."""


class _Killer(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 3:
            raise Killed("killed mid-epoch")


def _state(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def _csv_epochs(run_dir):
    with (run_dir / "csv" / "metrics.csv").open() as f:
        return [int(float(r["epoch"])) for r in csv.DictReader(f) if r.get("val/acc")]


@pytest.mark.slow
def test_resume_after_a_mid_epoch_kill_ends_with_the_weights_of_an_uninterrupted_run(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    full = run_training(tiny_cfg(*DETERMINISTIC, "logger=default", f"run.dir={tmp_path / 'full'}"))
    cut = tmp_path / "cut"
    factories = callback_module.CALLBACK_FACTORIES
    monkeypatch.setattr(callback_module, "CALLBACK_FACTORIES", (*factories, lambda cfg, run_dir: _Killer()))
    with pytest.raises(Killed):
        run_training(tiny_cfg(*DETERMINISTIC, "logger=default", f"run.dir={cut}"))
    monkeypatch.setattr(callback_module, "CALLBACK_FACTORIES", factories)
    assert not (cut / "metrics.json").exists() and (cut / "checkpoints" / "last.ckpt").is_file()
    wandb_id = (cut / "wandb-run-id").read_text().strip()

    assert main(["train", "--resume", str(cut)]) == 0
    resumed, expected = _state(cut), _state(full.run_dir)
    assert resumed.keys() == expected.keys()
    assert all(torch.equal(resumed[k], expected[k]) for k in expected), "weights differ from the uninterrupted run"
    m, f = json.loads((cut / "metrics.json").read_text()), json.loads((full.run_dir / "metrics.json").read_text())
    assert m["epochs"] == f["epochs"] == 3 and m["val/acc"] == f["val/acc"] and m["val/loss"] == f["val/loss"]
    assert m["resumed_from"].endswith("last.ckpt") and m["wall_time_s"] > 0
    assert _csv_epochs(cut) == _csv_epochs(full.run_dir) == [0, 1, 2]  # appended, the cut epoch's rows not doubled
    assert (cut / "wandb-run-id").read_text().strip() == wandb_id  # one W&B run, resumed
    runs = sorted((cut / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(f"-{wandb_id}" in r.name for r in runs)  # two sessions of one W&B run


def test_a_run_directory_is_never_restarted_by_accident(tiny_cfg, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "data=synthetic", "logger=none", "model.depth=1", "model.embed_dim=32", "trainer.max_epochs=1",
                 f"run.dir={run}"]) == 0
    capsys.readouterr()
    assert main(["train", "data=synthetic", "logger=none", "model.depth=1", "model.embed_dim=32", f"run.dir={run}"]) == 2
    assert f"continue it with `convshare train --resume {run}`" in capsys.readouterr().err
    # trainer.ckpt_path (Lightning's own option) starts a new run from another run's training state
    other = tmp_path / "other"
    assert main(["train", "data=synthetic", "logger=csv", "model.depth=1", "model.embed_dim=32", "trainer.max_epochs=2",
                 f"trainer.ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"run.dir={other}"]) == 0
    metrics = json.loads((other / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and _csv_epochs(other) == [1]  # epoch 0 came from the checkpoint


def test_resume_paths_and_slurm_requeue(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name, step in (("checkpoints/last.ckpt", 10), ("hpc_ckpt_1.ckpt", 15)):
        torch.save({"global_step": step, "state_dict": {}}, run / name)
    assert resume_checkpoint(run, None, resume=True).path == run / "hpc_ckpt_1.ckpt"  # the newest
    assert resume_checkpoint(run, "last", resume=False) == (run / "checkpoints" / "last.ckpt", True, 10)
    with pytest.raises(ConfigError, match="already holds a run"):
        resume_checkpoint(run, None, resume=False)
    for key in [k for k in __import__("os").environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "convshare-ddp")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    # a requeued job: SLURM restarts the same command; Lightning saved hpc_ckpt_1.ckpt on SIGUSR1
    assert resume_checkpoint(run, None, resume=False).path == run / "hpc_ckpt_1.ckpt"
    assert independent_launch_name("convshare") == "convshare-slurm4242.0"  # the same run directory after requeue
    fresh = tmp_path / "fresh"
    assert resume_checkpoint(fresh, None, resume=True) == (None, True, 0)


def test_random_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    state = capture_rng()
    torch.save(state, tmp_path / "rng.pt")
    a = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
