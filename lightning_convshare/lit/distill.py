"""Fine-tuning into ConvShare form with knowledge distillation from the frozen original.

:class:`DistillClassifier` is a :class:`~lightning_convshare.lit.module.ConvShareClassifier` whose
network (the *student*) is a pretrained ViT converted by the surgery, plus a frozen *teacher*
(by default the same pretrained ViT, unconverted). The training loss is

``(1 - a) * CE(s, y) + a * T^2 * KL(softmax(t / T) || softmax(s / T)) + b * attention distance``

with ``a = logit_weight``, ``T = temperature`` (Hinton et al. 2015) and ``b = attn_weight``; the
attention term compares the recorded attention maps of both models row by row. Blocks can be
replaced progressively (:class:`BlockSchedule`): a block waits as its linear layers (trained
meanwhile) and is converted, with the surgery's init, at its epoch. Validation and test report
plain cross-entropy and accuracy, comparable with any other run.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..conversion import evaluate
from ..errors import ConfigError
from ..layers import AttentionRecorder, ConvShareLinear
from ..models import create_backbone, source_num_classes
from ..surgery import LAYER_INITS
from .checkpoint import DATA_KEYS, source_model_kwargs
from .module import ConvShareClassifier

__all__ = [
    "DISTILL_DEFAULTS",
    "BlockSchedule",
    "DistillClassifier",
    "ProgressiveLayer",
    "attention_kd_loss",
    "kd_logit_loss",
]

log = logging.getLogger(__name__)

DISTILL_DEFAULTS: dict[str, Any] = dict(
    source=None, teacher=None, temperature=2.0, logit_weight=0.5, attn_weight=0.0, attn_loss="kl",
    attn_blocks=None, progressive=None, eval_start=True,
)
ATTN_LOSSES = ("kl", "mse")
CONV_ROLES = ("qkv", "proj", "fc1", "fc2")


def kd_logit_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Hinton's distillation loss ``T^2 * KL(softmax(t / T) || softmax(s / T))``, mean over the batch.

    The ``T^2`` keeps its gradients on the scale of the cross-entropy's as ``T`` changes.

    Args:
        student: logits ``(B, classes)``.
        teacher: logits ``(B, classes)`` (no gradient needed).
        temperature: ``T > 0``.

    Example:
        >>> z = torch.randn(4, 10)
        >>> float(kd_logit_loss(z, z, 2.0))
        0.0
    """
    t = temperature
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), reduction="batchmean",
                    log_target=True) * t * t


def attention_kd_loss(
    student: Mapping[str, torch.Tensor], teacher: Mapping[str, torch.Tensor], kind: str = "kl"
) -> torch.Tensor:
    """Distance between attention maps ``{layer: (B, heads, N, N)}``, mean over the teacher's layers.

    ``kl``: ``KL(teacher row || student row)`` for every query row (each row is a distribution
    over the keys), averaged over batch, heads and queries. ``mse``: the squared L2 distance
    between the rows, averaged the same way.

    Raises:
        ConfigError: a layer the student did not record, or maps of different shapes.
    """
    if kind not in ATTN_LOSSES:
        raise ConfigError(f"distill.attn_loss {kind!r} is not one of {list(ATTN_LOSSES)}")
    terms = []
    for name, t in teacher.items():
        s = student.get(name)
        if s is None or s.shape != t.shape:
            raise ConfigError(
                f"attention distillation needs the same heads and tokens in {name}: teacher {tuple(t.shape)}, "
                f"student {None if s is None else tuple(s.shape)}"
            )
        if kind == "kl":
            eps = torch.finfo(s.dtype).tiny
            terms.append((t * (t.clamp_min(eps).log() - s.clamp_min(eps).log())).sum(-1).mean())
        else:
            terms.append((s - t).square().sum(-1).mean())
    if not terms:
        raise ConfigError("attention distillation found no recorded attention layers")
    return torch.stack(terms).mean()


