"""Overhead of the attention metrics on a validation epoch, measured side by side in one process.

Three kinds of validation epoch over the same batches (the validation split of the configured
data), interleaved round by round so machine noise hits them alike; medians over rounds:

  model only       the model's forward (fused attention): validation with the metrics off
  both forwards    the model and the frozen reference, both recording attention (the forwards
                   the feature needs), no metric
  both + metrics   the same plus the metric updates (similarity and the model's statistics) and
                   the epoch-end compute, flattening and logging

measured twice: as a bare loop of forwards (the metric maths against the bare forwards), and as
Lightning validation epochs (``trainer.validate`` with no callback, with the attention callback
doing only its forwards, and with the full callback; these with the reference cache off): the epoch a
user actually runs. The Lightning epochs add the callback as configured by default, whose reference
cache (``reference.cache_mb``) skips the reference's forward from the second epoch on.

The metric overhead is ``both + metrics`` over ``both forwards`` (target: at most +15%), reported two
ways: the ratio of the two epochs' medians over rounds, and the median over rounds of the ratio of the
two epochs of one round (paired: they run back to back, so a slow or fast phase of a shared machine
hits both alike). Wall time and process CPU time are both reported: on a shared machine, CPU time
with ``--threads 1`` is the steadier of the two (it does not count time the process waits for a core).

    python bench/attention.py                                   # default model vs a vit reference, CPU
    python bench/attention.py --model runs/a/checkpoints/last.ckpt --reference runs/vit/checkpoints/last.ckpt
    python bench/attention.py --per-head --rounds 9                # similarity per head too (H+1 times the cost)
    python bench/attention.py --device cuda --rounds 9 surgery.padding=same surgery.kernel_size=3
    python bench/attention.py --threads 1 --batches 2 model=vit_tiny data.img_size=224 data.batch_size=32
    python bench/attention.py --threads 1 --rounds 9 --tune-malloc    # glibc's allocator tuned, as bench/optics.py
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from lightning_convshare.config import compose
from lightning_convshare.lit.attention_callback import AttentionMetricsCallback
from lightning_convshare.lit.data import create_datamodule
from lightning_convshare.lit.factory import create_module
from lightning_convshare.lit.module import ConvShareClassifier
from lightning_convshare.metrics import (
    AttentionScores,
    AttentionSimilarity,
    AttentionStatistics,
    TokenLayout,
    load_reference,
    record_attention,
)
from lightning_convshare.models import ModelSpec, create_network


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def model_only(model, ref, batches, metrics) -> None:
    for x in batches:
        model(x)


def both_forwards(model, ref, batches, metrics) -> None:
    for x in batches:
        record_attention(model, x)
        record_attention(ref, x)


def both_and_metrics(model, ref, batches, metrics) -> None:
    similarity, stats = metrics
    for x in batches:
        _, maps = record_attention(model, x)
        _, ref_maps = record_attention(ref, x)
        stats.update(maps)
        similarity.update(maps, ref_maps)
    AttentionScores(similarity.compute(), stats.compute()).scalars()
    similarity.reset()
    stats.reset()


EPOCHS = {"model only": model_only, "both forwards": both_forwards, "both + metrics": both_and_metrics}
#: the Lightning epoch as a user runs it (reference.cache_mb default): from the second epoch on, the reference's
#: maps come from the cache instead of its forward (the same maps, so the same values)
CACHED = "metrics, reference cached"


class ForwardsOnly(AttentionMetricsCallback):
    """The callback's recording and reference forwards, without any metric work."""

    def update_metrics(self, maps, ref_maps) -> None:
        pass

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        pass


class EpochTimer(pl.Callback):
    """Wall and process CPU time from the validation-epoch-start hooks to the last validation-epoch-end hook."""

    def __init__(self) -> None:
        self.times: list[tuple[float, float]] = []

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.t0 = _clocks()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.times.append((time.perf_counter() - self.t0[0], time.process_time() - self.t0[1]))


def _table(title: str, med: dict[str, tuple[float, float]], images: int) -> Table:
    (wall0, cpu0) = med["both forwards"]
    table = Table(title=title)
    for col in ("epoch", "wall ms", "images/s", "vs both forwards", "CPU ms", "vs both forwards (CPU)"):
        table.add_column(col, justify="left" if col == "epoch" else "right")
    for name, (wall, cpu) in med.items():
        if name == PAIRED:
            continue
        table.add_row(name, f"{1000 * wall:.1f}", f"{images / wall:.0f}", f"{wall / wall0:.2f}x", f"{1000 * cpu:.1f}",
                      f"{cpu / cpu0:.2f}x")
    return table


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _medians(times: dict[str, list[tuple[float, float]]]) -> dict[str, tuple[float, float]]:
    return {n: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t)) for n, t in times.items()}


#: the paired estimate: for each round, ``both + metrics`` over the ``both forwards`` epoch run next to it
PAIRED = "paired"


def _with_paired(times: dict[str, list[tuple[float, float]]]) -> dict[str, tuple[float, float]]:
    """:func:`_medians`, plus under :data:`PAIRED` the medians over rounds of the per-round ratio
    ``both + metrics / both forwards`` (wall, CPU). The epochs of one round run back to back, so a slow or
    fast phase of a shared machine hits both alike; the ratio of the medians does not pair them."""
    out = _medians(times)
    pairs = list(zip(times["both + metrics"], times["both forwards"], strict=True))
    out[PAIRED] = tuple(statistics.median(full[i] / both[i] for full, both in pairs) for i in (0, 1))
    return out


