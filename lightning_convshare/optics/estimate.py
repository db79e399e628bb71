"""The speed estimate of a built network on a 4f device (what ``convshare speed`` prints).

Per ConvShare layer, the optical passes under the best arrangement found and their time on the
device (:mod:`~lightning_convshare.optics.speed`), plus the electronic rest of the network (attention
products, softmax, norms, activations, the readout arithmetic of the signed-value encoding) *measured*
on the network's device, against the whole network measured there with the electronic conv.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..layers.convshare import ConvShareLinear
from .device import FourFDevice
from .signed import SignedEncoding, create_encoding
from .speed import ElectronicReadout, FreeConv, layer_passes, measure_forward, per_layer_times

__all__ = ["estimate_speed"]


def _swap_backends(model: nn.Module, make) -> nn.Module:
    """A copy of ``model`` whose ConvShare layers each get a fresh backend from ``make()``."""
    out = copy.deepcopy(model)
    for module in out.modules():
        if isinstance(module, ConvShareLinear):
            module.backend = make()
    return out


@torch.no_grad()
def estimate_speed(
    model: nn.Module,
    x: torch.Tensor,
    device: FourFDevice,
    encoding: str | SignedEncoding = "pseudo_negativity",
    rounds: int = 5,
) -> dict[str, Any]:
    """Estimate ``model``'s inference time on the 4f ``device`` and its speed-up over where ``x`` lives.

    Args:
        model: a network with ConvShare layers on the electronic (``direct``) backend, in eval mode.
        x: an input batch (its size is the batch the optics processes per inference).
        device: the 4f hardware (:func:`~lightning_convshare.optics.device.create_device`).
        encoding: the signed-value encoding (its passes, and its readout arithmetic in the electronic rest).
        rounds: interleaved timing rounds (median).

    Returns:
        ``layers`` (per layer: the arrangement, passes and optical seconds, and its electronic time),
        ``optical_s`` (the layers' optical time), ``electronic_model_s`` (the network on ``x``'s device),
        ``electronic_rest_s`` (the network without its convs, with the encoding's readout arithmetic),
        ``optical_system_s`` (their sum), ``speedup``, ``electronic_without_convs_s`` and
        ``amdahl_bound`` (optics and readout free), ``speedup_readout_free``, ``passes`` (total).

    Raises:
        ConfigError: a network without ConvShare layers.
    """
    if not any(isinstance(m, ConvShareLinear) for m in model.modules()):
        raise ConfigError(f"the speed model needs ConvShare layers; {type(model).__name__} has none (use surgery=convshare)")
    encoding = create_encoding(encoding)
    layers = layer_passes(model, x.shape[0], device, encoding)
    conv_times = per_layer_times(model, x, [lay.name for lay in layers], rounds=rounds)
    rest = _swap_backends(model, lambda: ElectronicReadout(encoding))
    free = _swap_backends(model, FreeConv)
    t = measure_forward({"model": lambda: model(x), "rest": lambda: rest(x), "free": lambda: free(x)}, x.device,
                        rounds=rounds)
    optical = sum(lay.seconds for lay in layers)
    return {
        "batch": int(x.shape[0]), "device": str(x.device), "device_4f": device.describe(), "source": device.source,
        "encoding": encoding.name, "passes": sum(lay.passes for lay in layers),
        "layers": [{**lay.to_dict(), "electronic_s": conv_times.get(lay.name)} for lay in layers],
        "electronic_model_s": t["model"], "electronic_rest_s": t["rest"], "optical_s": optical,
        "optical_system_s": optical + t["rest"], "speedup": t["model"] / (optical + t["rest"]),
        "electronic_without_convs_s": t["free"], "amdahl_bound": t["model"] / t["free"],
        "speedup_readout_free": t["model"] / (optical + t["free"]),
    }
