"""Convert a (pretrained) ViT into ConvShare form and measure how faithful the conversion is.

``convert(original, surgery)`` applies a surgery variant to a copy of ``original`` and reports, for
every ConvShare layer, the relative error of its convolution against the linear map it replaced
(0 exactly for valid padding with whole-map kernels) and, on inputs you provide, how far the
logits moved (max absolute difference, relative error, top-1 agreement).
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .layers import ConvShareLinear
from .surgery import SurgeryReport, apply_surgery
from .surgery.init import approximation_error

__all__ = ["ConversionReport", "LayerFit", "LogitAgreement", "convert", "evaluate", "layer_fits", "logit_agreement"]


@dataclass
class LayerFit:
    """How well one ConvShare layer reproduces the linear layer it replaced."""

    name: str
    role: str
    geometry: str
    rel_error: float  # ||M(w) - W||_F / ||W||_F of the conv's matrix M(w) against the linear weight W
    params_before: int
    params_after: int

    @property
    def exact(self) -> bool:
        """The conv's matrix equals the linear weight bit for bit (whole-map valid kernels)."""
        return self.rel_error == 0.0


@dataclass
class LogitAgreement:
    """Original vs converted logits on the same inputs."""

    samples: int
    max_abs_diff: float
    rel_error: float  # ||z' - z||_F / ||z||_F over all samples
    top1_agreement: float  # share of samples whose predicted class is unchanged


@dataclass
class ConversionReport:
    """Everything ``convshare convert`` prints and stores next to the converted weights."""

    surgery: SurgeryReport
    layers: list[LayerFit] = field(default_factory=list)
    logits: LogitAgreement | None = None
    accuracy: dict[str, float] = field(default_factory=dict)  # {"original": ..., "converted": ...} when evaluated
    inputs: str = ""  # what the logits were compared on

    @property
    def exact(self) -> bool:
        return bool(self.layers) and all(layer.exact for layer in self.layers)

    @property
    def mean_rel_error(self) -> float:
        return sum(layer.rel_error for layer in self.layers) / max(len(self.layers), 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.surgery.variant,
            "options": self.surgery.options,
            "params_before": self.surgery.params_before,
            "params_after": self.surgery.params_after,
            "exact": self.exact,
            "mean_rel_error": self.mean_rel_error,
            "layers": [asdict(layer) for layer in self.layers],
            "logits": asdict(self.logits) if self.logits else None,
            "inputs": self.inputs,
            "accuracy": dict(self.accuracy),
        }


def layer_fits(original: nn.Module, converted: nn.Module) -> list[LayerFit]:
    """One :class:`LayerFit` per ConvShare layer of ``converted`` that replaced an ``nn.Linear`` of ``original``."""
    linears = {name: m for name, m in original.named_modules() if isinstance(m, nn.Linear)}
    fits = []
    for name, layer in converted.named_modules():
        if isinstance(layer, ConvShareLinear) and name in linears:
            linear = linears[name]
            fits.append(LayerFit(
                name, name.rsplit(".", 1)[-1], layer.geometry.describe(), approximation_error(layer, linear),
                sum(p.numel() for p in linear.parameters()), sum(p.numel() for p in layer.parameters()),
            ))
    return fits


def convert(original: nn.Module, surgery: Mapping[str, Any] | str) -> tuple[nn.Module, ConversionReport]:
    """Apply ``surgery`` to a copy of ``original`` (left untouched) and measure every converted layer.

    Returns:
        ``(converted, report)``; ``report.logits`` is filled by :func:`logit_agreement`.
    """
    converted = copy.deepcopy(original)
    surgery_report = apply_surgery(converted, surgery)
    return converted, ConversionReport(surgery_report, layer_fits(original, converted))


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out[0] if isinstance(out, tuple) else out  # distilled DeiTs return (cls, dist) in train mode


@torch.no_grad()
def logit_agreement(original: nn.Module, converted: nn.Module, batches: Iterable[torch.Tensor]) -> LogitAgreement:
    """Compare the two models' logits on ``batches`` (both in eval mode; their modes are restored)."""
    modes = original.training, converted.training
    original.eval(), converted.eval()
    device = next(original.parameters()).device
    n, max_diff, sq_diff, sq_ref, agree = 0, 0.0, 0.0, 0.0, 0
    try:
        for x in batches:
            x = x.to(device)
            a, b = _logits(original, x).double(), _logits(converted, x).double()  # B, classes
            n += len(x)
            max_diff = max(max_diff, (a - b).abs().max().item())
            sq_diff += (a - b).square().sum().item()
            sq_ref += a.square().sum().item()
            agree += (a.argmax(-1) == b.argmax(-1)).sum().item()
    finally:
        original.train(modes[0]), converted.train(modes[1])
    return LogitAgreement(n, max_diff, (sq_diff / max(sq_ref, 1e-300)) ** 0.5, agree / max(n, 1))


@torch.no_grad()
def evaluate(models: Mapping[str, nn.Module], batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """Top-1 accuracy of each model on labelled ``batches`` (one pass over the data for all models)."""
    correct = dict.fromkeys(models, 0)
    total = 0
    modes = {k: m.training for k, m in models.items()}
    for m in models.values():
        m.eval()
    try:
        for x, y in batches:
            total += len(y)
            for key, m in models.items():
                device = next(m.parameters()).device
                correct[key] += (_logits(m, x.to(device)).argmax(-1).cpu() == y).sum().item()
    finally:
        for key, m in models.items():
            m.train(modes[key])
    return {k: c / max(total, 1) for k, c in correct.items()}
