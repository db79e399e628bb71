"""Device groups for parallel trials and agents: ``--devices 0,1,2,3|auto`` and ``--parallel K``.

Each group is one ``CUDA_VISIBLE_DEVICES`` value; a trial (or ``wandb agent``) pinned to a group
sees only those GPUs, so ``trainer=gpu`` uses one and ``trainer=ddp`` (``devices: auto``) uses the
whole group. On a CPU-only machine the K processes share the cores, each with ``cores // K``
threads.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Optional

from ..errors import ConfigError

__all__ = ["DeviceGroups", "clean_env", "device_groups", "visible_gpus"]

#: environment variables that must not leak from the launching shell into trials
_PRIVATE_ENV = ("CONVSHARE_RUN_DIR", "LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")


def clean_env(base: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """``base`` (default ``os.environ``) without the rank and run-directory variables of a launching process."""
    return {k: v for k, v in (os.environ if base is None else base).items() if k not in _PRIVATE_ENV}


def visible_gpus() -> list[str]:
    """GPU ids this process may use: ``$CUDA_VISIBLE_DEVICES`` if set, else ``0..n-1`` (torch's count)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


class DeviceGroups:
    """``groups[i]`` is the ``CUDA_VISIBLE_DEVICES`` of slot ``i`` (``None``: CPU, no pinning).

    Args:
        groups: one entry per parallel slot.
        threads: threads per process on CPU (``None``: leave torch's default).
    """

    def __init__(self, groups: list[Optional[str]], threads: Optional[int] = None) -> None:
        self.groups, self.threads = groups, threads

    def __len__(self) -> int:
        return len(self.groups)

    def env(self, slot: int, base: Optional[Mapping[str, str]] = None) -> dict[str, str]:
        """The environment of a process in ``slot``: pinned GPUs, CPU thread share, no leaked rank variables."""
        env = clean_env(base)
        group = self.groups[slot]
        if group is not None:
            env["CUDA_VISIBLE_DEVICES"] = group
        elif self.threads is not None and "OMP_NUM_THREADS" not in env:
            env["OMP_NUM_THREADS"] = str(self.threads)
        return env

    def describe(self) -> str:
        if all(g is None for g in self.groups):
            share = f", {self.threads} threads each" if self.threads else ""
            return f"{len(self)} process(es) on the CPU{share}"
        return ", ".join(f"[{g}]" for g in self.groups)


def device_groups(devices: Optional[str], parallel: Optional[int], cpu_count: Optional[int] = None) -> DeviceGroups:
    """Split ``devices`` into ``parallel`` groups.

    Args:
        devices: ``None``/``"cpu"`` (no GPUs), ``"auto"`` (every visible GPU, else CPU) or ``"0,1,2,3"``.
        parallel: processes at once; default one per GPU (1 on CPU). With GPUs it must divide
            their number: ``0,1,2,3`` and ``--parallel 2`` give groups ``0,1`` and ``2,3``.
        cpu_count: cores to share on CPU (default ``os.cpu_count()``).

    Raises:
        ConfigError: malformed ids, duplicates, or a ``parallel`` that does not divide the GPUs.
    """
    if parallel is not None and parallel < 1:
        raise ConfigError(f"--parallel must be at least 1, got {parallel}")
    if devices in (None, "", "cpu"):
        gpus: list[str] = []
    elif devices == "auto":
        gpus = visible_gpus()
    else:
        gpus = [d.strip() for d in str(devices).split(",") if d.strip()]
        bad = [d for d in gpus if not d.isdigit()]
        if bad or len(set(gpus)) != len(gpus):
            raise ConfigError(f"--devices {devices!r}: give distinct GPU indices like 0,1,2,3 (or auto, or cpu)")
    if not gpus:
        k = parallel or 1
        cores = cpu_count or os.cpu_count() or 1
        return DeviceGroups([None] * k, threads=max(1, cores // k) if k > 1 else None)
    k = parallel or len(gpus)
    if len(gpus) % k:
        raise ConfigError(f"--parallel {k} does not divide the {len(gpus)} GPUs {','.join(gpus)}; "
                          f"use one of {[d for d in range(1, len(gpus) + 1) if len(gpus) % d == 0]}")
    size = len(gpus) // k
    return DeviceGroups([",".join(gpus[i * size:(i + 1) * size]) for i in range(k)])
