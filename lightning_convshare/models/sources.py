"""Where weights come from: the one place that tells a run checkpoint, a weights file and a hub name apart.

A *source* is what a user writes after ``init_from=``, ``distill.source=``, ``distill.teacher=``,
``reference.source=``, ``convert --checkpoint`` or ``attention CKPT``:

* a run checkpoint (``.ckpt`` written by ``convshare train/convert/finetune``): it carries its own
  architecture and surgery (:func:`~lightning_convshare.models.checkpoint.read_run_checkpoint`);
* a weights file (``.safetensors/.pth/.pt/.bin``, timm's layout): the architecture comes from the
  caller (``model.name`` and ``model.*``);
* anything else is a timm model name whose pretrained weights come from the hub (or its cache),
  guarded so that a machine without network fails in seconds (:func:`check_hub_download`).

:meth:`WeightSource.timm_overlay` turns a source into timm's ``pretrained_cfg_overlay`` so that timm's
own pretrained path loads it (adapting input channels, resampling position embeddings, resetting
the head when the class count differs).
"""
from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import timm
import torch

from ..errors import ConfigError
from .checkpoint import RUN_CHECKPOINT_SUFFIX, linear_state_dict, read_run_checkpoint, safe_load

__all__ = [
    "HUB_PROBE_TIMEOUT_S",
    "WEIGHT_SUFFIXES",
    "WeightSource",
    "check_hub_download",
    "resolve_source",
]

log = logging.getLogger(__name__)

#: timm-loadable weight files (``timm.models.load_state_dict``)
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
#: how long the hub reachability probe waits (the hub client itself retries for ~45 s)
HUB_PROBE_TIMEOUT_S = 3.0
#: model config keys that are not ``timm.create_model`` kwargs
NOT_TIMM_KEYS = ("name", "pretrained", "checkpoint")

RUN, FILE, HUB = "run", "file", "hub"


@dataclass(frozen=True)
class WeightSource:
    """A resolved weight source: ``kind`` is ``run``, ``file`` or ``hub``; ``ref`` a path or a hub name."""

    kind: str
    ref: str

    @property
    def path(self) -> Path:
        if self.kind == HUB:
            raise ConfigError(f"{self.ref} is a hub name, not a file")
        return Path(self.ref)

    @property
    def is_run(self) -> bool:
        return self.kind == RUN

    def describe(self) -> str:
        return {RUN: f"run checkpoint {self.ref}", FILE: f"weights file {self.ref}", HUB: f"the hub weights of {self.ref}"}[
            self.kind]

    def checkpoint(self) -> dict[str, Any]:
        """The run checkpoint's contents (``kind == "run"`` only)."""
        if self.kind != RUN:
            raise ConfigError(f"{self.describe()} is not a run checkpoint")
        return read_run_checkpoint(self.ref)

    def architecture(self) -> Optional[dict[str, Any]]:
        """``{name, **timm kwargs}`` of a run checkpoint's network (``None`` for other sources)."""
        if self.kind != RUN:
            return None
        model = dict(self.checkpoint()["hyper_parameters"]["model"])
        return {k: v for k, v in model.items() if k not in ("pretrained", "checkpoint")}

    def num_classes(self) -> Optional[int]:
        """Class count of the classifier the source holds (``None`` when unknown)."""
        if self.kind == RUN:
            return (self.architecture() or {}).get("num_classes")
        if self.kind == FILE:
            return file_traits(self.path).get("num_classes")
        try:
            cfg = timm.models.get_pretrained_cfg(self.ref)
        except RuntimeError:
            return None
        return getattr(cfg, "num_classes", None)

    def timm_overlay(
        self, name: str, timm_kwargs: dict[str, Any], rebuild: Callable[[WeightSource], torch.nn.Module]
    ) -> dict[str, Any]:
        """timm's ``pretrained_cfg_overlay`` that loads this source into ``timm.create_model(name)``.

        Args:
            name: the timm architecture being created.
            timm_kwargs: its kwargs; a run checkpoint's architecture fills in the keys missing here
                (updated in place).
            rebuild: builds a run checkpoint's exact network (the factory), whose weights are then
                given to timm in its linear layout (:func:`linear_state_dict`, exact).
        """
        if self.kind == HUB:
            return check_hub_download(self.ref)
        if self.kind == RUN:
            arch = self.architecture() or {}
            for key, value in arch.items():  # the checkpoint's architecture, unless the caller says otherwise
                if key != "name":
                    timm_kwargs.setdefault(key, value)
            state = linear_state_dict(rebuild(self))
            overlay: dict[str, Any] = {"state_dict": state}
            keys = list(state)
            traits = _traits({k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)})
            img = arch.get("img_size")
        else:
            overlay, img = {"file": self.ref}, None
            keys, traits = file_keys(self.path), file_traits(self.path)
        check_keys_fit(self, name, timm_kwargs, keys)
        if "num_classes" in traits:  # else timm compares with its default and silently drops the head
            overlay["num_classes"] = traits["num_classes"]
        if "in_chans" in traits:  # the file's channels, so timm adapts the patch embedding when they differ
            if img is None:
                registered = timm.models.get_pretrained_cfg(name)
                img = tuple(registered.input_size[-2:]) if registered is not None else 224
            hw = tuple(img) if isinstance(img, (list, tuple)) else (img, img)
            overlay["input_size"] = (traits["in_chans"], *hw)
        return overlay


