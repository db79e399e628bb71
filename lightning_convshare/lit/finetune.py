"""The LightningModule of a run that starts from pretrained weights (``init_from``) and/or distils (``distill``)."""
from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf, open_dict

from ..errors import ConfigError
from .checkpoint import load_adapted, resolve_init_from, source_model_kwargs
from .distill import DistillClassifier
from .module import ConvShareClassifier

__all__ = ["build_finetune_module"]

log = logging.getLogger(__name__)


def build_finetune_module(cfg: DictConfig) -> ConvShareClassifier:
    """The LightningModule of a run with ``init_from`` and/or ``distill`` set.

    ``cfg`` is updated in place so that it describes the network built (``init_from``: the
    checkpoint's model and surgery; ``distill.source``: ``model.checkpoint``/``model.pretrained``),
    which is what the run saves as its ``config.yaml``.

    Raises:
        ConfigError: neither or both of ``distill.source`` and ``init_from``, and the errors of
            :func:`resolve_init_from` and :class:`DistillClassifier`.
    """
    distill = OmegaConf.to_container(cfg.distill, resolve=True) if cfg.get("distill") else None
    if distill is not None and distill.get("source") and cfg.get("init_from"):
        raise ConfigError("set one of distill.source (a pretrained ViT to convert) and init_from (a network to "
                          f"continue), not both: got {distill['source']} and {cfg.init_from}")
    ckpt = resolve_init_from(cfg)
    if distill is not None:
        if distill.get("source"):
            with open_dict(cfg):
                cfg.model = source_model_kwargs(distill["source"], OmegaConf.to_container(cfg.model, resolve=True))
        elif not cfg.get("init_from"):
            raise ConfigError("fine-tuning needs distill.source=<pretrained ViT: .ckpt, weights file or hub name> "
                              "(convshare finetune --source ...) or init_from=<converted .ckpt>")
        elif not distill.get("teacher"):
            recorded = ((ckpt or {}).get("convshare") or {}).get("source") or {}
            if not recorded.get("checkpoint"):
                raise ConfigError(f"init_from={cfg.init_from} does not record the model it was converted from; "
                                  "set distill.teacher=<the original ViT>")
            distill["teacher"] = recorded["checkpoint"]
            log.info("teacher: %s (recorded by convshare convert)", distill["teacher"])
    plain = OmegaConf.to_container(cfg, resolve=True)
    args = (plain["model"], plain["surgery"], plain["optim"], plain["loss"])
    module = DistillClassifier(*args, distill=distill) if distill is not None else ConvShareClassifier(*args)
    if ckpt is not None:
        state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
        load_adapted(module.net, state, str(cfg.init_from))
    return module
