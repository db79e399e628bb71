"""Where the class token, the register tokens and the patch tokens sit in a timm ViT's attention map.

timm's ``VisionTransformer`` orders its tokens as ``[class token] [register tokens] [patch tokens]``
(``_pos_embed``), with the patches in row-major order of the patch grid. :class:`TokenLayout`
records that order so every metric can say exactly which rows (queries) and columns (keys) it uses.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import nn

from ..errors import ConfigError, GeometryError

__all__ = ["TokenLayout", "patch_distances"]

Index = Union[slice, torch.Tensor]


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    a, b = value
    return int(a), int(b)


@dataclass(frozen=True)
class TokenLayout:
    """Token order of a timm ViT: ``[class token][registers][patches, row-major]``.

    Args:
        grid: patch grid ``(rows, cols)``.
        patch_size: patch size in pixels ``(height, width)``; used for distances in pixels.
        num_prefix: tokens before the patches (timm's ``num_prefix_tokens``: class token + registers).
        has_cls: whether token 0 is a class token (timm: ``model.cls_token is not None``).

    Example:
        >>> layout = TokenLayout(grid=(4, 4), patch_size=(4, 4), num_prefix=2, has_cls=True)
        >>> layout.num_tokens, layout.num_registers, layout.patch_slice
        (18, 1, slice(2, 18, None))
    """

    grid: tuple[int, int]
    patch_size: tuple[int, int] = (1, 1)
    num_prefix: int = 0
    has_cls: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", _pair(self.grid))
        object.__setattr__(self, "patch_size", _pair(self.patch_size))
        if min(self.grid) < 1 or min(self.patch_size) < 1:
            raise GeometryError(f"token layout needs a positive grid and patch size, got {self.grid} and {self.patch_size}")
        if self.num_prefix < int(self.has_cls):
            raise GeometryError(f"a class token is a prefix token: num_prefix={self.num_prefix} < 1")

    @classmethod
    def from_model(cls, model: nn.Module, image_size: Optional[Sequence[int]] = None) -> TokenLayout:
        """The layout of a timm ``VisionTransformer`` (``image_size`` for ``dynamic_img_size`` models).

        Raises:
            ConfigError: the model is not a timm ViT (no ``patch_embed``).
        """
        embed = getattr(model, "patch_embed", None)
        if embed is None or not hasattr(embed, "grid_size"):
            raise ConfigError(
                f"attention metrics need a timm VisionTransformer (patch_embed, cls_token, num_prefix_tokens); "
                f"got {type(model).__name__}"
            )
        grid = tuple(embed.grid_size)
        if image_size is not None and getattr(model, "dynamic_img_size", False):
            grid = tuple(embed.dynamic_feat_size(tuple(image_size)))
        return cls(
            grid=grid,
            patch_size=tuple(embed.patch_size),
            num_prefix=int(getattr(model, "num_prefix_tokens", 0)),
            has_cls=getattr(model, "cls_token", None) is not None,
        )

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        return self.num_prefix + self.num_patches

    @property
    def num_registers(self) -> int:
        return self.num_prefix - int(self.has_cls)

    @property
    def patch_slice(self) -> slice:
        """Positions of the patch tokens."""
        return slice(self.num_prefix, self.num_tokens)

    def kept(self, with_cls: bool) -> Index:
        """Positions of ``[class token] + patches`` (registers never kept): a slice when contiguous.

        Args:
            with_cls: keep the class token (only possible when the layout has one).
        """
        if not with_cls or not self.has_cls:
            return self.patch_slice
        if self.num_registers == 0:
            return slice(0, self.num_tokens)
        return torch.tensor([0, *range(self.num_prefix, self.num_tokens)])

    def drops(self, with_cls: bool) -> bool:
        """Whether :meth:`kept` leaves out any token (then rows are renormalised over the kept keys)."""
        kept = self.num_patches + int(with_cls and self.has_cls)
        return kept != self.num_tokens

    def check(self, maps: torch.Tensor, what: str = "attention maps") -> None:
        """Raise a :class:`GeometryError` unless ``maps`` are ``(..., N, N)`` with this layout's ``N``."""
        n = self.num_tokens
        if maps.dim() < 3 or maps.shape[-1] != n or maps.shape[-2] != n:
            raise GeometryError(
                f"{what} have shape {tuple(maps.shape)}, but the token layout expects (..., {n}, {n}): "
                f"{self.num_prefix} prefix token(s) + a {self.grid[0]}x{self.grid[1]} patch grid. "
                "Build the layout with TokenLayout.from_model(model, image_size) for the images you feed"
            )

    def describe(self) -> str:
        regs = f" + {self.num_registers} register(s)" if self.num_registers else ""
        cls_ = "class token" if self.has_cls else "no class token"
        return f"{cls_}{regs} + {self.grid[0]}x{self.grid[1]} patches of {self.patch_size[0]}x{self.patch_size[1]} px"


def patch_distances(
    grid: Sequence[int], patch_size: Sequence[int] = (1, 1), device: Optional[torch.device] = None
) -> torch.Tensor:
    """Euclidean distances in pixels between patch centres, ``(P, P)`` with ``P = rows * cols``.

    Patch ``(i, j)`` (row-major token ``i * cols + j``) has its centre at
    ``((i + 0.5) * ph, (j + 0.5) * pw)`` pixels.

    Example:
        >>> patch_distances((1, 3), (4, 4))
        tensor([[0., 4., 8.],
                [4., 0., 4.],
                [8., 4., 0.]])
    """
    (gh, gw), (ph, pw) = _pair(grid), _pair(patch_size)
    rows = torch.arange(gh, device=device, dtype=torch.float32).repeat_interleave(gw) * ph  # P
    cols = torch.arange(gw, device=device, dtype=torch.float32).repeat(gh) * pw  # P
    return torch.hypot(rows[:, None] - rows[None, :], cols[:, None] - cols[None, :])  # P, P

