"""Build backbones: a timm ViT plus a surgery variant, from a name, a weights file or a run checkpoint.

Every source of pretrained weights goes through timm's own pretrained path
(``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=...)``), so timm adapts the input
channels, resamples position embeddings to a new image size and resets the head when the class
count differs:

* a weights file (``.safetensors/.pth/.pt/.bin``): ``overlay = {file, num_classes, input_size}``,
  the class count and channels read from the file (or timm silently drops the head);
* a run checkpoint (``.ckpt`` written by ``convshare train/convert/finetune``): its network is
  rebuilt and turned into timm's ``nn.Linear`` layout (:func:`linear_state_dict`, exact) and passed
  as ``overlay = {state_dict, ...}``; its architecture kwargs are the defaults;
* the hub (``pretrained=True``): timm's download, guarded so that a machine without network fails
  in seconds instead of the hub client's ~45 s of retries (:func:`check_hub_download`).

:func:`load_run_checkpoint` instead rebuilds a run checkpoint's exact network (its own surgery).
"""
from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import timm
import torch
from torch import nn

from .errors import ConfigError
from .layers import ConvShareLinear
from .surgery import SurgeryReport, apply_surgery
from .surgery.init import layer_matrix

__all__ = [
    "Backbone",
    "HUB_PROBE_TIMEOUT_S",
    "WEIGHT_SUFFIXES",
    "check_hub_download",
    "checkpoint_model_config",
    "create_backbone",
    "linear_state_dict",
    "load_backbone",
    "load_run_checkpoint",
    "read_run_checkpoint",
    "source_num_classes",
]

log = logging.getLogger(__name__)

#: timm-loadable weight files (``timm.models.load_state_dict``)
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
#: a Lightning checkpoint written by ``convshare train`` / ``convert`` / ``finetune``
RUN_CHECKPOINT_SUFFIX = ".ckpt"
#: how long the hub reachability probe waits (the hub client itself retries for ~45 s)
HUB_PROBE_TIMEOUT_S = 3.0
_NOT_TIMM_KWARGS = ("name", "pretrained", "checkpoint")


class Backbone(NamedTuple):
    model: nn.Module
    report: SurgeryReport


# ----------------------------------------------------------------------------- weight files


def _file_traits(path: Path) -> dict[str, Any]:
    """``num_classes`` (from ``head.weight``) and ``in_chans`` (from the patch embedding) of a weights file."""
    shapes: dict[str, tuple[int, ...]] = {}
    keys = ("head.weight", "patch_embed.proj.weight")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys if k in f.keys()}
    else:
        state = timm.models.load_state_dict(str(path))
        shapes = {k: tuple(state[k].shape) for k in keys if k in state}
    return _traits(shapes)