@dataclass(frozen=True)
class BlockSchedule:
    """Which blocks are converted at which epoch: ``groups[0]`` at epoch 0, the next every ``every_n_epochs``."""

    groups: tuple[tuple[int, ...], ...]
    every_n_epochs: int = 1

    @classmethod
    def create(cls, blocks: Sequence[int], every_n_epochs: int = 1, blocks_per_step: int = 1,
               order: str = "last_first") -> BlockSchedule:
        """Groups of ``blocks_per_step`` blocks in ``order`` (``last_first`` or ``first_last``)."""
        orders = {"last_first": sorted(blocks, reverse=True), "first_last": sorted(blocks)}
        if order not in orders:
            raise ConfigError(f"distill.progressive.order {order!r} is not one of {list(orders)}")
        if int(every_n_epochs) < 1 or int(blocks_per_step) < 1:
            raise ConfigError(f"distill.progressive needs every_n_epochs >= 1 and blocks_per_step >= 1, "
                              f"got {every_n_epochs} and {blocks_per_step}")
        seq, k = orders[order], int(blocks_per_step)
        return cls(tuple(tuple(seq[i:i + k]) for i in range(0, len(seq), k)), int(every_n_epochs))

    @property
    def full_epoch(self) -> int:
        """First epoch in which every block is converted."""
        return self.every_n_epochs * (len(self.groups) - 1)

    def converted_at(self, epoch: int) -> list[int]:
        """Blocks converted during ``epoch``."""
        n = min(len(self.groups), epoch // self.every_n_epochs + 1)
        return sorted(b for group in self.groups[:n] for b in group)


class ProgressiveLayer(nn.Module):
    """A linear layer that becomes its ConvShare layer when :meth:`convert_` is called.

    Until then the forward is the (trainable) linear layer's; :meth:`convert_` initialises the
    ConvShare layer from the linear one as it is then (``LAYER_INITS[init]``) and switches over.
    """

    def __init__(self, linear: nn.Linear, conv: ConvShareLinear, init: str = "lstsq") -> None:
        super().__init__()
        self.linear, self.conv, self.init = linear, conv, init
        self.converted = False

    @torch.no_grad()
    def convert_(self) -> None:
        LAYER_INITS.get(self.init)(self.conv, self.linear)
        self.converted = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) if self.converted else self.linear(x)

    def extra_repr(self) -> str:
        return f"converted={self.converted}, init={self.init!r}"


def _block(name: str) -> int:
    return int(name.split(".")[1])  # blocks.<i>.attn.qkv