def resolve_source(source: str | os.PathLike) -> WeightSource:
    """Decide what ``source`` is (the only place that looks at file suffixes).

    Raises:
        ConfigError: a file path (checkpoint or weights suffix) that does not exist.
    """
    text = str(source).strip()
    if not text:
        raise ConfigError("an empty weight source: give a run .ckpt, a weights file or a timm model name")
    path = Path(text).expanduser()
    if path.suffix == RUN_CHECKPOINT_SUFFIX:
        if not path.is_file():
            raise ConfigError(f"run checkpoint {path} does not exist")
        return WeightSource(RUN, str(path))
    if path.suffix in WEIGHT_SUFFIXES:
        if not path.is_file():
            raise ConfigError(f"weights file {path} does not exist")
        return WeightSource(FILE, str(path))
    if path.exists() or ("/" in text and not text.startswith(("hf-hub:", "hf_hub:"))):
        raise ConfigError(f"{text}: expected a run checkpoint ({RUN_CHECKPOINT_SUFFIX}), a weights file "
                          f"({', '.join(WEIGHT_SUFFIXES)}) or a timm model name")
    return WeightSource(HUB, text)


# ----------------------------------------------------------------------------- weight files


def file_traits(path: Path) -> dict[str, Any]:
    """``num_classes`` (from ``head.weight``) and ``in_chans`` (from the patch embedding) of a weights file.

    Raises:
        ConfigError: a file that is not a readable state dict of tensors.
    """
    keys = ("head.weight", "patch_embed.proj.weight")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), "pt") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys if k in f.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise ConfigError(f"cannot read weights file {path}: {str(e)[:200]}") from None
    else:
        state = _state_of(path)
        shapes = {k: tuple(state[k].shape) for k in keys if k in state}
    return _traits(shapes)