def bare_loop(model, ref, batches, device, rounds: int, per_head: bool = True) -> dict[str, tuple[float, float]]:
    metrics = (AttentionSimilarity.from_models(model, ref, per_head=per_head).to(device),
               AttentionStatistics.from_model(model).to(device))
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in EPOCHS}
    with torch.inference_mode():
        for fn in EPOCHS.values():  # warm-up
            fn(model, ref, batches[:1], metrics)
        for _ in range(rounds):
            for name, fn in EPOCHS.items():
                _sync(device)
                wall, cpu = _clocks()
                fn(model, ref, batches, metrics)
                _sync(device)
                times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return _with_paired(times)


def lightning_epochs(
    module, ref, loader, device, rounds: int, batches: int | None = None, per_head: bool = True
) -> dict[str, tuple[float, float]]:
    tmp = tempfile.mkdtemp(prefix="bench-attention-")
    setups = {  # the reference cache off, so both forwards run every epoch; then as configured by default
        "model only": [],
        "both forwards": [ForwardsOnly(tmp, ref, num_images=0, reference_cache_mb=0)],
        "both + metrics": [AttentionMetricsCallback(tmp, ref, num_images=0, per_head=per_head, reference_cache_mb=0)],
        CACHED: [AttentionMetricsCallback(tmp, ref, num_images=0, per_head=per_head)],
    }
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    trainers, timers = {}, {}
    for name, callbacks in setups.items():
        timers[name] = EpochTimer()
        trainers[name] = pl.Trainer(accelerator=accelerator, devices=1, logger=False, enable_progress_bar=False,
                                    enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp,
                                    limit_val_batches=batches if batches is not None else 1.0,
                                    callbacks=[*callbacks, timers[name]])
    for _ in range(rounds + 1):  # the first round warms up
        for trainer in trainers.values():
            trainer.validate(module, dataloaders=loader, verbose=False)
    return _with_paired({name: timer.times[1:] for name, timer in timers.items()})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="run checkpoint of the model (default: a fresh model of the config)")
    p.add_argument("--reference", default=None, help="run checkpoint of the reference (default: a fresh `vit` of the config)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--batches", type=int, default=None, help="use only the first N validation batches")
    p.add_argument("--per-head", action="store_true", help="similarity per head too (attention.per_head=true; "
                   "default: the config's attention.per_head, false)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--tune-malloc", action="store_true", help="tune glibc's allocator as bench/optics.py does "
                   "(every epoch alike; convshare itself leaves glibc's defaults)")
    p.add_argument("overrides", nargs="*", help="config overrides for the fresh model and the data, e.g. data.batch_size=128")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tune_malloc:
        from optics import tune_malloc  # bench/optics.py, next to this script

        print(f"glibc allocator tuned: {tune_malloc()}")
    device = torch.device(args.device)
    cfg = compose(args.overrides)
    per_head = bool(args.per_head or cfg.attention.per_head)
    kwargs = ModelSpec.from_hparams(cfg.model).kwargs
    torch.manual_seed(0)
    module = ConvShareClassifier.load_from_checkpoint(args.model, map_location="cpu") if args.model else create_module(cfg)
    module.eval().to(device)
    ref = load_reference(args.reference) if args.reference else create_network(ModelSpec(cfg.model.name, kwargs)).model
    ref.eval().requires_grad_(False).to(device)
    dm = create_datamodule(OmegaConf.to_container(cfg.data, resolve=True))
    dm.setup("validate")
    loader = dm.val_dataloader()
    batches = [x.to(device) for i, (x, _) in enumerate(loader) if args.batches is None or i < args.batches]
    images = sum(len(x) for x in batches)
    where = f"{device}, {images} images in {len(batches)} batches, median of {args.rounds} interleaved rounds"
    console = Console()
    loop = bare_loop(module.net, ref, batches, device, args.rounds, per_head)
    console.print(_table(f"bare loop of forwards ({where})", loop, images))
    lit = lightning_epochs(module, ref, loader, device, args.rounds, args.batches, per_head)
    console.print(_table(f"Lightning validation epochs ({where})", lit, images))
    for title, med in (("bare loop", loop), ("Lightning validation epoch", lit)):
        for i, clock in enumerate(("wall", "CPU")):
            full, both, off = med["both + metrics"][i], med["both forwards"][i], med["model only"][i]
            print(f"{title} ({clock} time): metric overhead on an epoch that runs both forwards {100 * (full / both - 1):+.1f}% "
                  f"(ratio of medians), {100 * (med[PAIRED][i] - 1):+.1f}% (median of paired rounds) (target <= +15%); "
                  f"whole feature vs metrics off {full / off:.2f}x"
                  + (f"; with the reference cache (the default, second epoch on) {med[CACHED][i] / off:.2f}x"
                     if CACHED in med else ""))
    net = module.net
    print(f"model: {cfg.model.name} {TokenLayout.from_model(net).describe()}, dim {net.embed_dim}, depth {len(net.blocks)}, "
          f"heads {net.blocks[0].attn.num_heads}; surgery {module.surgery_report.variant}; "
          f"similarity {'per head and layer' if per_head else 'per layer'}; "
          f"torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
