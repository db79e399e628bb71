"""Progressive replacement: blocks converted into ConvShare form one group at a time (plain torch).

:class:`BlockSchedule` says which blocks are converted at which epoch; :func:`make_progressive`
wraps every layer of a block that waits in a :class:`ProgressiveLayer`, which computes with the
(trainable) linear layer until :meth:`ProgressiveLayer.convert_` initialises its ConvShare layer
from the linear one as it is then and switches over.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..layers import ConvShareLinear
from ..surgery import LAYER_INITS, SurgeryReport

__all__ = ["CONV_ROLES", "BlockSchedule", "ProgressiveLayer", "block_index", "converted_blocks", "make_progressive",
           "progressive_layers", "apply_schedule"]

log = logging.getLogger(__name__)

#: the linear layers a ConvShare surgery converts, by role
CONV_ROLES = ("qkv", "proj", "fc1", "fc2")


@dataclass(frozen=True)
class BlockSchedule:
    """Which blocks are converted at which epoch: ``groups[0]`` at epoch 0, the next every ``every_n_epochs``."""

    groups: tuple[tuple[int, ...], ...]
    every_n_epochs: int = 1

    @classmethod
    def create(cls, blocks: Sequence[int], every_n_epochs: int = 1, blocks_per_step: int = 1,
               order: str = "last_first") -> BlockSchedule:
        """Groups of ``blocks_per_step`` blocks in ``order`` (``last_first`` or ``first_last``)."""
        orders = {"last_first": sorted(blocks, reverse=True), "first_last": sorted(blocks)}
        if order not in orders:
            raise ConfigError(f"distill.progressive.order {order!r} is not one of {list(orders)}")
        if int(every_n_epochs) < 1 or int(blocks_per_step) < 1:
            raise ConfigError(f"distill.progressive needs every_n_epochs >= 1 and blocks_per_step >= 1, "
                              f"got {every_n_epochs} and {blocks_per_step}")
        seq, k = orders[order], int(blocks_per_step)
        return cls(tuple(tuple(seq[i:i + k]) for i in range(0, len(seq), k)), int(every_n_epochs))

    @property
    def full_epoch(self) -> int:
        """First epoch in which every block is converted."""
        return self.every_n_epochs * (len(self.groups) - 1)

    def converted_at(self, epoch: int) -> list[int]:
        """Blocks converted during ``epoch``."""
        n = min(len(self.groups), epoch // self.every_n_epochs + 1)
        return sorted(b for group in self.groups[:n] for b in group)


class ProgressiveLayer(nn.Module):
    """A linear layer that becomes its ConvShare layer when :meth:`convert_` is called.

    Until then the forward is the (trainable) linear layer's; :meth:`convert_` initialises the
    ConvShare layer from the linear one as it is then (``LAYER_INITS[init]``) and switches over.
    """

    def __init__(self, linear: nn.Linear, conv: ConvShareLinear, init: str = "lstsq") -> None:
        super().__init__()
        self.linear, self.conv, self.init = linear, conv, init
        self.converted = False

    @torch.no_grad()
    def convert_(self) -> None:
        LAYER_INITS.get(self.init)(self.conv, self.linear)
        self.converted = True

    def export_state(self) -> dict[str, torch.Tensor]:
        """The layer as it computes now: the ``{weight, bias}`` of its linear or of its ConvShare layer."""
        return {k: v.detach() for k, v in (self.conv if self.converted else self.linear).state_dict().items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) if self.converted else self.linear(x)

    def extra_repr(self) -> str:
        return f"converted={self.converted}, init={self.init!r}"


def block_index(name: str) -> int:
    """The block of a layer name (``blocks.<i>.attn.qkv`` -> ``i``)."""
    return int(name.split(".")[1])


def progressive_layers(net: nn.Module) -> dict[str, ProgressiveLayer]:
    """Every :class:`ProgressiveLayer` of ``net`` by name."""
    return {n: m for n, m in net.named_modules() if isinstance(m, ProgressiveLayer)}


def converted_blocks(net: nn.Module, report: SurgeryReport) -> list[int]:
    """Blocks whose converted layers are all ConvShare now."""
    waiting = {block_index(n) for n, m in progressive_layers(net).items() if not m.converted}
    converted = {block_index(r.name) for r in report.layers if r.role in CONV_ROLES}
    return sorted(converted - waiting)


def make_progressive(
    net: nn.Module, linear_source: nn.Module, report: SurgeryReport, schedule: BlockSchedule, init: str = "transfer"
) -> list[str]:
    """Put the layers of the blocks that wait (not in ``schedule``'s first group) back in linear form.

    Args:
        net: the converted network (edited in place).
        linear_source: the unconverted network whose linear layers the waiting blocks start from
            (copied, trainable).
        report: the surgery report of ``net`` (which layers were converted).
        schedule: which blocks convert when.
        init: the layer init (``LAYER_INITS``) used when a layer converts.

    Returns:
        The names of the wrapped layers.

    Raises:
        ConfigError: the surgery converted no layers.
    """
    names = [r.name for r in report.layers if r.role in CONV_ROLES]
    if not names:
        raise ConfigError("distill.progressive needs a surgery that converts layers (e.g. surgery=convshare)")
    first = set(schedule.converted_at(0))
    wrapped = []
    for name in names:
        if block_index(name) not in first:
            linear = copy.deepcopy(linear_source.get_submodule(name)).requires_grad_(True)
            net.set_submodule(name, ProgressiveLayer(linear, net.get_submodule(name), init))
            wrapped.append(name)
    log.info("progressive conversion: blocks %s, every %d epochs (all converted from epoch %d)",
             [list(g) for g in schedule.groups], schedule.every_n_epochs, schedule.full_epoch)
    return wrapped


def apply_schedule(net: nn.Module, schedule: BlockSchedule, epoch: int) -> list[str]:
    """Convert the waiting layers whose block is due at ``epoch``; returns their names."""
    due = set(schedule.converted_at(epoch))
    done = []
    for name, layer in progressive_layers(net).items():
        if not layer.converted and block_index(name) in due:
            layer.convert_()
            done.append(name)
    if done:
        log.info("epoch %d: converted %s", epoch, ", ".join(done))
    return done