def file_keys(path: Path) -> list[str]:
    """The parameter names a weights file holds (``module.`` prefixes removed)."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), "pt") as f:
                return [k.removeprefix("module.") for k in f.keys()]
        except (SafetensorError, OSError, ValueError) as e:
            raise ConfigError(f"cannot read weights file {path}: {str(e)[:200]}") from None
    return list(_state_of(path))


#: parameters of timm ViT checkpoints that timm's loader drops on purpose (distillation head, old pre-logits)
_DROPPED_BY_TIMM = ("head_dist.", "dist_token", "pre_logits.", "head.")


def check_keys_fit(source: WeightSource, name: str, timm_kwargs: Mapping[str, Any], keys: list[str]) -> None:
    """Refuse weights that would leave parts of ``timm.create_model(name, **timm_kwargs)`` random.

    timm loads pretrained weights non-strictly in places (unexpected keys are only logged), so a
    depth-1 file loaded into a depth-4 model, or a ResNet's weights into a ViT, would otherwise train
    from partly or wholly random weights. The classifier head may be missing or of another size (it is
    reset when the class count differs).

    Raises:
        ConfigError: the missing and unexpected parameter names.
    """
    kwargs = {k: v for k, v in timm_kwargs.items() if k != "pretrained_cfg_overlay"}
    try:
        with torch.device("meta"):
            expected = set(timm.create_model(name, pretrained=False, **kwargs).state_dict())
    except Exception:  # an argument timm rejects: create_network reports it with its own message
        return
    have = set(keys)
    missing = sorted(k for k in expected - have if not k.startswith("head."))
    unexpected = sorted(k for k in have - expected if not k.startswith(_DROPPED_BY_TIMM))
    if missing or unexpected:
        shown = {k: v for k, v in kwargs.items()}
        parts = [f"missing {len(missing)} of the model's parameters, e.g. {missing[:4]}" if missing else "",
                 f"{len(unexpected)} unexpected ones, e.g. {unexpected[:4]}" if unexpected else ""]
        if source.is_run:
            surgery = source.checkpoint()["hyper_parameters"].get("surgery")
            surgery = surgery.get("name", "vit") if isinstance(surgery, Mapping) else str(surgery)
            advice = (f"its network ({surgery}) has layers a timm ViT does not have; start from a `vit` or `convshare` "
                      "run instead")
        else:
            advice = ("choose the architecture they were trained with (model group or model.* overrides, e.g. "
                      "model.depth), or a source that is a timm ViT")
        raise ConfigError(f"the weights in {source.describe()} do not fit timm {name}(**{shown}): "
                          + "; ".join(p for p in parts if p) + f". {advice[0].upper()}{advice[1:]}")


def _state_of(path: Path) -> Mapping[str, torch.Tensor]:
    """A ``.pth/.pt/.bin`` weights file's state dict, read without running code (timm's wrappers unwrapped)."""
    state = safe_load(path, what="weights file")
    if isinstance(state, Mapping):
        for key in ("state_dict", "model", "state_dict_ema"):  # timm.models.load_state_dict's wrappers
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path} is not a state dict of tensors (a timm weights file)")
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def _traits(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "head.weight" in shapes:
        out["num_classes"] = int(shapes["head.weight"][0])
    if len(shapes.get("patch_embed.proj.weight", ())) == 4:
        out["in_chans"] = int(shapes["patch_embed.proj.weight"][1])
    return out


# ----------------------------------------------------------------------------- hub


def offline_env() -> bool:
    """``HF_HUB_OFFLINE`` is set: the hub client will not touch the network."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _reachable(url: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """One HEAD request, proxies honoured, no retries: does the server answer at all?"""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
        return True
    except urllib.error.HTTPError:  # an answer, even 4xx/5xx, means the network works
        return True
    except (OSError, ValueError):
        return False


def _cached_weights(cfg: Any) -> Path | None:
    """A complete local copy of the pretrained weights (HF cache or torch hub cache), if any."""
    if cfg.hf_hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else [
            "model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for filename in names:
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str):
                return Path(found)
        return None
    if cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
        return path if path.is_file() else None
    return None


def check_hub_download(name: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> dict[str, Any]:
    """Make ``timm.create_model(name, pretrained=True)`` fail fast without network.

    With ``HF_HUB_OFFLINE=1`` the hub client fails at once by itself (or loads from its cache), so
    nothing is probed. Otherwise one HEAD request with a ``timeout`` probes the weights' server;
    if it does not answer, a complete cached copy is used (returned as a ``file`` overlay) or a
    :class:`ConfigError` says what to do. Without this, the hub client retries for about 45 s.

    Returns:
        Extra ``pretrained_cfg_overlay`` entries (empty: let timm download or use its cache).

    Raises:
        ConfigError: no pretrained weights for ``name``, or no network and no cached copy.
    """
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError as e:  # a tag the architecture does not have
        tags = timm.list_pretrained(f"{name.split('.')[0]}*")[:8]
        raise ConfigError(f"{e} Pretrained tags: {tags}") from None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise ConfigError(f"timm has no pretrained weights for {name!r}; pretrained models like it: "
                          f"{timm.list_pretrained(name.split('_')[0] + '*')[:8]}")
    if offline_env():
        return {}
    if cfg.hf_hub_id:
        from huggingface_hub import constants

        probe = constants.ENDPOINT
    else:
        probe = cfg.url
    if _reachable(probe, timeout):
        return {}
    cached = _cached_weights(cfg)
    if cached is not None:
        log.warning("%s did not answer within %.0f s; loading %s's weights from the local cache %s", probe, timeout, name, cached)
        return {"file": str(cached), "custom_load": bool(cfg.custom_load) and not cfg.hf_hub_id}
    raise ConfigError(
        f"cannot download the pretrained weights of {name}: {probe} did not answer within {timeout:.0f} s "
        "(no network?) and they are not in the local cache. Use a local file instead (--checkpoint FILE, "
        "or distill.source=FILE with model.name), or run once with network to fill the cache "
        "(HF_HUB_OFFLINE=1 then loads from the cache without asking the network)"
    )
