"""Attention metrics during validation: the ``attention:`` and ``reference:`` config keys.

The callback takes part in a run when ``attention.enabled`` is true or ``reference.source`` is set;
otherwise no callback exists and attention is never recorded (the fused attention path runs, at
zero cost). When it takes part, on the validation epochs it is due:

* the trained model's own validation forward is recorded (no extra forward of the model);
* the frozen reference (eval mode, no gradients, never a submodule of the LightningModule, so it
  is not trained, checkpointed or seen by the optimiser) runs on the same batches every
  ``reference.every_n_epochs``, under the trainer's precision; its maps of each validation batch are
  kept (up to ``reference.cache_mb``) and reused while the batch and the reference are unchanged, so
  from the second validation epoch on the reference's forward is skipped (the same maps, so the same
  values);
* the metrics are logged as ``val/attn/<metric>``, ``val/attn/layer<l>/<metric>`` and
  ``val/attn/layer<l>/head<h>/<metric>`` (``val/attn/ref/...``: the reference's own statistics) to
  every logger (W&B, CSV), with a W&B table of per-layer values and ``attention/layers.csv`` in the
  run directory; the overall values also go through ``LightningModule.log`` (progress bar,
  ``trainer.callback_metrics`` and so ``metrics.json``), the reference's constant ones once per run;
* every ``attention.images.every_n_epochs`` a picture grid of fixed validation images (the first
  ones of the validation loader) is saved as ``attention/maps-epochNNN.png`` and logged as a
  ``wandb.Image``.

Nothing of this changes the trained model's results: the reference is loaded under a forked
random state, and validation-time forwards draw no random numbers.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only
from torch import nn
from torchmetrics import Metric

from ..errors import ConfigError
from ..layers import AttentionRecorder
from ..metrics import (
    AttentionScores,
    AttentionSimilarity,
    AttentionStatistics,
    TokenLayout,
    attention_grid,
    attention_pictures,
    load_reference,
    picture_kind,
    record_attention,
    save_figure,
    write_csv,
)

__all__ = ["AttentionMetricsCallback", "batch_fingerprint", "create_attention_callback"]

log = logging.getLogger(__name__)


def _network(pl_module: pl.LightningModule) -> nn.Module:
    """The timm backbone inside our LightningModule (``net``), or the module itself."""
    return getattr(pl_module, "net", pl_module)


def _on(metric: Metric, device: torch.device) -> Metric:
    """``metric`` on ``device``, moved only when it is elsewhere (``Metric.to`` walks every state, every batch)."""
    return metric if metric.device == device else metric.to(device)


def _images(batch: Any) -> torch.Tensor:
    return batch[0] if isinstance(batch, (list, tuple)) else batch


def batch_fingerprint(x: torch.Tensor) -> torch.Tensor:
    """What recognises a validation batch again: its shape, then three float64 sums of its values (plain,
    squared, and weighted by position), on its device. Two batches that differ anywhere give other sums
    except by a coincidence no real data produce."""
    v = x.detach().reshape(-1).double()
    position = torch.arange(1, v.numel() + 1, device=v.device, dtype=torch.float64).remainder_(9973).add_(1)
    shape = torch.tensor(list(x.shape), dtype=torch.float64, device=v.device)
    return torch.cat((shape, torch.stack((v.sum(), v.square().sum(), (v * position).sum()))))


def _weights_fingerprint(model: nn.Module) -> torch.Tensor:
    """The reference's weights and buffers as :func:`batch_fingerprint`s, one row per tensor."""
    return torch.stack([batch_fingerprint(t)[-3:].cpu() for t in model.state_dict().values() if t.is_floating_point()]
                       or [torch.zeros(3, dtype=torch.float64)])


