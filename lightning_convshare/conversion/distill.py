"""Distillation losses of fine-tuning into ConvShare form (plain torch).

The fine-tuning loss (:class:`~lightning_convshare.lit.distill_module.DistillClassifier`) is

``(1 - a) * CE(s, y) + a * T^2 * KL(softmax(t / T) || softmax(s / T)) + b * attention distance``

with ``a = logit_weight``, ``T = temperature`` (Hinton et al. 2015) and ``b = attn_weight``; the
attention term compares the recorded attention maps of student and teacher row by row.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from ..errors import ConfigError

__all__ = ["ATTN_LOSSES", "attention_kd_loss", "kd_logit_loss"]

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
