"""Image transforms and PIL-backed datasets for the fine-tuning datasets (timm's ``create_transform``)."""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError

log = logging.getLogger(__name__)

__all__ = ["SMALL_IMAGE", "ArrayImages", "FileImages", "PILDataset", "channel_stats", "create_transforms", "pil_mode"]

#: inputs up to this size get the small-image defaults
SMALL_IMAGE = 64


def create_transforms(
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    augment: Optional[Mapping[str, Any]] = None,
    crop_pct: Optional[float] = None,
    interpolation: str = "bicubic",
) -> tuple[Callable, Callable]:
    """``(train, eval)`` transforms from ``timm.data.create_transform`` for PIL images.

    Defaults: small images (<= 64 px) train with ``RandomResizedCrop(scale=(0.6, 1))`` and a
    horizontal flip, no colour jitter, and evaluate on the whole image resized (``crop_pct=1``);
    large images use timm's ImageNet recipe (``scale=(0.08, 1)``, flip, colour jitter 0.4) and
    the usual centre crop (``crop_pct=0.875``).

    Args:
        img_size: output size.
        mean: per-channel normalisation mean (its length sets the channels).
        std: per-channel normalisation std.
        augment: ``create_transform`` training options over the defaults (``auto_augment``, ``re_prob``, ...).
        crop_pct: evaluation centre-crop fraction; ``None`` picks the default above.
        interpolation: resize interpolation.

    Raises:
        ConfigError: options ``create_transform`` does not take.
    """
    small = img_size <= SMALL_IMAGE
    train_opts: dict[str, Any] = (
        dict(scale=(0.6, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5, color_jitter=0.0) if small
        else dict(scale=(0.08, 1.0), hflip=0.5, color_jitter=0.4)
    )
    train_opts.update({k: tuple(v) if isinstance(v, list) else v for k, v in dict(augment or {}).items()})
    common = dict(input_size=img_size, mean=tuple(mean), std=tuple(std), interpolation=interpolation)
    try:
        train = create_transform(is_training=True, **common, **train_opts)
        val = create_transform(is_training=False, crop_pct=crop_pct or (1.0 if small else 0.875), **common)
    except (TypeError, ValueError, AssertionError) as e:
        raise ConfigError(f"timm create_transform rejected data.augment={dict(augment or {})}: {e}") from None
    return train, val


class PILDataset(Dataset):
    """Samples from a loader ``load(i) -> PIL image`` and labels, through a transform.

    An image that cannot be decoded (a truncated or corrupt file) is skipped with a warning that names
    it and counts the skipped images so far (in this process): the next image takes its place, so an
    epoch never dies half-way on one bad file.

    Raises:
        DataError: when no image at all can be read.
    """

    def __init__(self, load: Callable[[int], Image.Image], labels: Sequence[int], transform: Callable) -> None:
        self.load, self.labels, self.transform = load, torch.as_tensor(labels, dtype=torch.long), transform
        self.skipped: set[int] = set()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.labels)
        for j in (i + k for k in range(n)):
            j %= n
            try:
                image = self.load(j)
            except (OSError, SyntaxError, ValueError) as e:  # PIL: truncated, unidentified or malformed files
                if j not in self.skipped:
                    self.skipped.add(j)
                    what = getattr(self.load, "describe", lambda k: f"image {k}")(j)
                    log.warning("skipping %s: %s (%d unreadable image(s) so far)", what, str(e)[:120], len(self.skipped))
                continue
            return self.transform(image), self.labels[j]
        raise DataError(f"none of the {n} images could be read (e.g. {getattr(self.load, 'describe', str)(i)})")


class ArrayImages:
    """``i -> PIL image`` from ``uint8 (n, H, W, 3)`` arrays (a class, not a lambda, so workers can pickle it)."""

    def __init__(self, images: np.ndarray, mode: str) -> None:
        self.images, self.mode = images, mode

    def __call__(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i]).convert(self.mode)


class FileImages:
    """``i -> PIL image`` read from image files."""

    def __init__(self, files: Sequence[Path], mode: str) -> None:
        self.files, self.mode = list(files), mode

    def __call__(self, i: int) -> Image.Image:
        with Image.open(self.files[i]) as im:
            return im.convert(self.mode)

    def describe(self, i: int) -> str:
        return str(self.files[i])


def pil_mode(in_chans: int) -> str:
    if in_chans not in (1, 3):
        raise ConfigError(f"data.in_chans must be 1 (grey) or 3 (RGB), got {in_chans}")
    return "L" if in_chans == 1 else "RGB"


def channel_stats(values: Optional[Sequence[float]], default: Sequence[float], in_chans: int, key: str) -> tuple[float, ...]:
    if values is None:
        values = default if in_chans == 3 else (float(np.mean(default)),)
    values = tuple(float(v) for v in values)
    if len(values) != in_chans:
        raise ConfigError(f"data.{key} has {len(values)} values for {in_chans} channels: {list(values)}")
    return values
