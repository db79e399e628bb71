"""The one resolution step between composing a config and using it.

``compose`` (:mod:`lightning_convshare.config`) merges files and overrides; :func:`resolve` then makes
the config say exactly what will be built, and freezes it (read-only): nothing below this step
edits a config. What it settles:

* ``init_from``: a run checkpoint's architecture and surgery become ``model``/``surgery`` (the keys
  that follow the data, ``img_size``, ``in_chans``, ``num_classes``, and the conv backend, which follows
  the ``optics`` group, stay the config's); a weights file or hub name becomes ``model.checkpoint`` /
  ``model.pretrained`` of the configured model;
* ``distill.source``: the pretrained ViT the surgery converts, recorded the same way;
* ``distill.teacher`` of a run started from a ``convshare convert`` checkpoint: the model it was
  converted from, as recorded in that checkpoint.

:func:`resolve_convert` is the same step for ``convshare convert``.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf, open_dict

from .config import group_choices, parse_overrides
from .errors import ConfigError
from .models import DATA_KEYS, ModelSpec, resolve_source

__all__ = ["HARDWARE_KEYS", "ConvertJob", "resolve", "resolve_convert", "source_model"]

log = logging.getLogger(__name__)

#: surgery keys that say how the layers compute, not what they are: an ``init_from`` checkpoint's surgery
#: takes them from the config (``surgery.backend: ${optics}``), so ``optics=optical`` fine-tunes it through noise
HARDWARE_KEYS = ("backend", "backend_overrides")


def source_model(source: str, model: Mapping[str, Any]) -> dict[str, Any]:
    """``model`` config plus what loads ``source``: ``checkpoint=`` for files, the hub name and ``pretrained`` otherwise."""
    src = resolve_source(source)
    out = {"name": model["name"], **ModelSpec.from_hparams(model).kwargs}
    if src.kind == "hub":
        out["name"], out["pretrained"] = src.ref, True
    else:
        out["checkpoint"], out["pretrained"] = src.ref, False
    return out


def _thaw(cfg: DictConfig) -> DictConfig:
    """A deep, writable copy that keeps struct mode (unknown keys still fail)."""
    out = copy.deepcopy(cfg)
    OmegaConf.set_readonly(out, False)
    OmegaConf.set_struct(out, True)
    return out


def _freeze(cfg: DictConfig) -> DictConfig:
    OmegaConf.set_readonly(cfg, True)
    return cfg


def resolve(cfg: DictConfig) -> DictConfig:
    """The final config of a training or fine-tuning run (a new, read-only config).

    Raises:
        ConfigError: both or neither of ``distill.source`` and ``init_from`` for a fine-tune, a
            missing or foreign checkpoint, a converted checkpoint without a recorded source.
    """
    cfg = _thaw(cfg)
    init = cfg.get("init_from")
    distill = cfg.get("distill")
    source = distill.get("source") if distill else None
    if source and init:
        raise ConfigError("set one of distill.source (a pretrained ViT to convert) and init_from (a network to "
                          f"continue), not both: got {source} and {init}")
    model = OmegaConf.to_container(cfg.model, resolve=True)
    ckpt = None
    with open_dict(cfg):
        if init:
            src = resolve_source(str(init))
            if src.is_run:
                ckpt = src.checkpoint()
                hparams = ckpt["hyper_parameters"]
                net = {k: v for k, v in dict(hparams["model"]).items() if k != "checkpoint"}
                net.update({k: model[k] for k in DATA_KEYS if k in model})
                net["pretrained"] = False
                surgery = copy.deepcopy(hparams.get("surgery", {"name": "vit"}))
                configured = OmegaConf.to_container(cfg.surgery, resolve=True)
                if isinstance(surgery, dict) and isinstance(configured, dict):
                    for key in HARDWARE_KEYS:  # how the layers compute follows the config (the optics group)
                        if key in configured and key in surgery:
                            surgery[key] = configured[key]
                cfg.model = net
                cfg.surgery = surgery
                log.info("init_from %s: model %s with surgery %s", init, net["name"], dict(cfg.surgery))
            else:
                cfg.model = source_model(str(init), model)
        if distill is not None:
            if source:
                cfg.model = source_model(str(source), model)
            elif not init:
                raise ConfigError("fine-tuning needs distill.source=<pretrained ViT: .ckpt, weights file or hub name> "
                                  "(convshare finetune --source ...) or init_from=<converted .ckpt>")
            elif not distill.get("teacher"):
                recorded = ((ckpt or {}).get("convshare") or {}).get("source") or {}
                if not recorded.get("checkpoint"):
                    raise ConfigError(f"init_from={init} does not record the model it was converted from; "
                                      "set distill.teacher=<the original ViT>")
                cfg.distill.teacher = recorded["checkpoint"]
                log.info("teacher: %s (recorded by convshare convert)", cfg.distill.teacher)
    ModelSpec.from_config(cfg)  # a model the factory can build (name present, kwargs plain)
    return _freeze(cfg)


@dataclass(frozen=True)
class ConvertJob:
    """What ``convshare convert`` builds: the source ViT's spec and the final config (surgery, data, optim)."""

    source: ModelSpec
    config: DictConfig


def resolve_convert(
    cfg: DictConfig, overrides: Sequence[str], *, model: Optional[str] = None, checkpoint: Optional[str] = None,
    conf_dir: Optional[str] = None,
) -> ConvertJob:
    """Resolve ``convshare convert``: the source's architecture and the surgery's init.

    The architecture is the run checkpoint's, then a chosen model group, then explicit ``model.*``
    overrides; ``surgery.init`` is ``lstsq`` (the least-squares fit of each linear layer) unless the
    overrides set it.

    Raises:
        ConfigError: no architecture (neither ``--model`` nor a run checkpoint), missing files.
    """
    from .config import config_dir

    choices, sets = parse_overrides(overrides, group_choices(config_dir(conf_dir)))
    cfg = _thaw(cfg)
    explicit = {key for key, _, _ in sets}
    if "init" in cfg.surgery and not any(k == "surgery.init" for k in explicit):
        cfg.surgery.init = "lstsq"  # converting pretrained weights: best-fit kernels unless asked otherwise
    configured = OmegaConf.to_container(cfg.model, resolve=True)
    kwargs: dict[str, Any] = {}
    src = resolve_source(checkpoint) if checkpoint else None
    if src is not None and src.is_run:
        kwargs.update(src.architecture() or {})
    if "model" in choices:
        kwargs.update(configured)
    for key in explicit:
        if key.startswith("model.") and key.count(".") >= 1:
            sub = key.split(".")[1]
            kwargs[sub] = configured[sub]
    name = model or kwargs.get("name")
    if not name:
        raise ConfigError("convert needs --model NAME (the timm architecture), or a run .ckpt as --checkpoint")
    spec = ModelSpec.from_hparams({**kwargs, "name": name}).replace(pretrained=src.ref if src is not None else str(name))
    return ConvertJob(spec, _freeze(cfg))