def _traits(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "head.weight" in shapes:
        out["num_classes"] = int(shapes["head.weight"][0])
    if len(shapes.get("patch_embed.proj.weight", ())) == 4:
        out["in_chans"] = int(shapes["patch_embed.proj.weight"][1])
    return out


# ----------------------------------------------------------------------------- run checkpoints


def read_run_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``convshare train``/``convert``/``finetune`` and check its layout.

    Returns:
        The checkpoint dict (``hyper_parameters`` with ``model`` and ``surgery``, ``state_dict`` with
        ``net.``-prefixed keys, and whatever else its writer stored).

    Raises:
        ConfigError: missing file or a checkpoint without our hyperparameters.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"run checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated or foreign files
        raise ConfigError(f"cannot read checkpoint {path}: {e}") from None
    hparams = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    if "model" not in hparams or "state_dict" not in ckpt:
        raise ConfigError(
            f"{path} is not a checkpoint written by `convshare train`, `convert` or `finetune` "
            "(no model hyperparameters); for plain weights use a .safetensors/.pth/.bin file with a model name"
        )
    return ckpt


def checkpoint_model_config(path: str | Path) -> dict[str, Any]:
    """``{name, **timm kwargs}`` of the network stored in a run checkpoint."""
    model = dict(read_run_checkpoint(path)["hyper_parameters"]["model"])
    return {k: v for k, v in model.items() if k not in ("pretrained", "checkpoint")}


def _rebuild(ckpt: Mapping[str, Any]) -> Backbone:
    hparams = ckpt["hyper_parameters"]
    kwargs = {k: v for k, v in dict(hparams["model"]).items() if k not in ("pretrained", "checkpoint")}
    backbone = create_backbone(kwargs.pop("name"), hparams.get("surgery", "vit"), **kwargs)
    state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    backbone.model.load_state_dict(state)
    return backbone


def load_run_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Backbone:
    """Rebuild the exact network of a ``convshare train``/``convert``/``finetune`` checkpoint with its weights.

    Raises:
        ConfigError: missing file or a checkpoint that none of those commands wrote.
    """
    return _rebuild(read_run_checkpoint(path, map_location))


def linear_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict in timm's layout: every ConvShare layer as an ``nn.Linear`` weight.

    A shared ConvShare layer computes ``x @ M.T + b`` for the dense matrix ``M`` of its conv
    (:func:`~lightning_convshare.surgery.init.layer_matrix`), so storing ``M`` is exact: a timm ViT
    with these weights computes the same function (for whole-map valid kernels ``M`` is the kernel
    bank itself). Backend state (optical noise settings, ...) is dropped.

    Raises:
        ConfigError: for per-token (``shared=False``) layers, which have one matrix per token.
    """
    state = model.state_dict()
    for name, module in model.named_modules():
        if not isinstance(module, ConvShareLinear):
            continue
        if not module.shared:
            raise ConfigError(
                f"{name} has one kernel bank per token (shared=false), which is not one linear map; "
                "only shared ConvShare layers can be turned back into a timm ViT"
            )
        for key in [k for k in state if k.startswith(name + ".")]:
            del state[key]
        with torch.no_grad():
            state[f"{name}.weight"] = layer_matrix(module).detach().clone()  # D_out, D_in
        if module.bias is not None:
            state[f"{name}.bias"] = module.bias.detach().clone()
    return state


# ----------------------------------------------------------------------------- hub


def _offline_env() -> bool:
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
    if _offline_env():
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


# ----------------------------------------------------------------------------- create / load


def _pretrained_overlay(name: str, path: Path, timm_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The timm overlay for a local weights file or run checkpoint (``timm_kwargs`` updated in place)."""
    if not path.is_file():
        raise ConfigError(f"checkpoint file {path} does not exist")
    if path.suffix == RUN_CHECKPOINT_SUFFIX:
        ckpt = read_run_checkpoint(path)
        arch = {k: v for k, v in dict(ckpt["hyper_parameters"]["model"]).items() if k not in _NOT_TIMM_KWARGS}
        for key, value in arch.items():  # the checkpoint's architecture, unless the caller says otherwise
            timm_kwargs.setdefault(key, value)
        state = linear_state_dict(_rebuild(ckpt).model)
        overlay: dict[str, Any] = {"state_dict": state}
        traits = _traits({k: tuple(v.shape) for k, v in state.items()})
        img = arch.get("img_size")
    elif path.suffix in WEIGHT_SUFFIXES:
        overlay, traits, img = {"file": str(path)}, _file_traits(path), None
    else:
        raise ConfigError(f"checkpoint {path}: expected one of {list(WEIGHT_SUFFIXES)} or a run's {RUN_CHECKPOINT_SUFFIX}")
    if "num_classes" in traits:  # else timm compares with its default and silently drops the head
        overlay["num_classes"] = traits["num_classes"]
    if "in_chans" in traits:  # the file's channels, so timm adapts the patch embedding when they differ
        if img is None:
            registered = timm.models.get_pretrained_cfg(name)
            img = tuple(registered.input_size[-2:]) if registered is not None else 224
        hw = tuple(img) if isinstance(img, (list, tuple)) else (img, img)
        overlay["input_size"] = (traits["in_chans"], *hw)
    return overlay


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
        name: timm model name, e.g. ``vit_tiny_patch16_224`` (a pretrained tag like ``.augreg_in21k`` is allowed).
        variant: surgery config (``{"name": "convshare", "padding": "same", ...}``) or a variant name.
        pretrained: load timm's pretrained weights for ``name`` from the hub (needs network; fails in
            seconds without it, see :func:`check_hub_download`).
        checkpoint: a local weights file (``.safetensors``/``.pth``/``.pt``/``.bin``) or a run checkpoint
            (``.ckpt``, turned into timm's linear layout by :func:`linear_state_dict`, whose architecture
            kwargs become the defaults), loaded through timm's pretrained path, so timm adapts the input
            channels, resamples position embeddings and resets the head when ``num_classes`` differs.
        **timm_kwargs: passed to ``timm.create_model`` (``img_size``, ``embed_dim``, ``num_heads`` ...).

    Returns:
        ``Backbone(model, report)``.

    Raises:
        ConfigError: unknown timm model, missing file, weights that do not fit, no network for the hub,
            or arguments timm rejects.
        GeometryError: the surgery cannot build a layer (message lists what would work).
    """
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ConfigError(f"timm has no model {name!r}; similar names: {close or timm.list_models('vit_tiny*')}")
    timm_kwargs = dict(timm_kwargs)
    if "num_classes" in timm_kwargs and timm_kwargs["num_classes"] is None:
        raise ConfigError(f"{name}: num_classes is null; set data.num_classes (the model groups take it from the data)")
    overlay = dict(timm_kwargs.pop("pretrained_cfg_overlay", None) or {})
    source = None
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        overlay.update(_pretrained_overlay(name, path, timm_kwargs))
        pretrained, source = True, str(path)
    elif pretrained:
        overlay.update(check_hub_download(name))
        source = f"the hub weights of {name}"
    if overlay:
        timm_kwargs["pretrained_cfg_overlay"] = overlay
    try:
        model = timm.create_model(name, pretrained=pretrained, **timm_kwargs)
    except (TypeError, AssertionError) as e:  # timm rejects an argument or an inconsistent combination
        shown = {k: v for k, v in timm_kwargs.items() if k != "pretrained_cfg_overlay"}
        raise ConfigError(f"timm.create_model({name!r}, **{shown}) failed: {e}") from None
    except OSError as e:  # hub / url download failures (HF_HUB_OFFLINE without a cached copy, ...)
        why = "HF_HUB_OFFLINE is set and they are not in the local cache" if _offline_env() else str(e).rstrip(".")
        raise ConfigError(f"cannot load the pretrained weights of {name}: {why}. Use a local weights file "
                          "(--checkpoint FILE) or run once with network to fill the cache") from None
    except RuntimeError as e:  # load_state_dict: shapes that do not fit
        if source is None:
            raise
        shown = {k: v for k, v in timm_kwargs.items() if k != "pretrained_cfg_overlay"}
        lines = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln or "Missing" in ln][:3]
        raise ConfigError(f"the weights in {source} do not fit timm {name}(**{shown}): {' '.join(lines) or e} "
                          "Choose the architecture they were trained with (model group or model.* overrides)") from None
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict):
        cfg.pop("state_dict", None)  # timm keeps a deep copy of an in-memory state dict; drop it
    report = apply_surgery(model, variant)
    return Backbone(model, report)


def source_num_classes(source: str | Path) -> int | None:
    """Class count of the classifier that ``source`` (run checkpoint, weights file, hub name) holds."""
    path = Path(str(source)).expanduser()
    if path.suffix == RUN_CHECKPOINT_SUFFIX:
        return checkpoint_model_config(path).get("num_classes")
    if path.suffix in WEIGHT_SUFFIXES:
        return _file_traits(path).get("num_classes") if path.is_file() else None
    try:
        cfg = timm.models.get_pretrained_cfg(str(source))
    except RuntimeError:
        return None
    return getattr(cfg, "num_classes", None)


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
