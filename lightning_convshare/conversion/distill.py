"""Distillation losses of fine-tuning into ConvShare form (plain torch).

The fine-tuning loss (:class:`~lightning_convshare.lit.distill_module.DistillClassifier`) is

``(1 - a) * CE(s, y) + a * T^2 * KL(softmax(t / T) || softmax(s / T)) + b * attention distance
+ c * hidden-state distance``

with ``a = logit_weight``, ``T = temperature`` (Hinton et al. 2015), ``b = attn_weight`` and
``c = feat_weight``; the attention term compares the recorded attention maps of student and teacher
row by row, the hidden-state term their blocks' output tokens (:class:`BlockRecorder`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

__all__ = ["ATTN_LOSSES", "BlockRecorder", "attention_kd_loss", "hidden_kd_loss", "kd_logit_loss"]

ATTN_LOSSES = ("kl", "mse")


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


def hidden_kd_loss(student: Mapping[str, torch.Tensor], teacher: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Relative squared distance between hidden states ``{block: (B, tokens, dim)}``, mean over the teacher's blocks.

    Per block ``sum ||s - t||^2 / sum ||t||^2`` over batch and tokens: 0 when the student's tokens are the
    teacher's, 1 when they are all zero, whatever the scale of the block's features (layer-wise distillation
    of the residual stream, which has the same shape in a ViT and its ConvShare form).

    Raises:
        ConfigError: a block the student did not record, or features of different shapes.

    Example:
        >>> h = {"blocks.0": torch.randn(2, 5, 8)}
        >>> float(hidden_kd_loss(h, h))
        0.0
    """
    terms = []
    for name, t in teacher.items():
        s = student.get(name)
        if s is None or s.shape != t.shape:
            raise ConfigError(
                f"hidden-state distillation needs the same tokens and width in {name}: teacher {tuple(t.shape)}, "
                f"student {None if s is None else tuple(s.shape)}"
            )
        terms.append((s - t).square().sum() / t.square().sum().clamp_min(torch.finfo(t.dtype).tiny))
    if not terms:
        raise ConfigError("hidden-state distillation found no recorded blocks")
    return torch.stack(terms).mean()


class BlockRecorder:
    """Context manager that records the outputs of a ViT's blocks (forward hooks, removed on exit).

    Args:
        model: a timm ViT (``model.blocks``).
        blocks: block indices (negatives count from the end); ``None``: every block.

    Example:
        >>> with BlockRecorder(model) as rec:
        ...     logits = model(images)
        >>> rec.features["blocks.3"].shape  # B, tokens, dim
    """

    def __init__(self, model: nn.Module, blocks: Optional[Sequence[int]] = None) -> None:
        depth = len(model.blocks)
        idx = range(depth) if blocks is None else [int(b) % depth for b in blocks]
        self._blocks = {f"blocks.{i}": model.blocks[i] for i in idx}
        self._handles: list = []
        self.features: dict[str, torch.Tensor] = {}

    def __enter__(self) -> BlockRecorder:
        self.features = {}
        for name, block in self._blocks.items():
            self._handles.append(block.register_forward_hook(self._hook(name)))
        return self

    def _hook(self, name: str):
        def hook(module: nn.Module, args: object, output: torch.Tensor) -> None:
            self.features[name] = output
        return hook

    def __exit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
