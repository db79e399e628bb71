"""Our checkpoints: write one without a Trainer (``convshare convert``) and start a run from one (``init_from``).

The format is Lightning's: ``hyper_parameters = {model, surgery, optim, loss}`` and a
``net.``-prefixed ``state_dict``, so ``ConvShareClassifier.load_from_checkpoint(path)``,
``models.load_backbone(path)`` and ``init_from=path`` all rebuild the network.
"""
from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from ..errors import ConfigError
from ..models import RUN_CHECKPOINT_SUFFIX, WEIGHT_SUFFIXES, read_run_checkpoint

__all__ = ["DATA_KEYS", "load_adapted", "resolve_init_from", "save_checkpoint", "source_model_kwargs"]

log = logging.getLogger(__name__)

#: model keys that follow the data (``${data.*}`` in the model groups) rather than the checkpoint
DATA_KEYS = ("img_size", "in_chans", "num_classes")


def save_checkpoint(
    path: str | os.PathLike, model: nn.Module, hparams: Mapping[str, Any], **extra: Any
) -> Path:
    """Write ``model`` as a checkpoint that ``ConvShareClassifier.load_from_checkpoint`` reads.

    Args:
        path: output ``.ckpt`` (written atomically; parent directories are created).
        model: the network (stored under ``net.``).
        hparams: ``{model: {name, **timm kwargs}, surgery, optim, loss}``.
        **extra: further top-level entries (e.g. the conversion report).
    """
    path = Path(path)
    if path.suffix != RUN_CHECKPOINT_SUFFIX:
        raise ConfigError(f"output checkpoint {path} must end in {RUN_CHECKPOINT_SUFFIX}")
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "state_dict": {f"net.{k}": v.detach().cpu() for k, v in model.state_dict().items()},
        "hyper_parameters": copy.deepcopy(dict(hparams)),
        "pytorch-lightning_version": pl.__version__,
        "epoch": 0,
        "global_step": 0,
        **extra,
    }
    tmp = path.with_suffix(".ckpt.tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)
    return path


def source_model_kwargs(source: str, model: Mapping[str, Any]) -> dict[str, Any]:
    """``model`` config plus what loads ``source``: ``checkpoint=`` for files, ``pretrained`` + hub name otherwise."""
    out = {k: v for k, v in model.items() if k not in ("checkpoint", "pretrained")}
    suffix = Path(str(source)).suffix
    if suffix in (*WEIGHT_SUFFIXES, RUN_CHECKPOINT_SUFFIX):
        out["checkpoint"] = str(Path(str(source)).expanduser())
        out["pretrained"] = False
    else:
        out["name"], out["pretrained"] = str(source), True
    return out


def resolve_init_from(cfg: DictConfig) -> dict[str, Any] | None:
    """Point ``cfg`` at the network ``cfg.init_from`` holds and return what to load into it.

    * a ``.ckpt`` from ``convshare train/convert/finetune``: ``cfg.model`` and ``cfg.surgery`` become the
      checkpoint's (so the run's ``config.yaml`` describes the network trained), except the keys that
      follow the data (``img_size``, ``in_chans``, ``num_classes``); returns the checkpoint, whose
      weights :func:`load_adapted` loads;
    * a weights file or a timm hub name: the configured model and surgery, initialised from those
      weights through timm's pretrained path (``cfg.model`` gains ``checkpoint``/``pretrained``); returns ``None``.

    Raises:
        ConfigError: missing or foreign checkpoint.
    """
    source = cfg.get("init_from")
    if not source:
        return None
    model = OmegaConf.to_container(cfg.model, resolve=True)
    if Path(str(source)).suffix != RUN_CHECKPOINT_SUFFIX:
        with open_dict(cfg):
            cfg.model = source_model_kwargs(str(source), model)
        return None
    ckpt = read_run_checkpoint(source)
    hparams = ckpt["hyper_parameters"]
    net = {k: v for k, v in dict(hparams["model"]).items() if k not in ("checkpoint",)}
    net.update({k: model[k] for k in DATA_KEYS if k in model})
    net["pretrained"] = False
    with open_dict(cfg):
        cfg.model = net
        cfg.surgery = copy.deepcopy(hparams.get("surgery", {"name": "vit"}))
    log.info("init_from %s: model %s with surgery %s", source, net["name"], dict(cfg.surgery))
    return ckpt


def load_adapted(net: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load a network's weights into ``net``, adapting what follows the data, as timm's pretrained path does.

    Position embeddings and patch embeddings are resampled by timm's ViT checkpoint filter when
    the image or patch grid differs; the patch embedding is adapted (``adapt_input_conv``) when the
    channels differ; a classifier of another size is left freshly initialised.

    Raises:
        ConfigError: weights that do not fit for any other reason (named, with both shapes).
    """
    from timm.models import adapt_input_conv
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = checkpoint_filter_fn(dict(state), net)
    own = net.state_dict()
    key = "patch_embed.proj.weight"
    if key in state and key in own and state[key].shape[1] != own[key].shape[1]:
        log.info("%s: input channels adapted from %d to %d", source, state[key].shape[1], own[key].shape[1])
        state[key] = adapt_input_conv(own[key].shape[1], state[key], base_chans=state[key].shape[1])
    head = [k for k in ("head.weight", "head.bias") if k in state and k in own and state[k].shape != own[k].shape]
    for k in head:
        del state[k]
    if head:
        log.info("%s: the classifier has another class count; the head is freshly initialised", source)
    bad = [f"{k}: {tuple(v.shape)} in {source}, {tuple(own[k].shape)} in the model"
           for k, v in state.items() if k in own and v.shape != own[k].shape]
    missing = [k for k in own if k not in state and k not in head]
    unexpected = [k for k in state if k not in own]
    if bad or missing or unexpected:
        raise ConfigError(
            f"the weights in {source} do not fit the network: "
            + "; ".join(filter(None, [", ".join(bad[:3]), f"missing {missing[:5]}" if missing else "",
                                      f"unexpected {unexpected[:5]}" if unexpected else ""]))
        )
    net.load_state_dict(state, strict=False)
