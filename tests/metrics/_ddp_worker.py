"""Launched by tests/metrics/test_ddp.py: two CPU processes (gloo) update the attention metrics on
uneven shards of the same data; rank 0 saves the synchronised values (and its own, unsynchronised ones).

    python tests/metrics/_ddp_worker.py OUT.pt PORT
"""
from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_convshare.metrics import AttentionSimilarity, AttentionStatistics, TokenLayout

LAYOUT = TokenLayout(grid=(3, 4), patch_size=(4, 4), num_prefix=2, has_cls=True)
SHARDS = (slice(0, 4), slice(4, 10))  # uneven on purpose: 4 and 6 images


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    """The same 10 images' maps (B, L=2, H=3, N, N) for the model and the reference, in every process."""
    g = torch.Generator().manual_seed(11)
    n = LAYOUT.num_tokens
    return (3 * torch.randn(10, 2, 3, n, n, generator=g)).softmax(-1), (3 * torch.randn(10, 2, 3, n, n, generator=g)).softmax(-1)


def compute(a: torch.Tensor, r: torch.Tensor, batch: int = 3, **kwargs) -> dict[str, torch.Tensor]:
    """Metric values after updates of ``batch`` images at a time."""
    sim, stats = AttentionSimilarity(2, 3, LAYOUT, **kwargs), AttentionStatistics(2, 3, LAYOUT, **kwargs)
    for lo in range(0, len(a), batch):
        sim.update(a[lo:lo + batch], r[lo:lo + batch])
        stats.update(a[lo:lo + batch])
    return {**sim.compute(), **{f"stats/{k}": v for k, v in stats.compute().items()}}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    a, r = make_data()
    shard = SHARDS[rank]
    synced = compute(a[shard], r[shard])
    local = compute(a[shard], r[shard], sync_on_compute=False)
    if rank == 0:
        torch.save({"synced": synced, "local": local, "world": dist.get_world_size()}, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(_worker, args=(2, int(sys.argv[2]), sys.argv[1]), nprocs=2, join=True)
