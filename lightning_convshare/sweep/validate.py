"""Check a trial before launching it: compose its config and build its network on the meta device.

Starting ``convshare train`` costs seconds (torch, Lightning, W&B); composing the config and
building the surgered model on ``torch.device("meta")`` (shapes only, no memory, no maths) costs
tens of milliseconds and raises the same :class:`~lightning_convshare.errors.ConvShareError` the
trial would, e.g. a kernel that cannot fit a token map.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from ..config import compose
from ..errors import ConvShareError

__all__ = ["TrialCheck", "check_fixed_reference", "check_trial", "warm_up"]

log = logging.getLogger(__name__)


@dataclass
class TrialCheck:
    """Outcome of :func:`check_trial`: ``error`` is ``None`` for a runnable configuration."""

    config: Optional[DictConfig]
    error: Optional[str]
    seconds: float


def warm_up() -> None:
    """Import torch and timm and build one tiny ViT now, so that per-trial checks measure the check,
    not one-time imports and initialisation."""
    import torch

    from ..models import ModelSpec, create_network

    with torch.device("meta"):
        create_network(ModelSpec("vit_tiny_patch16_224", dict(img_size=8, patch_size=4, embed_dim=4, depth=1, num_heads=1),
                                 "convshare"))


def check_trial(overrides: Sequence[str], conf_dir: Optional[str] = None) -> TrialCheck:
    """Compose ``overrides`` and build the model on the meta device.

    Returns:
        ``TrialCheck(config, error, seconds)``; ``error`` holds the one-line message of a
        :class:`ConvShareError` (bad key or value, impossible geometry, unknown timm model).
        Other exceptions are not judged here: the trial itself will report them.
    """
    start = time.perf_counter()
    try:
        cfg = compose(list(overrides), conf_dir)
    except ConvShareError as e:
        return TrialCheck(None, str(e), time.perf_counter() - start)
    error = _check_reference(cfg) or _check_model(cfg)
    return TrialCheck(cfg, error, time.perf_counter() - start)


def check_fixed_reference(argv: Sequence[str], swept: Sequence[str]) -> None:
    """Refuse a sweep whose fixed arguments name a reference checkpoint that does not exist.

    Every trial would be ``invalid`` for the same reason, so the sweep stops before it starts, with
    the message that says how to make the reference. (A *swept* ``reference.source`` is judged per trial.)

    Args:
        argv: a trial's command line rendered with no parameters (the fixed arguments and overrides).
        swept: the sweep's parameter keys.

    Raises:
        ConfigError: the fixed reference file is missing.
    """
    from ..errors import ConfigError
    from .spec import train_overrides

    parsed = train_overrides(argv)
    if parsed is None or any(k == "reference" or k.startswith("reference.") for k in swept):
        return
    tokens = [t for t in parsed[1] if t.lstrip("-+").startswith("reference.")]
    if not tokens:
        return
    try:
        cfg = compose(tokens, parsed[0])
    except ConvShareError:
        return  # judged per trial, with the trial's own message
    error = _check_reference(cfg)
    if error:
        raise ConfigError(f"the sweep's fixed arguments: {error}")


def _check_reference(cfg: DictConfig) -> Optional[str]:
    """A reference given as a file must exist (e.g. the baseline a sweep compares attention with)."""
    from pathlib import Path

    from ..models import resolve_source

    source = OmegaConf.select(cfg, "reference.source", default=None)
    if not source:
        return None
    try:
        resolve_source(str(source))
    except ConvShareError as e:
        what = "no such file" if "does not exist" in str(e) else str(e)
        return (f"reference.source {source}: {what} (relative paths are from {Path.cwd()}); train the reference first, "
                "e.g. convshare train surgery=vit run.dir=<dir>, and point to its checkpoint")
    return None


def _check_model(cfg: DictConfig) -> Optional[str]:
    """Build the trial's network on the meta device (shapes only; weights are never read)."""
    import torch

    from ..models import ModelSpec, create_network

    if "model" not in cfg or "surgery" not in cfg or not OmegaConf.select(cfg, "model.name", default=None):
        return None
    try:
        spec = ModelSpec.from_hparams(OmegaConf.to_container(cfg.model, resolve=True),
                                      OmegaConf.to_container(cfg.surgery, resolve=True))
        with torch.device("meta"):
            create_network(spec)
    except ConvShareError as e:
        return str(e)
    except Exception as e:  # not a configuration error we know: let the trial run and report it
        log.debug("meta-device check of %s skipped: %r", cfg.model.name, e)
    return None
