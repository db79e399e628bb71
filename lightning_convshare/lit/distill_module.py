"""The LightningModule of fine-tuning into ConvShare form with knowledge distillation from a frozen teacher.

:class:`DistillClassifier` is a :class:`~lightning_convshare.lit.module.ConvShareClassifier` whose
network (the *student*, a pretrained ViT converted by the surgery) and frozen *teacher* (by default
the same pretrained ViT, unconverted) are built outside it and handed in. The losses are plain
torch (:mod:`lightning_convshare.conversion.distill`), as is progressive block replacement
(:mod:`lightning_convshare.conversion.progressive`); this module orchestrates them: training
steps, logging, the conversion schedule and a checkpoint that any run can read. Validation and
test report plain cross-entropy and accuracy, comparable with any other run.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any, Optional

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from ..conversion import (
    ATTN_LOSSES,
    BlockRecorder,
    BlockSchedule,
    ShrinkingLayer,
    ShrinkSchedule,
    apply_schedule,
    as_target,
    attention_kd_loss,
    converted_blocks,
    hidden_kd_loss,
    kd_logit_loss,
    progressive_layers,
    shrink_metrics,
    shrink_state,
)
from ..errors import ConfigError
from ..evaluation import evaluate
from ..layers import AttentionRecorder
from ..surgery import SurgeryReport
from .module import ConvShareClassifier

__all__ = ["DISTILL_DEFAULTS", "DistillClassifier", "check_distill_options"]

log = logging.getLogger(__name__)

DISTILL_DEFAULTS: dict[str, Any] = dict(
    source=None, teacher=None, temperature=2.0, logit_weight=0.5, attn_weight=0.0, attn_loss="kl",
    attn_blocks=None, feat_weight=0.0, feat_blocks=None, progressive=None, shrink=None, eval_start=True,
)


def check_distill_options(distill: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``distill`` options with defaults filled in.

    Raises:
        ConfigError: unknown options or values out of range.
    """
    unknown = sorted(set(distill or {}) - set(DISTILL_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown distill options {unknown}; the options are {sorted(DISTILL_DEFAULTS)}")
    opts = {**DISTILL_DEFAULTS, **dict(distill or {})}
    try:
        ok = (0.0 <= float(opts["logit_weight"]) <= 1.0 and float(opts["temperature"]) > 0
              and float(opts["attn_weight"]) >= 0 and float(opts["feat_weight"]) >= 0)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"distill.logit_weight must be in [0, 1], temperature > 0, attn_weight >= 0 and feat_weight >= 0; "
                          f"got {opts['logit_weight']}, {opts['temperature']}, {opts['attn_weight']} and {opts['feat_weight']}")
    if opts["attn_loss"] not in ATTN_LOSSES:
        raise ConfigError(f"distill.attn_loss {opts['attn_loss']!r} is not one of {list(ATTN_LOSSES)}")
    if opts["progressive"] and opts["shrink"]:
        raise ConfigError("distill.progressive and distill.shrink are two ways to convert: choose one (set the other to null)")
    if opts["shrink"] is not None and not isinstance(opts["shrink"], Mapping):
        raise ConfigError(f"distill.shrink must be a mapping {{support: [start, end], blend: [start, end], ease: cosine}} "
                          f"or null, got {opts['shrink']!r}")
    return opts


class DistillClassifier(ConvShareClassifier):
    """A ConvShare student fine-tuned with knowledge distillation from a frozen teacher.

    Args:
        net: the student (the source converted by the surgery; progressive layers already wrapped).
        teacher: the frozen teacher network (its head must predict the data's classes while the
            logit term is on).
        schedule: the progressive conversion schedule (``None``: everything converted from the start).
        shrink: the shrinking schedule of the student's :class:`~lightning_convshare.conversion.ShrinkingLayer`
            layers (``None``: none).
        model: ``{name, **timm kwargs}`` of the student (its spec, for the checkpoint).
        surgery: the student's surgery config.
        optim: optimiser and schedule config.
        loss: ``{label_smoothing}``.
        distill: see ``conf/distill/kd.yaml`` (``temperature``, ``logit_weight``, ``attn_weight``,
            ``attn_loss``, ``attn_blocks``, ``feat_weight``, ``feat_blocks``, ``progressive``, ``shrink``,
            ``eval_start``; ``source``/``teacher`` are recorded only).
        report: the student's surgery report.

    Raises:
        ConfigError: unknown options or values out of range.
    """

    def __init__(
        self,
        net: nn.Module,
        teacher: nn.Module,
        *,
        model: Mapping[str, Any],
        surgery: Mapping[str, Any] | str = "vit",
        optim: Optional[Mapping[str, Any]] = None,
        loss: Optional[Mapping[str, Any]] = None,
        distill: Optional[Mapping[str, Any]] = None,
        schedule: Optional[BlockSchedule] = None,
        shrink: Optional[ShrinkSchedule] = None,
        report: Optional[SurgeryReport] = None,
    ) -> None:
        opts = check_distill_options(distill)
        super().__init__(net, model=model, surgery=surgery, optim=optim, loss=loss, report=report)
        self.hparams["distill"] = copy.deepcopy(opts)
        self.opts = opts
        self.teacher = teacher
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.eval()
        depth = len(self.net.blocks)
        blocks = opts["attn_blocks"]
        self.attn_names = None if blocks is None else [f"blocks.{int(b) % depth}.attn" for b in blocks]
        self.schedule = schedule
        self.shrink = shrink
        # the accuracy of the target architecture with the kernels the shrinking layers have now
        self.val_acc_target = MulticlassAccuracy(self.val_acc.num_classes, average="micro") if shrink is not None else None
        self.start_scores: Optional[dict[str, float]] = None  # val/acc_start, teacher/val_acc (kept by checkpoints)

    def monitor_keys(self) -> set[str]:
        keys = {"val/acc_converted", "train/ce", "train/kd", "train/converted_blocks"}
        keys |= {"train/attn"} if float(self.opts["attn_weight"]) > 0 else set()
        keys |= {"train/feat"} if float(self.opts["feat_weight"]) > 0 else set()
        if self.shrink is not None:
            keys |= {f"shrink/{k}" for k in ("support", "blend", "outside", "linear")} | {"val/acc_target"}
        return super().monitor_keys() | keys

    # ------------------------------------------------------------------ progressive schedule

    def converted_blocks(self) -> list[int]:
        """Blocks whose layers are all ConvShare now."""
        return converted_blocks(self.net, self.surgery_report)

    @property
    def fully_converted(self) -> bool:
        return all(m.converted for m in progressive_layers(self.net).values())

    def apply_schedule(self, epoch: int) -> list[str]:
        """Convert the layers whose block is due at ``epoch``; returns their names."""
        return [] if self.schedule is None else apply_schedule(self.net, self.schedule, epoch)

    def shrink_progress(self) -> float:
        """Where the fine-tune is, in [0, 1]: 0 at the first step, 1 at the last (the shrink schedule's clock)."""
        total = int(self.trainer.estimated_stepping_batches)
        return min(self.global_step / max(total - 1, 1), 1.0)

    # ------------------------------------------------------------------ steps

    def train(self, mode: bool = True) -> DistillClassifier:
        super().train(mode)
        self.teacher.eval()  # the teacher never trains (dropout, drop-path off)
        return self

    def distill_losses(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{loss, ce, kd, attn, feat, logits}`` for one batch (the student's graph is kept)."""
        attn = float(self.opts["attn_weight"]) > 0
        feat = float(self.opts["feat_weight"]) > 0
        blocks = self.opts["feat_blocks"]
        with (torch.no_grad(), (AttentionRecorder(self.teacher) if attn else nullcontext()) as t_rec,
              (BlockRecorder(self.teacher, blocks) if feat else nullcontext()) as t_feat):
            t_logits = self.teacher(x)
        with ((AttentionRecorder(self.net, detach=False) if attn else nullcontext()) as s_rec,
              (BlockRecorder(self.net, blocks) if feat else nullcontext()) as s_feat):
            logits = self(x)
        a = float(self.opts["logit_weight"])
        out = {"logits": logits, "ce": self.criterion(logits, y)}
        out["kd"] = kd_logit_loss(logits, t_logits, float(self.opts["temperature"]))
        loss = (1 - a) * out["ce"] + a * out["kd"]
        if attn:
            t_maps = t_rec.maps if self.attn_names is None else {k: t_rec.maps[k] for k in self.attn_names}
            out["attn"] = attention_kd_loss(s_rec.maps, t_maps, str(self.opts["attn_loss"]))
            loss = loss + float(self.opts["attn_weight"]) * out["attn"]
        if feat:
            out["feat"] = hidden_kd_loss(s_feat.features, t_feat.features)
            loss = loss + float(self.opts["feat_weight"]) * out["feat"]
        out["loss"] = loss
        return out

    def model_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.training:  # validation / test: plain cross-entropy, comparable with any run
            return super().model_step(batch)
        x, y = batch
        out = self.distill_losses(x, y)
        for key in ("ce", "kd", "attn", "feat"):
            if key in out:
                self.log(f"train/{key}", out[key].detach(), on_step=False, on_epoch=True, batch_size=len(y))
        return out["loss"], out["logits"], y

    # ------------------------------------------------------------------ hooks

    def setup(self, stage: str) -> None:
        ddp_kwargs = getattr(self.trainer.strategy, "_ddp_kwargs", None) or {}
        staged = self.schedule is not None or self.shrink is not None
        if staged and self.trainer.world_size > 1 and not ddp_kwargs.get("find_unused_parameters"):
            raise ConfigError(
                "progressive or shrinking conversion leaves layers without gradients (ConvShare layers still waiting, "
                "linear layers already replaced), which DDP rejects: use trainer.strategy=ddp_find_unused_parameters_true"
            )

    def on_train_start(self) -> None:
        """Evaluate student and teacher before the first step; a resumed run logs the values its checkpoint kept
        (evaluating again would measure the half-trained student and draw random numbers the uninterrupted run
        did not)."""
        if self.start_scores is None:
            if not self.opts["eval_start"] or self.trainer.datamodule is None:
                return
            scores = evaluate({"student": self.net, "teacher": self.teacher}, self.trainer.datamodule.val_dataloader())
            acc = {k: v.accuracy if v.accuracy is not None else float("nan") for k, v in scores.items()}
            self.start_scores = {"val/acc_start": acc["student"], "teacher/val_acc": acc["teacher"]}
            log.info("before fine-tuning: student val/acc %.4f, teacher val/acc %.4f",
                     self.start_scores["val/acc_start"], self.start_scores["teacher/val_acc"])
        for key, value in self.start_scores.items():
            self.log(key, value, on_epoch=True)

    def on_train_epoch_start(self) -> None:
        self.apply_schedule(self.current_epoch)
        self.log("train/converted_blocks", float(len(self.converted_blocks())), on_epoch=True)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        if self.shrink is not None:
            shrink_state(self.net, self.shrink, self.shrink_progress())

    def on_train_epoch_end(self) -> None:
        state = shrink_metrics(self.net)  # where the shrinking layers are at the epoch's end
        for key, value in state.items():
            self.log(f"shrink/{key}", value, on_epoch=True)
        if state:
            m = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith(("val/", "train/"))}
            log.info("epoch %d: val/acc %.4f (target architecture %.4f); support %.2f px, blend %.3f; train kd %.4f, attn %s",
                     self.current_epoch, m.get("val/acc", float("nan")), m.get("val/acc_target", float("nan")),
                     state["support"], state["blend"], m.get("train/kd", float("nan")),
                     f"{m['train/attn']:.4f}" if "train/attn" in m else "off")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        if self.val_acc_target is not None:
            x, y = batch
            if self.fully_converted:
                logits = self(x)  # the same network
            else:
                with as_target(self.net):
                    logits = self(x)
            self.val_acc_target(logits, y)
            self.log("val/acc_target", self.val_acc_target, on_step=False, on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        value = self.val_acc.compute() if self.fully_converted else torch.zeros((), device=self.device)
        self.log("val/acc_converted", value, on_epoch=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store a plain ConvShareClassifier checkpoint: no teacher, no distill options in the
        hyperparameters, progressive layers in their current form (``surgery.blocks`` lists the
        converted blocks while some are not).

        What a resumed fine-tune needs beyond that is kept apart, in ``checkpoint["distill"]``: the
        staged (progressive or shrinking) layers' own parameters under ``staged_state`` and whether each
        is converted under ``converted`` (:meth:`on_load_checkpoint` puts them back)."""
        hp = copy.deepcopy(dict(checkpoint["hyper_parameters"]))
        staged = progressive_layers(self.net)
        checkpoint["distill"] = {**hp.pop("distill", {}), "converted_blocks": self.converted_blocks(),
                                 "start_scores": self.start_scores,
                                 "converted": {name: layer.converted for name, layer in staged.items()},
                                 "staged_state": {f"net.{name}.{k}": v.detach() for name, layer in staged.items()
                                                  for k, v in layer.state_dict().items()}}
        if staged and not self.fully_converted and isinstance(hp.get("surgery"), dict):
            hp["surgery"]["blocks"] = self.converted_blocks()
        checkpoint["hyper_parameters"] = hp
        state = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("teacher.")}
        for name, layer in staged.items():
            prefix = f"net.{name}."
            for key in [k for k in state if k.startswith(prefix)]:
                del state[key]
            state.update({prefix + k: v for k, v in layer.export_state().items()})
        checkpoint["state_dict"] = state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resuming (``convshare finetune --resume``): the inverse of :meth:`on_save_checkpoint`. The staged
        layers get back their own parameters and conversion state, the frozen teacher (rebuilt from its
        source by the run's config, not saved) its current weights.

        Raises:
            ConfigError: the checkpoint's staged layers are not this module's (another conversion).
        """
        saved = checkpoint.get("distill") or {}
        staged = progressive_layers(self.net)
        if staged and "staged_state" not in saved:
            raise ConfigError("this checkpoint was written before fine-tune checkpoints kept their staged layers' state: "
                              "it cannot be resumed (start the fine-tune again, or continue its network with init_from=)")
        converted = saved.get("converted", {})
        if set(converted) != set(staged):
            raise ConfigError(f"the checkpoint's staged layers {sorted(converted)} are not this fine-tune's {sorted(staged)}: "
                              "resume a run with the config it was started with")
        state = {k: v for k, v in checkpoint["state_dict"].items()
                 if not any(k.startswith(f"net.{name}.") for name in staged)}
        state.update(saved.get("staged_state", {}))
        state.update({f"teacher.{k}": v for k, v in self.teacher.state_dict().items()})
        checkpoint["state_dict"] = state
        self.start_scores = saved.get("start_scores")
        for name, layer in staged.items():
            if not converted[name]:
                continue
            if isinstance(layer, ShrinkingLayer):
                layer.convert_()
            else:
                layer.converted = True  # not convert_(): the trained ConvShare weights come with the state