class DistillClassifier(ConvShareClassifier):
    """A ConvShare student fine-tuned with knowledge distillation from a frozen teacher.

    Args:
        model: ``{name, **timm kwargs}`` plus ``checkpoint`` (a file or run checkpoint) or
            ``pretrained`` (hub), the source the student is converted from.
        surgery: the conversion (``{name: convshare, init: lstsq, ...}``).
        optim: optimiser and schedule config.
        loss: ``{label_smoothing}``.
        distill: see ``conf/distill/kd.yaml`` (``teacher``, ``temperature``, ``logit_weight``,
            ``attn_weight``, ``attn_loss``, ``attn_blocks``, ``progressive``, ``eval_start``).

    Raises:
        ConfigError: unknown options, no teacher, or a teacher whose head does not predict the
            data's classes while the logit term is on.
    """

    def __init__(
        self,
        model: Mapping[str, Any],
        surgery: Mapping[str, Any] | str = "vit",
        optim: Optional[Mapping[str, Any]] = None,
        loss: Optional[Mapping[str, Any]] = None,
        distill: Optional[Mapping[str, Any]] = None,
    ) -> None:
        unknown = sorted(set(distill or {}) - set(DISTILL_DEFAULTS))
        if unknown:
            raise ConfigError(f"unknown distill options {unknown}; the options are {sorted(DISTILL_DEFAULTS)}")
        opts = {**DISTILL_DEFAULTS, **dict(distill or {})}
        if not 0.0 <= float(opts["logit_weight"]) <= 1.0 or float(opts["temperature"]) <= 0:
            raise ConfigError(f"distill.logit_weight must be in [0, 1] and temperature > 0; got "
                              f"{opts['logit_weight']} and {opts['temperature']}")
        super().__init__(model, surgery, optim, loss)
        self.opts = opts
        self.teacher = self._create_teacher(dict(model))
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.eval()
        depth = len(self.net.blocks)
        blocks = opts["attn_blocks"]
        self.attn_names = None if blocks is None else [f"blocks.{int(b) % depth}.attn" for b in blocks]
        self.schedule: Optional[BlockSchedule] = None
        if opts["progressive"]:
            self._make_progressive(dict(model), surgery)

    # ------------------------------------------------------------------ construction

    def _teacher_spec(self, model: dict[str, Any]) -> str:
        spec = self.opts["teacher"] or self.opts["source"] or model.get("checkpoint")
        if not spec:
            if model.get("pretrained"):
                return str(model["name"])
            raise ConfigError("distillation needs a teacher: set distill.teacher (a .ckpt, weights file or hub name) "
                              "or distill.source")
        return str(spec)

    def _create_teacher(self, model: dict[str, Any]) -> nn.Module:
        spec = self._teacher_spec(model)
        classes = source_num_classes(spec)
        if float(self.opts["logit_weight"]) > 0 and classes is not None and classes != model.get("num_classes"):
            raise ConfigError(
                f"the teacher {spec} predicts {classes} classes and the data has {model.get('num_classes')}: its head would "
                "be reset, so its logits carry no knowledge. Fine-tune a ViT on this data first (convshare train "
                "surgery=vit init_from=...) and pass it as distill.teacher, or set distill.logit_weight=0 (labels and "
                "attention only)"
            )
        if spec.endswith(".ckpt"):  # its own architecture, adapted to the data
            kwargs = {"checkpoint": spec, **{k: model[k] for k in DATA_KEYS if k in model}}
            from ..models import checkpoint_model_config

            name = checkpoint_model_config(spec)["name"]
        else:
            kwargs = source_model_kwargs(spec, model)
            name = kwargs.pop("name")
        return create_backbone(name, "vit", **kwargs).model

    def _make_progressive(self, model: dict[str, Any], surgery: Mapping[str, Any] | str) -> None:
        names = [r.name for r in self.surgery_report.layers if r.role in CONV_ROLES]
        if not names:
            raise ConfigError("distill.progressive needs a surgery that converts layers (e.g. surgery=convshare)")
        if not (model.get("checkpoint") or model.get("pretrained")):
            raise ConfigError("distill.progressive needs distill.source (the linear layers to start from)")
        self.schedule = BlockSchedule.create(sorted({_block(n) for n in names}), **dict(self.opts["progressive"]))
        same = not self.opts["teacher"] or self.opts["teacher"] == self.opts["source"]
        linear_source = self.teacher if same else create_backbone(
            model["name"], "vit", **{k: v for k, v in model.items() if k != "name"}).model
        init = surgery.get("init", "transfer") if isinstance(surgery, Mapping) else "transfer"
        first = set(self.schedule.converted_at(0))
        for name in names:
            if _block(name) not in first:
                linear = copy.deepcopy(linear_source.get_submodule(name)).requires_grad_(True)
                self.net.set_submodule(name, ProgressiveLayer(linear, self.net.get_submodule(name), init))
        log.info("progressive conversion: blocks %s, every %d epochs (all converted from epoch %d)",
                 [list(g) for g in self.schedule.groups], self.schedule.every_n_epochs, self.schedule.full_epoch)

    # ------------------------------------------------------------------ progressive schedule

    def progressive_layers(self) -> dict[str, ProgressiveLayer]:
        return {n: m for n, m in self.net.named_modules() if isinstance(m, ProgressiveLayer)}

    def converted_blocks(self) -> list[int]:
        """Blocks whose layers are all ConvShare now."""
        waiting = {_block(n) for n, m in self.progressive_layers().items() if not m.converted}
        converted = {_block(r.name) for r in self.surgery_report.layers if r.role in CONV_ROLES}
        return sorted(converted - waiting)

    @property
    def fully_converted(self) -> bool:
        return all(m.converted for m in self.progressive_layers().values())

    def apply_schedule(self, epoch: int) -> list[str]:
        """Convert the layers whose block is due at ``epoch``; returns their names."""
        if self.schedule is None:
            return []
        due = set(self.schedule.converted_at(epoch))
        done = []
        for name, layer in self.progressive_layers().items():
            if not layer.converted and _block(name) in due:
                layer.convert_()
                done.append(name)
        if done:
            log.info("epoch %d: converted %s", epoch, ", ".join(done))
        return done

    # ------------------------------------------------------------------ steps

    def train(self, mode: bool = True) -> DistillClassifier:
        super().train(mode)
        self.teacher.eval()  # the teacher never trains (dropout, drop-path off)
        return self

    def distill_losses(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{loss, ce, kd, attn, logits}`` for one batch (the student's graph is kept)."""
        attn = float(self.opts["attn_weight"]) > 0
        with torch.no_grad(), (AttentionRecorder(self.teacher) if attn else nullcontext()) as t_rec:
            t_logits = self.teacher(x)
        with (AttentionRecorder(self.net, detach=False) if attn else nullcontext()) as s_rec:
            logits = self(x)
        a = float(self.opts["logit_weight"])
        out = {"logits": logits, "ce": self.criterion(logits, y)}
        out["kd"] = kd_logit_loss(logits, t_logits, float(self.opts["temperature"]))
        loss = (1 - a) * out["ce"] + a * out["kd"]
        if attn:
            t_maps = t_rec.maps if self.attn_names is None else {k: t_rec.maps[k] for k in self.attn_names}
            out["attn"] = attention_kd_loss(s_rec.maps, t_maps, str(self.opts["attn_loss"]))
            loss = loss + float(self.opts["attn_weight"]) * out["attn"]
        out["loss"] = loss
        return out

    def model_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.training:  # validation / test: plain cross-entropy, comparable with any run
            return super().model_step(batch)
        x, y = batch
        out = self.distill_losses(x, y)
        for key in ("ce", "kd", "attn"):
            if key in out:
                self.log(f"train/{key}", out[key].detach(), on_step=False, on_epoch=True, batch_size=len(y))
        return out["loss"], out["logits"], y

    # ------------------------------------------------------------------ hooks

    def setup(self, stage: str) -> None:
        ddp_kwargs = getattr(self.trainer.strategy, "_ddp_kwargs", None) or {}
        if self.schedule is not None and self.trainer.world_size > 1 and not ddp_kwargs.get("find_unused_parameters"):
            raise ConfigError(
                "progressive replacement leaves layers without gradients (ConvShare layers still waiting, linear "
                "layers already replaced), which DDP rejects: use trainer.strategy=ddp_find_unused_parameters_true"
            )

    def on_train_start(self) -> None:
        if not self.opts["eval_start"] or self.trainer.datamodule is None:
            return
        acc = evaluate({"student": self.net, "teacher": self.teacher}, self.trainer.datamodule.val_dataloader())
        self.log("val/acc_start", acc["student"], on_epoch=True)
        self.log("teacher/val_acc", acc["teacher"], on_epoch=True)
        log.info("before fine-tuning: student val/acc %.4f, teacher val/acc %.4f", acc["student"], acc["teacher"])

    def on_train_epoch_start(self) -> None:
        self.apply_schedule(self.current_epoch)
        self.log("train/converted_blocks", float(len(self.converted_blocks())), on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        value = self.val_acc.compute() if self.fully_converted else torch.zeros((), device=self.device)
        self.log("val/acc_converted", value, on_epoch=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store a plain ConvShareClassifier checkpoint: no teacher, no distill options in the
        hyperparameters, progressive layers in their current form (``surgery.blocks`` lists the
        converted blocks while some are not)."""
        super().on_save_checkpoint(checkpoint)
        hp = copy.deepcopy(dict(checkpoint["hyper_parameters"]))
        checkpoint["distill"] = {**hp.pop("distill", {}), "converted_blocks": self.converted_blocks()}
        if self.schedule is not None and not self.fully_converted and isinstance(hp.get("surgery"), dict):
            hp["surgery"]["blocks"] = self.converted_blocks()
        checkpoint["hyper_parameters"] = hp
        state = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("teacher.")}
        for name, layer in self.progressive_layers().items():
            keep, drop = ("conv", "linear") if layer.converted else ("linear", "conv")
            prefix = f"net.{name}."
            for key in [k for k in state if k.startswith(prefix)]:
                value = state.pop(key)
                part, _, rest = key[len(prefix):].partition(".")
                if part == keep:
                    state[prefix + rest] = value
        checkpoint["state_dict"] = state
