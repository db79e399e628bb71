"""The run checkpoint format: how ``convshare train/convert/finetune`` store a network, and how it is read.

A run checkpoint is Lightning's format: ``hyper_parameters = {model, surgery, optim, loss}`` (the
network's :class:`~lightning_convshare.models.spec.ModelSpec` as plain data, never a weight source:
the weights are in the file) and a ``net.``-prefixed ``state_dict``. Lightning writes it during
training; :func:`save_run_checkpoint` writes one without a Trainer (``convshare convert``).

Checkpoints are data, never code: they are read with ``torch.load(weights_only=True)``, which
unpickles tensors, containers and numbers only. A file that needs anything else is refused with
a :class:`~lightning_convshare.errors.UnsafeCheckpointError` (see :func:`read_run_checkpoint`).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import pickle
import re
from collections.abc import Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, UnsafeCheckpointError
from ..files import atomic_write
from ..layers import ConvShareLinear
from ..surgery.init import layer_matrix

__all__ = [
    "RUN_CHECKPOINT_SUFFIX",
    "TRUST_ENV",
    "linear_state_dict",
    "load_adapted",
    "network_state",
    "read_run_checkpoint",
    "safe_load",
    "save_run_checkpoint",
    "trusted_checkpoints",
]

log = logging.getLogger(__name__)

#: a Lightning checkpoint written by ``convshare train`` / ``convert`` / ``finetune``
RUN_CHECKPOINT_SUFFIX = ".ckpt"
#: ``1`` lets :func:`safe_load` fall back to full unpickling (what ``--trust-checkpoints`` sets)
TRUST_ENV = "CONVSHARE_TRUST_CHECKPOINTS"


def _trusted() -> bool:
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def trusted_checkpoints(enabled: bool = True) -> Iterator[None]:
    """Inside the block, files that need full unpickling are loaded (only for files you trust)."""
    old = os.environ.get(TRUST_ENV)
    os.environ[TRUST_ENV] = "1" if enabled else "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(TRUST_ENV, None)
        else:
            os.environ[TRUST_ENV] = old


def safe_load(path: str | os.PathLike, map_location: str | torch.device = "cpu", *, what: str = "checkpoint") -> Any:
    """``torch.load`` that never runs code from the file.

    The file is unpickled with ``weights_only=True`` (tensors, containers, numbers, strings). A
    file that needs more (a pickled class or function: possibly code) is refused, unless the user
    said they trust it (``--trust-checkpoints``, which sets ``$CONVSHARE_TRUST_CHECKPOINTS=1``).

    Raises:
        UnsafeCheckpointError: the file needs arbitrary unpickling and is not trusted.
        ConfigError: the file cannot be read at all (missing, truncated, not a torch file).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "weights only load failed" not in text.lower() or not ("GLOBAL" in text or "global" in text.lower()):
            # not a pickle of ours at all (random bytes, a truncated file): nothing to trust
            raise ConfigError(f"cannot read {what} {path}: {str(e).splitlines()[0][:200]}") from None
        if not _trusted():
            names = re.findall(r"GLOBAL ([\w.]+)", text)
            reason = f"it names {names[0]}" if names else "it holds pickled Python objects"
            raise UnsafeCheckpointError(
                f"refusing to load {path}: it needs full unpickling, which can run code from the file ({reason}, "
                "not plain data). Checkpoints written by convshare never do. If you trust where the file came from, "
                "pass --trust-checkpoints (or set CONVSHARE_TRUST_CHECKPOINTS=1)"
            ) from None
        log.warning("loading %s with full unpickling (trusted by --trust-checkpoints)", path)
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except Exception as e2:
            raise ConfigError(f"cannot read {what} {path}: {type(e2).__name__}: {str(e2)[:200]}") from None
    except Exception as e:  # truncated, random bytes, a zip of something else
        raise ConfigError(f"cannot read {what} {path}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                          ) from None


def read_run_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``convshare train``/``convert``/``finetune`` and check its layout.

    Returns:
        The checkpoint dict (``hyper_parameters`` with ``model`` and ``surgery``, ``state_dict`` with
        ``net.``-prefixed keys, and whatever else its writer stored).

    Raises:
        ConfigError: missing file, unreadable file or a checkpoint without our hyperparameters.
        UnsafeCheckpointError: a file that would need arbitrary unpickling.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"run checkpoint {path} does not exist")
    ckpt = safe_load(path, map_location, what="run checkpoint")
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    model = hparams.get("model") if isinstance(hparams, Mapping) else None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(model, Mapping) or not model.get("name") or not isinstance(state, Mapping):
        raise ConfigError(
            f"{path} is not a checkpoint written by `convshare train`, `convert` or `finetune` "
            "(no model hyperparameters); for plain weights use a .safetensors/.pth/.bin file with a model name"
        )
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor) and not k.endswith("._extra_state")]
    if bad:
        raise ConfigError(f"{path}: state_dict entries that are not tensors: {bad[:5]}")
    return ckpt


def network_state(ckpt: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The network's own state dict (the ``net.`` entries, prefix removed) of a run checkpoint."""
    return {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}


def _lightning_version() -> str:
    try:
        return version("pytorch-lightning")
    except PackageNotFoundError:  # pragma: no cover - the package depends on it
        return "2.0.0"


def save_run_checkpoint(path: str | os.PathLike, model: nn.Module, hparams: Mapping[str, Any], **extra: Any) -> Path:
    """Write ``model`` as a run checkpoint that ``ConvShareClassifier.load_from_checkpoint`` reads.

    Args:
        path: output ``.ckpt`` (written atomically; parent directories are created).
        model: the network (stored under ``net.``).
        hparams: ``{model: {name, **timm kwargs}, surgery, optim, loss}`` (plain data).
        **extra: further top-level entries (plain data, e.g. the conversion report).

    Raises:
        ConfigError: a path that does not end in ``.ckpt``.
    """
    path = Path(path)
    if path.suffix != RUN_CHECKPOINT_SUFFIX:
        raise ConfigError(f"output checkpoint {path} must end in {RUN_CHECKPOINT_SUFFIX}")
    ckpt = {
        "state_dict": {f"net.{k}": v.detach().cpu() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
                       for k, v in model.state_dict().items()},  # modules' extra state (castling's schedule) as data
        "hyper_parameters": copy.deepcopy(dict(hparams)),
        "pytorch-lightning_version": _lightning_version(),
        "epoch": 0,
        "global_step": 0,
        **extra,
    }
    return atomic_write(path, lambda tmp: torch.save(ckpt, tmp))


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
    def shape(v: Any) -> Any:
        return tuple(v.shape) if isinstance(v, torch.Tensor) else None  # extra state (plain data) has none

    head = [k for k in ("head.weight", "head.bias") if k in state and k in own and shape(state[k]) != shape(own[k])]
    for k in head:
        del state[k]
    if head:
        log.info("%s: the classifier has another class count; the head is freshly initialised", source)
    bad = [f"{k}: {shape(v)} in {source}, {shape(own[k])} in the model"
           for k, v in state.items() if k in own and shape(v) != shape(own[k])]
    missing = [k for k in own if k not in state and k not in head]
    unexpected = [k for k in state if k not in own]
    if bad or missing or unexpected:
        raise ConfigError(
            f"the weights in {source} do not fit the network: "
            + "; ".join(filter(None, [", ".join(bad[:3]), f"missing {missing[:5]}" if missing else "",
                                      f"unexpected {unexpected[:5]}" if unexpected else ""]))
        )
    net.load_state_dict(state, strict=False)
