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
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..evaluation.accuracy import logits_of
from ..layers import ConvShareLinear
from ..models import ModelSpec, resolve_source, save_run_checkpoint
from ..surgery import SurgeryReport, apply_surgery
from ..surgery.init import approximation_error

__all__ = ["ConversionReport", "LayerFit", "LogitAgreement", "convert", "layer_fits", "logit_agreement", "save_conversion"]


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
            a, b = logits_of(original(x)).double(), logits_of(converted(x)).double()  # B, classes
            n += len(x)
            max_diff = max(max_diff, (a - b).abs().max().item())
            sq_diff += (a - b).square().sum().item()
            sq_ref += a.square().sum().item()
            agree += (a.argmax(-1) == b.argmax(-1)).sum().item()
    finally:
        original.train(modes[0]), converted.train(modes[1])
    return LogitAgreement(n, max_diff, (sq_diff / max(sq_ref, 1e-300)) ** 0.5, agree / max(n, 1))


def save_conversion(
    path: str | Path,
    converted: nn.Module,
    original: nn.Module,
    source: ModelSpec,
    surgery: Mapping[str, Any] | str,
    report: ConversionReport,
    *,
    optim: Mapping[str, Any] | None = None,
    loss: Mapping[str, Any] | None = None,
) -> Path:
    """Write the converted network as a run checkpoint that records where it came from.

    Its spec is the source's architecture as timm built it (class count, channels and image size read
    from ``original``, which may differ from the kwargs when weights set them) with ``surgery``; the
    checkpoint also stores ``convshare.source`` (the teacher a later ``finetune init_from=`` uses)
    and ``convshare.conversion`` (this report).
    """
    h, w = original.patch_embed.img_size
    arch = {**dict(source.kwargs), "num_classes": original.num_classes,
            "in_chans": original.patch_embed.proj.in_channels, "img_size": h if h == w else [h, w]}
    spec = ModelSpec(source.name, arch, surgery)
    hparams = {"model": spec.model_hparams(), "surgery": spec.surgery, "optim": dict(optim or {}), "loss": dict(loss or {})}
    src = resolve_source(source.pretrained) if source.pretrained else None
    recorded = {"checkpoint": str(Path(src.ref).resolve()) if src is not None and src.kind != "hub" else None,
                "model": source.name, "kwargs": arch}
    return save_run_checkpoint(path, converted, hparams, convshare={"source": recorded, "conversion": report.to_dict()})
