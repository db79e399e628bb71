"""``create_network(spec)``: the one function that turns a :class:`ModelSpec` into a network.

timm builds every model through ``build_model_with_cfg``; we build every network through this:
``timm.create_model`` (with timm's pretrained path when the spec has a ``pretrained`` source), then
the surgery, then the ``state`` of a run checkpoint. :func:`load_frozen` is the same for a model
that is only evaluated (a teacher or an attention reference).
"""
from __future__ import annotations

import logging
from typing import NamedTuple

import timm
import torch
from torch import nn

from ..errors import ConfigError
from ..surgery import SurgeryReport, apply_surgery
from .checkpoint import load_adapted, network_state, read_run_checkpoint
from .sources import WeightSource, offline_env, resolve_source
from .spec import ModelSpec

__all__ = ["Network", "create_network", "load_frozen", "load_run_checkpoint"]

log = logging.getLogger(__name__)


class Network(NamedTuple):
    """A built network and what its surgery did."""

    model: nn.Module
    report: SurgeryReport


def _shown(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k != "pretrained_cfg_overlay"}


def _exact(source: WeightSource) -> nn.Module:
    """A run checkpoint's own network with its weights (for its linear form)."""
    return create_network(ModelSpec.from_source(source.ref, exact=True)).model


_POSITIVE = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "in_chans", "num_classes")


def _check_kwargs(name: str, kwargs: dict) -> None:
    """Values timm would accept silently or fail on with a traceback: positive sizes, a patch grid that
    covers the image (timm drops the remainder pixels without a word), heads that divide the width."""
    def ints(key: str) -> list:
        value = kwargs.get(key)
        return list(value) if isinstance(value, (list, tuple)) else [value]

    for key in _POSITIVE:
        if key not in kwargs or kwargs[key] is None:
            continue
        for v in ints(key):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name}: {key}={kwargs[key]!r} must be a positive integer (model.{key})")
    ratio = kwargs.get("mlp_ratio")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or ratio <= 0):
        raise ConfigError(f"{name}: mlp_ratio={ratio!r} must be a positive number (model.mlp_ratio)")
    dim, heads = kwargs.get("embed_dim"), kwargs.get("num_heads")
    if isinstance(dim, int) and isinstance(heads, int) and dim % heads:
        divisors = [h for h in range(1, dim + 1) if dim % h == 0 and h <= 32]
        raise ConfigError(f"{name}: embed_dim={dim} is not divisible by num_heads={heads}; heads that divide it: {divisors}")
    img, patch = kwargs.get("img_size"), kwargs.get("patch_size")
    if img is not None and patch is not None and not kwargs.get("dynamic_img_pad"):
        sizes = ints("img_size") * (2 if not isinstance(img, (list, tuple)) else 1)
        patches = ints("patch_size") * (2 if not isinstance(patch, (list, tuple)) else 1)
        if any(s % p for s, p in zip(sizes, patches, strict=False)):
            fits = [s - s % patches[0] for s in sizes[:1]] + [s - s % patches[0] + patches[0] for s in sizes[:1]]
            raise ConfigError(f"{name}: img_size={img} is not a multiple of patch_size={patch}: timm would drop the "
                              f"remainder pixels; use data.img_size={fits[0]} or {fits[1]} (or another multiple of {patch})")


def create_network(spec: ModelSpec) -> Network:
    """Build the network ``spec`` describes.

    Runs under ``torch.device("meta")`` too (shapes only), which is how the sweep validator checks
    a trial before launching it.

    Returns:
        ``Network(model, report)``.

    Raises:
        ConfigError: unknown timm model, missing file, weights that do not fit, no network for the hub,
            or arguments timm rejects.
        GeometryError: the surgery cannot build a layer (message lists what would work).
    """
    name = spec.name
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ConfigError(f"timm has no model {name!r}; similar names: {close or timm.list_models('vit_tiny*')}")
    kwargs = dict(spec.kwargs)
    if "num_classes" in kwargs and kwargs["num_classes"] is None:
        raise ConfigError(f"{name}: num_classes is null; set data.num_classes (the model groups take it from the data)")
    _check_kwargs(name, kwargs)
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    source = resolve_source(spec.pretrained) if spec.pretrained else None
    if source is not None:
        overlay.update(source.timm_overlay(name, kwargs, _exact))
    if overlay:
        kwargs["pretrained_cfg_overlay"] = overlay
    try:
        model = timm.create_model(name, pretrained=source is not None, **kwargs)
    except (TypeError, AssertionError) as e:  # timm rejects an argument or an inconsistent combination
        raise ConfigError(f"timm.create_model({name!r}, **{_shown(kwargs)}) failed: {e}") from None
    except OSError as e:  # hub / url download failures (HF_HUB_OFFLINE without a cached copy, ...)
        why = "HF_HUB_OFFLINE is set and they are not in the local cache" if offline_env() else str(e).rstrip(".")
        raise ConfigError(f"cannot load the pretrained weights of {name}: {why}. Use a local weights file "
                          "(--checkpoint FILE) or run once with network to fill the cache") from None
    except RuntimeError as e:  # load_state_dict: shapes that do not fit
        if source is None:
            raise ConfigError(f"timm.create_model({name!r}, **{_shown(kwargs)}) failed: {str(e).splitlines()[0][:300]}") from None
        lines = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln or "Missing" in ln or "Unexpected" in ln]
        raise ConfigError(f"the weights in {source.describe()} do not fit timm {name}(**{_shown(kwargs)}): "
                          f"{' '.join(ln[:200] for ln in lines[:3]) or str(e)[:300]} Choose the architecture they were "
                          "trained with (model group or model.* overrides)") from None
    except (ValueError, ZeroDivisionError) as e:  # inconsistent sizes timm only finds while building
        raise ConfigError(f"timm.create_model({name!r}, **{_shown(kwargs)}) failed: {str(e).splitlines()[0][:300]}") from None
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict):
        cfg.pop("state_dict", None)  # timm keeps a deep copy of an in-memory state dict; drop it
    report = apply_surgery(model, spec.surgery)
    if spec.state:
        load_adapted(model, network_state(read_run_checkpoint(spec.state)), spec.state)
    return Network(model, report)


def load_frozen(spec: ModelSpec) -> nn.Module:
    """``create_network(spec).model`` in eval mode without gradients, built under a forked random state.

    Building it never changes the caller's random stream (and with it a trained model's
    initialisation, data order or augmentation): used for teachers and attention references.
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        model = create_network(spec).model
    return model.eval().requires_grad_(False)


def load_run_checkpoint(path: str) -> Network:
    """The exact network of a run checkpoint with its weights (its own architecture, surgery and backend)."""
    return create_network(ModelSpec.from_source(str(path), exact=True))
