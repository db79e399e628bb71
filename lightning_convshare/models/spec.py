"""What a network is: a timm architecture, its kwargs, a surgery and where its weights come from.

A :class:`ModelSpec` is plain data. Every network the package builds (the trained model, the
fine-tuning student and its teacher, the linear layers of a progressive conversion, the attention
reference, the sweep validator's meta-device check, the speed model, ``convshare convert``) is
``create_network(spec)`` of one (:mod:`lightning_convshare.models.factory`), and the specs come from
the constructors below:

* :meth:`ModelSpec.from_config`: a run's resolved config (``model``, ``surgery``, ``init_from``);
* :meth:`ModelSpec.from_hparams`: a checkpoint's hyperparameters (no weight source: the weights
  are in the checkpoint);
* :meth:`ModelSpec.from_source`: "a model from somewhere" (a run checkpoint, a weights file or a
  hub name), e.g. a teacher or a reference.

Weights come in at one of two moments: ``pretrained`` (a source in timm's linear layout, loaded by
timm *before* the surgery converts the layers) or ``state`` (a run checkpoint of this very network,
loaded *after* the surgery, with position embeddings, channels and head adapted to the kwargs).
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from ..errors import ConfigError
from .sources import NOT_TIMM_KEYS, resolve_source

__all__ = ["DATA_KEYS", "ModelSpec"]

#: model keys that follow the data (``${data.*}`` in the model groups) rather than a checkpoint
DATA_KEYS = ("img_size", "in_chans", "num_classes")


def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain Python (a spec never holds config nodes)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return copy.deepcopy(value)


@dataclass(frozen=True)
class ModelSpec:
    """A network to build.

    Attributes:
        name: timm architecture, e.g. ``vit_tiny_patch16_224`` (a pretrained tag is allowed).
        kwargs: ``timm.create_model`` kwargs (``img_size``, ``embed_dim``, ``num_classes`` ...).
        surgery: surgery config (``{name: convshare, padding: same, ...}``) or a variant name.
        pretrained: weights in timm's layout loaded before the surgery: a run checkpoint (in its
            linear form), a weights file or a hub name.
        state: a run checkpoint of this network, loaded after the surgery.
    """

    name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    surgery: Mapping[str, Any] | str = "vit"
    pretrained: Optional[str] = None
    state: Optional[str] = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ConfigError(f"a model needs a timm architecture name (model.name), got {self.name!r}")
        object.__setattr__(self, "kwargs", _plain(dict(self.kwargs)))
        object.__setattr__(self, "surgery", _plain(self.surgery))
        bad = sorted(set(self.kwargs) & set(NOT_TIMM_KEYS))
        if bad:
            raise ConfigError(f"{bad} are not timm.create_model kwargs (use ModelSpec.from_config)")

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_hparams(cls, model: Mapping[str, Any], surgery: Mapping[str, Any] | str = "vit") -> ModelSpec:
        """The network a checkpoint's hyperparameters describe (``{name, pretrained, **timm kwargs}``).

        A weight source recorded in ``model`` (``pretrained``, ``checkpoint``) is ignored: a checkpoint
        holds the weights itself, and rebuilding it never reads another file.
        """
        model = _plain(dict(model))
        if not model.get("name"):
            raise ConfigError(f"model hyperparameters without a name: {model}")
        kwargs = {k: v for k, v in model.items() if k not in NOT_TIMM_KEYS}
        return cls(str(model["name"]), kwargs, surgery)

    @classmethod
    def from_config(cls, cfg: Any) -> ModelSpec:
        """The network of a resolved run config (``model``, ``surgery`` and ``init_from``).

        ``model.checkpoint`` (a file) or ``model.pretrained: true`` (the hub weights of ``model.name``)
        become ``pretrained``; ``init_from`` pointing at a run checkpoint becomes ``state`` (the
        resolve step has already made ``model``/``surgery`` that checkpoint's).
        """
        model = _plain(cfg["model"])
        spec = cls.from_hparams(model, cfg["surgery"] if "surgery" in cfg else "vit")
        pretrained = model.get("checkpoint") or (str(model["name"]) if model.get("pretrained") else None)
        init = cfg.get("init_from") if hasattr(cfg, "get") else None
        state = str(init) if init and resolve_source(init).is_run else None
        return spec.replace(pretrained=None if state else pretrained, state=state)

    @classmethod
    def from_source(
        cls,
        source: str,
        *,
        name: Optional[str] = None,
        kwargs: Optional[Mapping[str, Any]] = None,
        data: Optional[Mapping[str, Any]] = None,
        surgery: Mapping[str, Any] | str = "vit",
        exact: bool = False,
    ) -> ModelSpec:
        """The network held by ``source`` (a run checkpoint, a weights file or a hub name).

        Args:
            source: where the weights are.
            name: timm architecture of a weights file (required for one).
            kwargs: timm kwargs for a weights file or hub model.
            data: ``img_size``/``in_chans``/``num_classes`` to adapt a run checkpoint's network to.
            surgery: applied to weights files, hub models and (``exact=False``) run checkpoints.
            exact: a run checkpoint is rebuilt as it is (its own surgery, its state); otherwise its
                linear form is the pretrained ViT that ``surgery`` converts.

        Raises:
            ConfigError: a weights file without ``name``, a missing file.
        """
        src = resolve_source(source)
        data = {k: v for k, v in dict(data or {}).items() if k in DATA_KEYS}
        if src.is_run:
            arch = src.architecture() or {}
            if exact:
                ckpt = src.checkpoint()["hyper_parameters"]
                spec = cls.from_hparams(ckpt["model"], ckpt.get("surgery", "vit"))
                return spec.replace(kwargs={**spec.kwargs, **data}, state=src.ref)
            return cls(str(arch.pop("name")), {**arch, **data}, surgery, pretrained=src.ref)
        if src.kind == "file":
            if not name:
                raise ConfigError(f"loading weights file {src.ref} needs the timm architecture name "
                                  "(e.g. vit_tiny_patch16_224)")
            return cls(str(name), dict(kwargs or {}), surgery, pretrained=src.ref)
        return cls(src.ref, dict(kwargs or {}), surgery, pretrained=src.ref)

    # ------------------------------------------------------------------ use

    def replace(self, **changes: Any) -> ModelSpec:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def with_surgery(self, surgery: Mapping[str, Any] | str) -> ModelSpec:
        return self.replace(surgery=surgery)

    def model_hparams(self) -> dict[str, Any]:
        """``{name, pretrained: False, **kwargs}``: what a checkpoint stores as ``hyper_parameters.model``."""
        return {"name": self.name, "pretrained": False, **copy.deepcopy(dict(self.kwargs))}

    @property
    def num_classes(self) -> Optional[int]:
        value = self.kwargs.get("num_classes")
        return None if value is None else int(value)

    def describe(self) -> str:
        surgery = self.surgery if isinstance(self.surgery, str) else self.surgery.get("name", "vit")
        weights = f", pretrained {self.pretrained}" if self.pretrained else (f", state {self.state}" if self.state else "")
        return f"{self.name} ({surgery}{weights})"
