"""``ConvShareClassifier``: the thin LightningModule that trains a (surgered) timm ViT."""
from __future__ import annotations

from typing import Any, Mapping, Optional

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from ..models import create_backbone
from .optim import create_optimizer, create_scheduler

__all__ = ["ConvShareClassifier"]


class ConvShareClassifier(pl.LightningModule):
    """Image classifier around ``create_backbone(model, surgery)``.

    The module orchestrates: one :meth:`model_step` for all stages, separate metric objects per
    stage, timm optimiser and per-step schedule. Model creation, surgery and optimisation live in
    their own modules; the constructor takes plain config mappings so a checkpoint rebuilds the
    exact network (``ConvShareClassifier.load_from_checkpoint(path)``).

    Args:
        model: ``{name, pretrained, **timm kwargs}`` (``num_classes`` required).
        surgery: surgery variant config (``{name: convshare, padding: ..., ...}``).
        optim: optimiser and schedule config (see :mod:`lightning_convshare.lit.optim`).
        loss: ``{label_smoothing}``.
    """

    def __init__(
        self,
        model: Mapping[str, Any],
        surgery: Mapping[str, Any] | str = "vit",
        optim: Optional[Mapping[str, Any]] = None,
        loss: Optional[Mapping[str, Any]] = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        kwargs = dict(model)
        name = kwargs.pop("name")
        self.net, self.surgery_report = create_backbone(name, surgery, **kwargs)
        num_classes = int(kwargs["num_classes"])
        self.criterion = nn.CrossEntropyLoss(label_smoothing=float((loss or {}).get("label_smoothing", 0.0)))
        self.optim_cfg = dict(optim or {"name": "adamw", "lr": 1e-3})
        # top-1 accuracy over samples (torchmetrics' default would be the macro average over classes)
        self.train_acc, self.val_acc, self.test_acc = (MulticlassAccuracy(num_classes, average="micro") for _ in range(3))
        self.train_loss, self.val_loss, self.test_loss = (MeanMetric() for _ in range(3))
        # hooks that surgery variants expose (castling: mask regulariser and branch schedule);
        # plain lists, so the modules are not registered twice
        self._aux_modules = [m for m in self.net.modules() if callable(getattr(m, "aux_loss", None))]
        self._progress_modules = [m for m in self.net.modules() if callable(getattr(m, "on_progress", None))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def model_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self(x)
        return self.criterion(logits, y), logits, y

    def _shared_step(self, batch: Any, stage: str) -> torch.Tensor:
        loss, logits, y = self.model_step(batch)
        loss_metric, acc = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_acc")
        loss_metric(loss, weight=y.numel())
        acc(logits, y)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss_metric, on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=True)
        if on_step:
            self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=False)
        return loss

    def aux_loss(self) -> Optional[torch.Tensor]:
        """Sum of the regularisers that surgery variants expose via ``module.aux_loss()`` (None if none)."""
        if not self._aux_modules:
            return None
        return torch.stack([m.aux_loss() for m in self._aux_modules]).sum()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._progress_modules:
            progress = self.global_step / max(int(self.trainer.estimated_stepping_batches), 1)
            for m in self._progress_modules:
                m.on_progress(progress)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self._shared_step(batch, "train")
        aux = self.aux_loss()
        if aux is not None:
            self.log("train/aux_loss", aux.detach(), on_step=False, on_epoch=True)
            loss = loss + aux
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = create_optimizer(self.net, self.optim_cfg)
        total = int(self.trainer.estimated_stepping_batches)
        epochs = max(int(self.trainer.max_epochs or 1), 1)
        scheduler = create_scheduler(optimizer, self.optim_cfg, total, max(total // epochs, 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The weights are in the checkpoint: rebuilding it must not reload a pretrained source."""
        model = dict(checkpoint.get("hyper_parameters", {}).get("model") or {})
        if "checkpoint" in model or model.get("pretrained"):
            model.pop("checkpoint", None)
            checkpoint["hyper_parameters"] = {**checkpoint["hyper_parameters"], "model": {**model, "pretrained": False}}

    def lr_scheduler_step(self, scheduler: Any, metric: Any = None) -> None:
        scheduler.step_update(num_updates=self.global_step)  # timm schedulers step by update count
