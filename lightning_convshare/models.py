"""Build backbones: a timm ViT plus a surgery variant, from a name, a weights file or a run checkpoint."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import timm
import torch
from torch import nn

from .errors import ConfigError
from .surgery import SurgeryReport, apply_surgery

__all__ = ["Backbone", "WEIGHT_SUFFIXES", "create_backbone", "load_backbone", "load_run_checkpoint"]

#: timm-loadable weight files (``timm.models.load_state_dict``)
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
#: a Lightning checkpoint written by ``convshare train``
RUN_CHECKPOINT_SUFFIX = ".ckpt"


class Backbone(NamedTuple):
    model: nn.Module
    report: SurgeryReport


def _head_classes(path: Path) -> int | None:
    """Class count of the classifier stored in a weights file (``head.weight``), if any."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return f.get_slice("head.weight").get_shape()[0] if "head.weight" in f.keys() else None
    state = timm.models.load_state_dict(str(path))
    head = state.get("head.weight")
    return int(head.shape[0]) if head is not None else None


def create_backbone(
    name: str,
    variant: Mapping[str, Any] | str = "vit",
    *,
    pretrained: bool = False,
    checkpoint: str | Path | None = None,
    **timm_kwargs: Any,
) -> Backbone:
    """Create a timm model (optionally with pretrained weights) and apply a surgery variant to it.

    Args:
        name: timm model name, e.g. ``vit_tiny_patch16_224``.
        variant: surgery config (``{"name": "convshare", "padding": "same", ...}``) or a variant name.
        pretrained: load timm's pretrained weights for ``name`` (hub or URL; needs network).
        checkpoint: a local weights file (``.safetensors``/``.pth``/``.pt``/``.bin``) loaded through
            timm's pretrained path (``pretrained_cfg_overlay=dict(file=...)``), so timm adapts the
            input channels, resamples position embeddings and resets the head when
            ``num_classes`` differs from the file's.
        **timm_kwargs: passed to ``timm.create_model`` (``img_size``, ``embed_dim``, ``num_heads`` ...).

    Returns:
        ``Backbone(model, report)``.

    Raises:
        ConfigError: unknown timm model, missing file, or arguments timm rejects.
        GeometryError: the surgery cannot build a layer (message lists what would work).
    """
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ConfigError(f"timm has no model {name!r}; similar names: {close or timm.list_models('vit_tiny*')}")
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if path.suffix == RUN_CHECKPOINT_SUFFIX:
            raise ConfigError(f"{path} is a training-run checkpoint; load it with load_backbone({str(path)!r})")
        if path.suffix not in WEIGHT_SUFFIXES:
            raise ConfigError(f"checkpoint {path}: expected one of {list(WEIGHT_SUFFIXES)} (or a run's {RUN_CHECKPOINT_SUFFIX})")
        if not path.is_file():
            raise ConfigError(f"checkpoint file {path} does not exist")
        overlay = {**timm_kwargs.pop("pretrained_cfg_overlay", {}), "file": str(path)}
        file_classes = _head_classes(path)
        if file_classes is not None:  # else timm compares with its default and silently drops the head
            overlay["num_classes"] = file_classes
        timm_kwargs["pretrained_cfg_overlay"] = overlay
        pretrained = True
    try:
        model = timm.create_model(name, pretrained=pretrained, **timm_kwargs)
    except (TypeError, AssertionError) as e:  # timm rejects an argument or an inconsistent combination
        raise ConfigError(f"timm.create_model({name!r}, **{timm_kwargs}) failed: {e}") from None
    report = apply_surgery(model, variant)
    return Backbone(model, report)


def load_run_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Backbone:
    """Rebuild the exact network of a ``convshare train`` checkpoint (model + surgery) with its weights.

    Raises:
        ConfigError: missing file or a checkpoint that ``convshare train`` did not write.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"run checkpoint {path} does not exist")
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    hparams = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    if "model" not in hparams or "state_dict" not in ckpt:
        raise ConfigError(f"{path} is not a checkpoint written by `convshare train` (no model hyperparameters)")
    kwargs = dict(hparams["model"])
    backbone = create_backbone(kwargs.pop("name"), hparams.get("surgery", "vit"), **kwargs)
    state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    backbone.model.load_state_dict(state)
    return backbone


def load_backbone(
    source: str | Path, *, name: str | None = None, variant: Mapping[str, Any] | str = "vit", **timm_kwargs: Any
) -> Backbone:
    """One entry point for "a model from somewhere", e.g. a reference or a teacher.

    Args:
        source: a run checkpoint (``.ckpt``: rebuilt exactly, ``variant`` and kwargs ignored), a weights
            file (needs ``name``), or a timm model name (loaded with ``pretrained=True``).
        name: timm architecture for a weights file.
        variant: surgery variant applied to weights files and hub models.
        **timm_kwargs: ``timm.create_model`` kwargs (``num_classes``, ``img_size`` ...).
    """
    path = Path(str(source)).expanduser()
    if path.suffix == RUN_CHECKPOINT_SUFFIX:
        return load_run_checkpoint(path)
    if path.suffix in WEIGHT_SUFFIXES:
        if not name:
            raise ConfigError(f"loading weights file {path} needs the timm architecture name (e.g. vit_tiny_patch16_224)")
        return create_backbone(name, variant, checkpoint=path, **timm_kwargs)
    return create_backbone(str(source), variant, pretrained=True, **timm_kwargs)
