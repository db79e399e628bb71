"""The LightningModule of a resolved run config: its networks built from specs, then handed to the module.

``create_module(cfg)`` is the one place that turns a run's config into networks
(:func:`~lightning_convshare.models.create_network` of :class:`~lightning_convshare.models.ModelSpec`
objects) and gives them to :class:`ConvShareClassifier` or, for fine-tuning, the student and its
teacher to :class:`DistillClassifier`. The config must come from
:func:`lightning_convshare.resolve.resolve`; nothing here edits it.
"""
from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..conversion import BlockSchedule, ShrinkSchedule, block_index, make_progressive, make_shrinking
from ..errors import ConfigError
from ..models import DATA_KEYS, ModelSpec, create_network, load_frozen, resolve_source
from ..resolve import resolve
from .distill_module import DistillClassifier, check_distill_options
from .module import ConvShareClassifier

__all__ = ["create_module", "teacher_spec"]

log = logging.getLogger(__name__)


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def teacher_spec(source: str, model: dict[str, Any]) -> ModelSpec:
    """The frozen teacher: ``source`` unconverted (a run checkpoint in its own architecture, adapted to
    the data; a weights file or hub name in the configured architecture)."""
    return ModelSpec.from_source(source, name=model["name"], kwargs=ModelSpec.from_hparams(model).kwargs,
                                 data={k: model[k] for k in DATA_KEYS if k in model})


def create_module(cfg: DictConfig) -> ConvShareClassifier:
    """The LightningModule for a run config (builds its networks; raises the geometry and config
    errors of a bad combination before anything is written).

    Args:
        cfg: a resolved config (:func:`lightning_convshare.resolve.resolve`); a composed one is
            resolved first.

    Raises:
        ConfigError, GeometryError: impossible configurations (what was wrong, what would work).
    """
    if not OmegaConf.is_readonly(cfg):
        cfg = resolve(cfg)
    spec = ModelSpec.from_config(cfg)
    args = dict(model=spec.model_hparams(), surgery=spec.surgery, optim=_plain(cfg.optim), loss=_plain(cfg.loss))
    if not cfg.get("distill"):
        net, report = create_network(spec)
        return ConvShareClassifier(net, report=report, **args)
    opts = check_distill_options(_plain(cfg.distill))
    model = _plain(cfg.model)
    source = opts["teacher"] or opts["source"] or spec.pretrained
    if not source:
        raise ConfigError("distillation needs a teacher: set distill.teacher (a .ckpt, weights file or hub name) "
                          "or distill.source")
    classes = resolve_source(source).num_classes()
    if float(opts["logit_weight"]) > 0 and classes is not None and classes != spec.num_classes:
        raise ConfigError(
            f"the teacher {source} predicts {classes} classes and the data has {spec.num_classes}: its head would "
            "be reset, so its logits carry no knowledge. Fine-tune a ViT on this data first (convshare train "
            "surgery=vit init_from=...) and pass it as distill.teacher, or set distill.logit_weight=0 (labels and "
            "attention only)"
        )
    t_spec = teacher_spec(str(source), model)
    net, report = create_network(spec)
    teacher = load_frozen(t_spec)
    schedule, shrink = None, None
    staged = "progressive" if opts["progressive"] else "shrink" if opts["shrink"] else None
    if staged:
        if not spec.pretrained:
            raise ConfigError(f"distill.{staged} needs distill.source (the linear layers to start from)")
        same = not opts["teacher"] or opts["teacher"] == opts["source"]
        linear_source = teacher if same else load_frozen(spec.with_surgery("vit"))
    if opts["progressive"]:
        converted = sorted({block_index(r.name) for r in report.layers if r.role in ("qkv", "proj", "fc1", "fc2")})
        if not converted:
            raise ConfigError("distill.progressive needs a surgery that converts layers (e.g. surgery=convshare)")
        schedule = BlockSchedule.create(converted, **dict(opts["progressive"]))
        init = spec.surgery.get("init", "transfer") if isinstance(spec.surgery, dict) else "transfer"
        make_progressive(net, linear_source, report, schedule, init)
    if opts["shrink"]:
        shrink = ShrinkSchedule.create(opts["shrink"])
        make_shrinking(net, linear_source, report)
    log.info("student: %s; teacher: %s", spec.describe(), t_spec.describe())
    return DistillClassifier(net, teacher, schedule=schedule, shrink=shrink, report=report, distill=opts, **args)