class AttentionMetricsCallback(pl.Callback):
    """Records attention on validation batches, compares it with a frozen reference, logs metrics and pictures.

    Args:
        run_dir: where ``attention/`` goes (default: the trainer's ``default_root_dir``).
        reference: a frozen model (:func:`~lightning_convshare.metrics.load_reference`), or ``None``
            for the intrinsic metrics only.
        every_n_epochs: the model's intrinsic metrics every N validation epochs.
        reference_every_n_epochs: the reference forward and the similarity metrics every N epochs.
        per_head: also compute and log per-head values (``False``: per layer and overall only; cheaper).
        num_images: fixed validation images in the picture grid (0: no pictures).
        images_every_n_epochs: picture grid every N epochs.
        prefix: log-name prefix.
        reference_cache_mb: keep up to this many MiB of the reference's maps of validation batches and
            reuse them while a batch (recognised by :func:`batch_fingerprint`) and the reference's
            weights are unchanged; 0: run the reference on every batch.

    Epoch ``e`` (0-based) is due for "every N" when ``(e + 1) % N == 0`` and always in the last
    epoch of ``fit`` and in ``trainer.validate``; the sanity check is skipped.
    """

    def __init__(
        self,
        run_dir: Optional[str | Path] = None,
        reference: Optional[nn.Module] = None,
        *,
        every_n_epochs: int = 1,
        reference_every_n_epochs: int = 1,
        per_head: bool = False,
        num_images: int = 4,
        images_every_n_epochs: int = 10,
        prefix: str = "val/attn",
        reference_cache_mb: float = 256.0,
    ) -> None:
        for key, value in (("attention.every_n_epochs", every_n_epochs), ("reference.every_n_epochs", reference_every_n_epochs),
                           ("attention.images.every_n_epochs", images_every_n_epochs)):
            if int(value) < 1:
                raise ConfigError(f"{key} must be a positive number of epochs, got {value}")
        if int(num_images) < 0:
            raise ConfigError(f"attention.images.num must be >= 0, got {num_images}")
        try:
            cache_mb = float(reference_cache_mb)
        except (TypeError, ValueError):
            cache_mb = float("nan")
        if not cache_mb >= 0:
            raise ConfigError(f"reference.cache_mb must be a number of MiB >= 0 (0: no cache), got {reference_cache_mb!r}")
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.reference = reference
        self.every_n_epochs, self.reference_every_n_epochs = int(every_n_epochs), int(reference_every_n_epochs)
        self.per_head, self.prefix = bool(per_head), prefix
        self.num_images, self.images_every_n_epochs = int(num_images), int(images_every_n_epochs)
        self.stats: Optional[AttentionStatistics] = None
        self.similarity: Optional[AttentionSimilarity] = None
        self.ref_stats: Optional[AttentionStatistics] = None
        self._ref_values: Optional[dict[str, torch.Tensor]] = None  # frozen reference + fixed data: computed once
        self._recorder: Optional[AttentionRecorder] = None
        self._fixed: list[torch.Tensor] = []
        self._model_on = self._ref_on = False
        self._updates = 0
        self._ref_logged = False  # the reference's constant statistics went through LightningModule.log this run
        self.reference_cache_bytes = int(cache_mb * 2**20)
        self._ref_cache: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}  # batch -> (fingerprint, maps)
        self._ref_cache_size = 0  # bytes of the cached maps
        self._ref_weights: Optional[torch.Tensor] = None  # the reference's weights' fingerprint the cache is valid for
        self.reference_forwards = 0  # reference forwards run (the rest came from the cache)

    def monitor_prefixes(self) -> list[str]:
        """Its metrics (``val/attn/<metric>``), which ``checkpoint.monitor`` may name."""
        return [f"{self.prefix}/"]

    # ------------------------------------------------------------------ set-up
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        net = _network(pl_module)
        self._ref_logged = False  # each fit / validate starts with empty callback_metrics
        self.layout = TokenLayout.from_model(net)
        self.stats = AttentionStatistics.from_model(net)
        if self.reference is not None:
            self.similarity = AttentionSimilarity.from_models(net, self.reference, per_head=self.per_head)
            self.ref_stats = AttentionStatistics.from_model(self.reference)
            self.ref_layout = TokenLayout.from_model(self.reference)
            log.info("attention reference: %s, compared every %d epoch(s)", self.ref_layout.describe(),
                     self.reference_every_n_epochs)

    def _due(self, trainer: pl.Trainer, every: int) -> bool:
        if trainer.state.fn != "fit":
            return True
        epoch, last = trainer.current_epoch, trainer.max_epochs
        return (epoch + 1) % every == 0 or (last is not None and last > 0 and epoch + 1 >= last)

    def _reference_on(self, device: torch.device) -> nn.Module:
        ref = self.reference
        if next(ref.parameters()).device != device:
            ref.to(device)
        return ref

    # ------------------------------------------------------------------ per batch
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            self._model_on = self._ref_on = False
            return
        self._ref_on = self.reference is not None and self._due(trainer, self.reference_every_n_epochs)
        self._model_on = self._ref_on or self._due(trainer, self.every_n_epochs)
        self._updates = 0
        if self._ref_on and self._ref_cache:  # frozen, but a user may still load other weights into it
            weights = _weights_fingerprint(self.reference)
            if self._ref_weights is None or not torch.equal(weights, self._ref_weights):
                self._ref_cache.clear()
                self._ref_cache_size = 0

    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._model_on:
            self._recorder = AttentionRecorder(_network(pl_module))
            self._recorder.__enter__()

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        x = _images(batch)
        have = sum(len(t) for t in self._fixed)
        if not trainer.sanity_checking and have < self.num_images:
            self._fixed.append(x[: self.num_images - have].detach().cpu().clone())
        if self._recorder is None:
            return
        recorder, self._recorder = self._recorder, None
        recorder.__exit__(None, None, None)
        if not recorder.maps:
            log.warning("validation_step ran no forward of the recorded network; no attention metrics this batch")
            return
        maps = torch.stack(list(recorder.maps.values()), dim=1)  # B, L, H, N, N
        ref_maps = self._reference_maps(trainer, x, maps.device, (dataloader_idx, batch_idx)) if self._ref_on else None
        self.update_metrics(maps, ref_maps)
        self._updates += 1

    def _reference_maps(self, trainer: pl.Trainer, x: torch.Tensor, device: torch.device, key: tuple[int, int]) -> torch.Tensor:
        """The reference's maps of this batch: from the cache when the batch is the one cached under its
        index, else from a reference forward (then cached while the budget lasts)."""
        fingerprint = batch_fingerprint(x) if self.reference_cache_bytes else None
        found = self._ref_cache.get(key)
        if found is not None and found[0].device == fingerprint.device and torch.equal(found[0], fingerprint):
            return found[1]
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            _, ref_maps = record_attention(self._reference_on(device), x)
        self.reference_forwards += 1
        if fingerprint is not None:
            if found is not None:  # another batch under this index: its maps make room
                del self._ref_cache[key]
                self._ref_cache_size -= found[1].numel() * found[1].element_size()
            size = ref_maps.numel() * ref_maps.element_size()
            if self._ref_cache_size + size <= self.reference_cache_bytes:
                if not self._ref_cache:
                    self._ref_weights = _weights_fingerprint(self.reference)
                self._ref_cache[key] = (fingerprint, ref_maps)
                self._ref_cache_size += size
        return ref_maps

    def update_metrics(self, maps: torch.Tensor, ref_maps: Optional[torch.Tensor]) -> None:
        """Add one batch: the model's maps and, on reference epochs, the reference's (both ``B, L, H, N, N``)."""
        _on(self.stats, maps.device).update(maps)
        if ref_maps is not None:
            _on(self.similarity, maps.device).update(maps, ref_maps)
            if self._ref_values is None:
                _on(self.ref_stats, maps.device).update(ref_maps)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._recorder is not None:
            self._recorder.__exit__(None, None, None)
            self._recorder = None

    # ------------------------------------------------------------------ per epoch
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._model_on and self._updates:
            if self._ref_on and self._ref_values is None:
                self._ref_values = self.ref_stats.compute()
            scores = AttentionScores(
                similarity=self.similarity.compute() if self._ref_on else {},
                statistics=self.stats.compute(),
                reference=self._ref_values if self._ref_on else {},
            )
            scalars = scores.scalars(self.prefix, self.per_head)
            overall = {k: v for k, v in scalars.items() if "/layer" not in k}
            # overall values through Lightning (progress bar, callback_metrics, metrics.json); the many
            # per-layer and per-head values straight to the loggers in one call (self.log costs ~0.5 ms a key).
            # The reference's own statistics are constant (frozen reference, same images): through Lightning
            # once per run (callback_metrics keeps them to its end), to the loggers every reference epoch
            constant = {k: v for k, v in overall.items() if k.startswith(f"{self.prefix}/ref/")}
            if self._ref_logged:
                overall = {k: v for k, v in overall.items() if k not in constant}
            self._ref_logged = self._ref_logged or bool(constant)
            pl_module.log_dict(overall, on_step=False, on_epoch=True, sync_dist=False)
            self._publish(trainer, scores, {k: v for k, v in scalars.items() if k not in overall})
        for metric in (self.stats, self.similarity):
            if metric is not None:
                metric.reset()
        if not trainer.sanity_checking and self.num_images and self._fixed and self._due(trainer, self.images_every_n_epochs):
            self._draw(trainer, pl_module)

    def _dir(self, trainer: pl.Trainer) -> Path:
        return (self.run_dir or Path(trainer.default_root_dir)) / "attention"

    @rank_zero_only
    def _publish(self, trainer: pl.Trainer, scores: AttentionScores, detail: dict[str, float]) -> None:
        for lg in trainer.loggers:
            lg.log_metrics({**detail, "epoch": trainer.current_epoch}, step=trainer.global_step)
        rows = scores.layer_rows()
        write_csv(self._dir(trainer) / "layers.csv", [{"epoch": trainer.current_epoch, **r} for r in rows])
        columns = ["layer", *scores.columns()]
        for lg in trainer.loggers:
            if isinstance(lg, WandbLogger):
                lg.log_table(f"{self.prefix}/layers", columns=columns, data=[[r[c] for c in columns] for r in rows],
                             step=trainer.global_step)

    @rank_zero_only
    def _draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net = _network(pl_module)
        images = torch.cat(self._fixed)[: self.num_images]
        device = next(net.parameters()).device
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                _, maps = record_attention(net, images.to(device))
                ref_pics = None
                if self.reference is not None:
                    _, ref_maps = record_attention(self._reference_on(device), images.to(device))
                    ref_pics = attention_pictures(ref_maps, self.ref_layout).cpu()
        finally:
            net.train(was_training)
        epoch = trainer.current_epoch
        fig = attention_grid(images, attention_pictures(maps, self.layout).cpu(), ref_pics,
                             title=f"{picture_kind(self.layout)} (mean over heads), epoch {epoch}"
                             + (" | reference below" if ref_pics is not None else ""))
        path = save_figure(fig, self._dir(trainer) / f"maps-epoch{epoch:03d}.png")
        for lg in trainer.loggers:
            if isinstance(lg, WandbLogger):
                lg.log_image(f"{self.prefix}/maps", images=[str(path)], step=trainer.global_step, caption=[f"epoch {epoch}"])


def create_attention_callback(cfg: Any, run_dir: Optional[Path] = None) -> Optional[AttentionMetricsCallback]:
    """The callback for a composed config, or ``None`` when attention metrics are off.

    Raises:
        ConfigError: the reference cannot be loaded or a setting is invalid (before training starts).
    """
    att, ref = cfg.get("attention") or {}, cfg.get("reference") or {}
    source = ref.get("source")
    if not att.get("enabled", False) and not source:
        return None
    reference = None
    if source:
        reference = load_reference(str(source), ref.get("name"), **dict(ref.get("kwargs") or {}))
    images = att.get("images") or {}
    return AttentionMetricsCallback(
        run_dir, reference,
        every_n_epochs=att.get("every_n_epochs", 1), reference_every_n_epochs=ref.get("every_n_epochs", 1),
        per_head=att.get("per_head", False), num_images=images.get("num", 4),
        images_every_n_epochs=images.get("every_n_epochs", 10), reference_cache_mb=ref.get("cache_mb", 256),
    )

