"""Attention metrics of a trained model on a dataset, outside Lightning (the report command, benchmarks).

:func:`load_reference` builds a frozen model from a reference "source" (through the one weight-source
resolver and factory of :mod:`lightning_convshare.models`) and checks that it records attention.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from ..errors import ConfigError, ConvShareError, GeometryError
from ..evaluation import evaluate
from ..layers import AttentionRecorder, recording_modules
from ..models import ModelSpec, load_frozen
from .attention_metrics import AttentionSimilarity, AttentionStatistics, attention_dims
from .figures import attention_pictures
from .scores import AttentionScores
from .tokens import TokenLayout

__all__ = ["AttentionReport", "evaluate_attention", "load_reference", "record_attention"]

log = logging.getLogger(__name__)


def load_reference(
    source: str | Path, name: Optional[str] = None, variant: Mapping[str, Any] | str = "vit", **timm_kwargs: Any
) -> nn.Module:
    """A frozen model (eval mode, no gradients) whose attention can be recorded.

    Loading runs under a forked random state, so it never changes the caller's random stream
    (and with it the trained model's initialisation, data order or augmentation).

    Args:
        source: a ``convshare train`` checkpoint (``.ckpt``), a weights file (``.safetensors``,
            ``.pth``, ``.pt``, ``.bin``; needs ``name``) or a timm model name (pretrained weights
            from the hub or the local cache).
        name: timm architecture of a weights file.
        variant: surgery variant for weights files and hub models (default ``vit``: timm's
            layers with recording attention).
        **timm_kwargs: ``timm.create_model`` kwargs, e.g. ``img_size``, ``num_classes``.

    Raises:
        ConfigError: the source cannot be loaded (what was tried, what would work), or the model
            cannot record attention.
    """
    try:
        model = load_frozen(ModelSpec.from_source(str(source), name=name, kwargs=timm_kwargs, surgery=variant, exact=True))
    except ConvShareError:
        raise
    except Exception as e:  # hub/network/file-format errors from timm, huggingface_hub, torch
        raise ConfigError(
            f"cannot load the reference {str(source)!r} ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}). "
            "A reference is a run checkpoint (runs/<run>/checkpoints/last.ckpt), a weights file with "
            "reference.name=<timm architecture>, or a timm model name whose weights are downloadable or cached"
        ) from None
    attention_dims(model)
    return model


def record_attention(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward with recording: ``(output, maps (B, L, H, N, N))``."""
    with AttentionRecorder(model) as rec:
        out = model(images)
    return out, torch.stack(list(rec.maps.values()), dim=1)  # B, L, H, N, N


@dataclass
class AttentionReport:
    """What :func:`evaluate_attention` measured.

    Attributes:
        scores: the metrics.
        layers: attention module names in depth order (``layer<l>`` is ``layers[l]``).
        images: the first ``K`` images ``(K, C, H, W)``.
        pictures: the model's attention pictures of those images ``(K, L, rows, cols)``.
        reference_pictures: the reference's, or ``None``.
        num_images: images evaluated.
        accuracy: top-1 accuracy of the model when the batches carry labels (else ``None``).
        reference_accuracy: the reference's, when it has the same classes.
    """

    scores: AttentionScores
    layers: list[str]
    images: torch.Tensor
    pictures: torch.Tensor
    reference_pictures: Optional[torch.Tensor]
    num_images: int
    accuracy: Optional[float] = None
    reference_accuracy: Optional[float] = None


def _check_input(model: nn.Module, images: torch.Tensor, what: str) -> None:
    """A clear error when the images do not have the size a fixed-size timm ViT was built for."""
    embed = getattr(model, "patch_embed", None)
    size = getattr(embed, "img_size", None)
    if size is not None and getattr(embed, "strict_img_size", False) and tuple(images.shape[-2:]) != tuple(size):
        raise GeometryError(
            f"the {what} takes {size[0]}x{size[1]} images but the data are {images.shape[-2]}x{images.shape[-1]}; "
            f"evaluate on data of that size (e.g. data.img_size={size[0]})"
        )


@torch.no_grad()
def evaluate_attention(
    model: nn.Module,
    batches: Iterable[Any],
    reference: Optional[nn.Module] = None,
    *,
    num_images: int = 4,
    max_batches: Optional[int] = None,
    device: str | torch.device | None = None,
) -> AttentionReport:
    """Run ``model`` (and ``reference``) in eval mode over ``batches`` and compute the attention metrics.

    Args:
        model: a timm ViT with recording attention.
        batches: an iterable of image tensors or ``(images, labels, ...)`` tuples (e.g. a DataLoader).
        reference: a model to compare with (see :func:`load_reference`); same depth and patch grid.
        num_images: how many of the first images to keep for attention pictures.
        max_batches: stop after this many batches.
        device: where to run (default: the model's device).

    Raises:
        ConfigError, GeometryError: the models cannot record or do not fit each other or the images.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)  # the accuracy loop runs it in eval mode and restores its mode
    layout = TokenLayout.from_model(model)
    stats = AttentionStatistics.from_model(model).to(device)
    similarity = ref_stats = ref_layout = None
    if reference is not None:
        reference.to(device)
        similarity = AttentionSimilarity.from_models(model, reference).to(device)
        ref_stats, ref_layout = AttentionStatistics.from_model(reference).to(device), TokenLayout.from_model(reference)
    kept: list[tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]] = []
    state: dict[str, Any] = {"seen": 0, "maps": None}

    def forward(name: str, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Record attention while the accuracy loop runs each model; update the metrics per batch."""
        if state["seen"] == 0:
            _check_input(net, x, name)
        logits, maps = record_attention(net, x)
        if name == "model":
            stats.update(maps)
            state["maps"] = maps
            if reference is None:
                _keep(x, maps, None)
        else:
            similarity.update(state["maps"], maps)
            ref_stats.update(maps)
            _keep(x, state["maps"], maps)
        return logits

    def _keep(x: torch.Tensor, maps: torch.Tensor, ref_maps: Optional[torch.Tensor]) -> None:
        if state["seen"] < num_images:
            n = min(num_images - state["seen"], len(x))
            kept.append((
                x[:n].cpu(), attention_pictures(maps[:n], layout).cpu(),
                attention_pictures(ref_maps[:n], ref_layout).cpu() if ref_maps is not None else None,
            ))
        state["seen"] += len(x)

    models = {"model": model, **({"reference": reference} if reference is not None else {})}
    try:
        results = evaluate(models, batches, device=device, max_batches=max_batches, forward=forward)
    except ConfigError:
        raise ConfigError("no images to evaluate attention on: the data loader is empty") from None
    seen = state["seen"]
    scores = AttentionScores(
        similarity=similarity.compute() if similarity is not None else {},
        statistics=stats.compute(),
        reference=ref_stats.compute() if ref_stats is not None else {},
    )
    return AttentionReport(
        scores=scores,
        layers=list(recording_modules(model)),
        images=torch.cat([k[0] for k in kept]) if kept else torch.empty(0),
        pictures=torch.cat([k[1] for k in kept]) if kept else torch.empty(0),
        reference_pictures=torch.cat([k[2] for k in kept]) if kept and reference is not None else None,
        num_images=seen,
        accuracy=results["model"].accuracy,
        reference_accuracy=results["reference"].accuracy if reference is not None else None,
    )
