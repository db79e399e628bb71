"""Distributed-training helpers: exact evaluation sharding and a run directory all ranks agree on.

Lightning launches the extra ranks of ``strategy=ddp`` itself (they inherit ``CONVSHARE_RUN_DIR``
from rank 0). ``torchrun`` and SLURM (``srun``) start every rank independently instead, so each
rank derives the same run name from the launcher's job identity, through Lightning's own cluster
environments (:class:`~lightning_fabric.plugins.environments.TorchElasticEnvironment`,
:class:`~lightning_fabric.plugins.environments.SLURMEnvironment`).
"""
from __future__ import annotations

import os
from typing import Optional, Sized

import torch.distributed as dist
from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import Dataset, Sampler

from ..errors import ConfigError

__all__ = ["eval_sampler", "independent_launch_name", "launched_by_lightning"]


def eval_sampler(dataset: Dataset) -> Optional[Sampler]:
    """A sampler that gives every evaluation sample to exactly one rank, or ``None`` on one process.

    Lightning's default ``DistributedSampler`` pads the last round with repeated samples so that
    all ranks see equally many; for validation and test that counts some samples twice. Lightning's
    ``UnrepeatedDistributedSampler`` shards ``range(len(dataset))`` as ``rank::world_size`` instead
    (ranks may differ by one sample, which is safe for evaluation: no collective runs per batch),
    and the torchmetrics states summed across ranks then equal one process's.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    if not isinstance(dataset, Sized):
        return None  # iterable datasets shard themselves
    return UnrepeatedDistributedSampler(dataset, num_replicas=dist.get_world_size(), rank=dist.get_rank(), shuffle=False)


def launched_by_lightning() -> bool:
    """True in the extra ranks that Lightning's DDP launcher started on this node (``LOCAL_RANK > 0``)."""
    try:
        return int(os.environ.get("LOCAL_RANK", "0") or 0) > 0
    except ValueError:
        return False


def independent_launch_name(prefix: str) -> Optional[str]:
    """A run name every rank computes identically when ranks are started independently.

    Returns ``<prefix>-slurm<job>[_<array task>].<step>`` for a SLURM batch step (a requeued job keeps
    its id, so it finds its run directory and Lightning's ``hpc_ckpt`` again, and resumes from it),
    ``<prefix>-torchrun-<rdzv id>`` under ``torchrun``, and ``None`` for a single process or
    Lightning's own launcher.

    Raises:
        ConfigError: torchrun without a rendezvous id, where ranks cannot agree on a name.
    """
    if TorchElasticEnvironment.detect() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
        if run_id in ("", "none"):
            raise ConfigError(
                "torchrun started this run without a rendezvous id, so its ranks cannot agree on a run directory: "
                "pass --rdzv-id=<job name> (or --standalone) to torchrun, or set run.dir=... or run.name=..."
            )
        return f"{prefix}-torchrun-{run_id}"
    if SLURMEnvironment.detect():  # one task or many: a requeued job must find its run directory again
        job = os.environ.get("SLURM_ARRAY_JOB_ID")
        job = f"{job}_{os.environ.get('SLURM_ARRAY_TASK_ID')}" if job else SLURMEnvironment.job_id()
        return f"{prefix}-slurm{job}.{os.environ.get('SLURM_STEP_ID', '0')}"
    return None
