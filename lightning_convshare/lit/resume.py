"""Continuing an interrupted run exactly: which checkpoint to continue from, and the state Lightning does not keep.

Lightning's checkpoints hold the weights, the optimiser and LR-schedule state, the loops' progress and
the callbacks' state; :class:`ResumeState` adds what an exact continuation also needs: the global random
generators (Python, NumPy, torch CPU and CUDA: the data order, the augmentations and dropout of the next
epochs draw from them), every physical 4f backend's noise streams, and the training time so far. It
saves them with every checkpoint and puts them back when a resumed fit loads its checkpoint, so a run
resumed from the checkpoint of epoch ``k`` continues as if it had never stopped (on a
deterministic set-up: ``trainer.deterministic=true``, one process, the same machine).

:func:`resume_checkpoint` decides where a run continues from: ``--resume`` (the run directory's
newest checkpoint), ``trainer.ckpt_path`` (Lightning's own option: a file, or ``last``), or, for a job
that SLURM requeued after preemption, the ``hpc_ckpt_*.ckpt`` Lightning saved on ``SIGUSR1``.
"""
from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any, NamedTuple, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.environments import SLURMEnvironment

from ..errors import ConfigError
from ..optics import load_noise_state, noise_state

__all__ = ["ResumeState", "Resumption", "capture_rng", "restore_rng", "resume_checkpoint"]

log = logging.getLogger(__name__)
KEY = "convshare_resume"


def capture_rng() -> dict[str, Any]:
    """The global random generators' states, as plain data (tensors, ints and floats)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": int(version), "internal": list(internal), "gauss": gauss},
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the states :func:`capture_rng` returned."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


class ResumeState(pl.Callback):
    """Saves the random and noise state and the training time with every checkpoint; restores them on resume."""

    def __init__(self) -> None:
        self.started = time.time()
        self.previous_seconds = 0.0

    @property
    def wall_time_s(self) -> float:
        """Training time of the run so far, over all its sessions (up to their last checkpoints)."""
        return self.previous_seconds + time.time() - self.started

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[KEY] = {"rng": capture_rng(), "noise": noise_state(pl_module), "wall_time_s": self.wall_time_s}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(KEY)
        if state is None:
            log.warning("the checkpoint holds no random state (written by an older version): the run continues, "
                        "but its data order and noise differ from an uninterrupted run")
            return
        self.previous_seconds = float(state.get("wall_time_s", 0.0))
        # now: a resumed fit creates its first epoch's data iterator (which draws the data order) before any
        # epoch hook, and nothing between here and there draws random numbers
        restore_rng(state["rng"])
        load_noise_state(pl_module, state["noise"])


class Resumption(NamedTuple):
    """Where a run continues from: ``path`` (``None``: a fresh start) and whether it is this run
    directory's own checkpoint (``in_place``: logs are continued, the W&B run is resumed)."""

    path: Optional[Path]
    in_place: bool
    global_step: int = 0


def _step(path: Path) -> int:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise ConfigError(f"cannot read checkpoint {path} to resume from: {type(e).__name__}: {str(e)[:200]}") from None
    step = ckpt.get("global_step") if isinstance(ckpt, dict) else None
    if not isinstance(step, int):
        raise ConfigError(f"{path} is not a Lightning training checkpoint (no global_step); resume needs the "
                          "last.ckpt of a convshare run")
    return step


def _newest(paths: list[Path]) -> Optional[Path]:
    paths = [p for p in paths if p.is_file()]
    return max(paths, key=_step) if paths else None


def resume_checkpoint(run_dir: Path, ckpt_path: Optional[str], resume: bool) -> Resumption:
    """The checkpoint a run continues from.

    Args:
        run_dir: the run directory.
        ckpt_path: ``trainer.ckpt_path`` (a file, ``last`` for this run's ``last.ckpt``, or ``None``).
        resume: ``convshare train --resume``: continue this run directory from its newest checkpoint
            (``last.ckpt`` or a SLURM ``hpc_ckpt_*.ckpt``); a fresh start when it has none yet.

    Raises:
        ConfigError: a checkpoint that does not exist or is not a training checkpoint, or a run directory
            that already holds a run when neither ``--resume`` nor ``trainer.ckpt_path`` is given.
    """
    own = [run_dir / "checkpoints" / "last.ckpt", *sorted(run_dir.glob("hpc_ckpt_*.ckpt"))]
    if ckpt_path:
        path = own[0] if str(ckpt_path) == "last" else Path(str(ckpt_path)).expanduser()
        if not path.is_file():
            raise ConfigError(f"trainer.ckpt_path={ckpt_path}: {path} does not exist")
        in_place = path.resolve().is_relative_to(run_dir.resolve())
        return Resumption(path, in_place, _step(path))
    requeued = SLURMEnvironment.detect() and any(p.is_file() for p in own[1:])
    if resume or requeued:
        path = _newest(own)
        if path is None:
            log.warning("%s has no checkpoint yet: the run starts again from epoch 0 in the same directory", run_dir)
            return Resumption(None, True)
        log.info("resuming %s from %s", run_dir, path)
        return Resumption(path, True, _step(path))
    if own[0].is_file():
        raise ConfigError(f"{run_dir} already holds a run ({own[0]} exists): continue it with "
                          f"`convshare train --resume {run_dir}`, or choose another run.dir / run.name")
    return Resumption(None, False)
