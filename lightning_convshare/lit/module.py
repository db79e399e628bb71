"""``ConvShareClassifier``: the thin LightningModule that trains a (surgered) timm ViT it receives."""
from __future__ import annotations

from typing import Any, Mapping, Optional

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from ..errors import ConfigError
from ..models import ModelSpec, create_network
from ..surgery import SurgeryReport
from .optim import create_optimizer, create_scheduler

__all__ = ["ConvShareClassifier"]


class ConvShareClassifier(pl.LightningModule):
    """Image classifier around a network built elsewhere (``create_network(spec)``).

    The module orchestrates: one :meth:`model_step` for all stages, separate metric objects per
    stage, timm optimiser and per-step schedule. It receives its network, as
    lightning-hydra-template's ``MNISTLitModule(net=...)`` does; its hyperparameters keep the
    network's spec (``model``, ``surgery``) so that ``ConvShareClassifier.load_from_checkpoint(path)``
    rebuilds the exact network (backend and noise included) and loads the weights into it.

    Args:
        net: the network (``create_network(spec).model``); ``None`` builds it from ``model`` and
            ``surgery`` without any weights, which is what ``load_from_checkpoint`` does.
        model: ``{name, **timm kwargs}`` of the network (``num_classes`` required).
        surgery: its surgery config (``{name: convshare, padding: ..., ...}``).
        optim: optimiser and schedule config (see :mod:`lightning_convshare.lit.optim`).
        loss: ``{label_smoothing}``.
        report: the surgery report of ``net`` (logged by the surgery-report callback).
    """

    def __init__(
        self,
        net: Optional[nn.Module] = None,
        *,
        model: Mapping[str, Any],
        surgery: Mapping[str, Any] | str = "vit",
        optim: Optional[Mapping[str, Any]] = None,
        loss: Optional[Mapping[str, Any]] = None,
        report: Optional[SurgeryReport] = None,
    ) -> None:
        super().__init__()
        spec = ModelSpec.from_hparams(model, surgery)
        self.save_hyperparameters({"model": spec.model_hparams(), "surgery": spec.surgery,
                                   "optim": dict(optim) if optim is not None else None,
                                   "loss": dict(loss) if loss is not None else None})
        if net is None:
            net, report = create_network(spec)
        self.net = net
        self.surgery_report = report
        if spec.num_classes is None:
            raise ConfigError(f"model {spec.name} needs num_classes (set data.num_classes)")
        num_classes = spec.num_classes
        self.criterion = nn.CrossEntropyLoss(label_smoothing=float((loss or {}).get("label_smoothing", 0.0)))
        self.optim_cfg = dict(optim or {"name": "adamw", "lr": 1e-3})
        # top-1 accuracy over samples (torchmetrics' default would be the macro average over classes)
        self.train_acc, self.val_acc, self.test_acc = (MulticlassAccuracy(num_classes, average="micro") for _ in range(3))
        self.train_loss, self.val_loss, self.test_loss = (MeanMetric() for _ in range(3))
        # hooks that surgery variants expose (castling: mask regulariser and branch schedule);
        # plain lists, so the modules are not registered twice
        self._aux_modules = [m for m in self.net.modules() if callable(getattr(m, "aux_loss", None))]
        self._progress_modules = [m for m in self.net.modules() if callable(getattr(m, "on_progress", None))]

    def monitor_keys(self) -> set[str]:
        """The metrics this module logs every epoch (what ``checkpoint.monitor`` may name)."""
        keys = {f"{stage}/{metric}" for stage in ("train", "val") for metric in ("acc", "loss")}
        return keys | ({"train/aux_loss"} if self._aux_modules else set())

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

    def lr_scheduler_step(self, scheduler: Any, metric: Any = None) -> None:
        scheduler.step_update(num_updates=self.global_step)  # timm schedulers step by update count
