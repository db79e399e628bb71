"""Lightning DataModules, chosen by ``data.name`` through one registry."""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from ..errors import ConfigError
from ..registry import Registry
from .distributed import eval_sampler

__all__ = ["DATAMODULES", "ImageDataModule", "DigitsDataModule", "SyntheticDataModule", "create_datamodule"]

DATAMODULES: Registry[Callable[..., ImageDataModule]] = Registry("dataset")


def create_datamodule(cfg: Any) -> ImageDataModule:
    """Build the DataModule named by ``cfg["name"]`` with the other keys as its arguments."""
    return DATAMODULES.create(cfg)


class TensorImageDataset(Dataset):
    """Images held in memory as one ``(n, C, H, W)`` tensor, with an optional per-sample transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Optional[Callable] = None) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i]
        return (self.transform(x) if self.transform is not None else x), self.labels[i]


class ImageDataModule(pl.LightningDataModule):
    """Common shape of our DataModules: datasets built in ``setup``, loaders from ``batch_size``.

    Subclasses set ``img_size``, ``in_chans``, ``num_classes``, ``class_names``, ``mean``, ``std``
    and build ``self.train_set`` / ``self.val_set`` in :meth:`setup`. The test split is the
    validation split unless a subclass provides ``test_set``.
    """

    img_size: int
    in_chans: int
    num_classes: int
    class_names: list[str]
    mean: Sequence[float]
    std: Sequence[float]

    def __init__(self, batch_size: int = 64, num_workers: int = 0) -> None:
        super().__init__()
        for key, value, low in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"data.{key}={value!r} must be an integer >= {low}")
        self.batch_size, self.num_workers = batch_size, num_workers
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self.test_set: Optional[Dataset] = None

    def _loader(self, dataset: Optional[Dataset], shuffle: bool) -> DataLoader:
        if dataset is None:
            self.setup("fit")
            return self._loader(self.train_set if shuffle else self.val_set, shuffle)
        return DataLoader(
            dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0, drop_last=False,
            sampler=None if shuffle else eval_sampler(dataset),  # DDP: each val/test sample on exactly one rank
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set or self.val_set, shuffle=False)


@DATAMODULES.register("digits")
class DigitsDataModule(ImageDataModule):
    """scikit-learn's handwritten digits (1797 8x8 images, 10 classes), bundled: no download.

    Images are scaled to [0, 1], resized bilinearly to ``img_size`` and normalised with the
    training split's mean and std. The train/val split is stratified and fixed by
    ``split_seed``. Training images are randomly translated by up to ``max_shift`` original
    pixels.

    Args:
        img_size: model input size.
        in_chans: must be 1 (grey images); present so configs can interpolate it.
        num_classes: must be 10.
        val_fraction: share of images held out for validation.
        split_seed: seed of the split.
        max_shift: augmentation translation in original (8x8) pixels; 0 disables it.
        batch_size: loader batch size.
        num_workers: loader workers.
    """

    def __init__(
        self,
        img_size: int = 16,
        in_chans: int = 1,
        num_classes: int = 10,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        max_shift: int = 1,
        batch_size: int = 64,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if in_chans != 1 or num_classes != 10:
            raise ConfigError(f"digits has 1 channel and 10 classes; got in_chans={in_chans}, num_classes={num_classes}")
        if not 0 < val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        self.img_size, self.in_chans, self.num_classes = img_size, 1, 10
        self.class_names = [str(d) for d in range(10)]
        self.val_fraction, self.split_seed, self.max_shift = val_fraction, split_seed, max_shift
        self.mean, self.std = (0.0,), (1.0,)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        x, y = load_digits(return_X_y=True)
        images = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0  # n, 1, 8, 8
        images = F.interpolate(images, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        labels = torch.tensor(y, dtype=torch.long)
        train_idx, val_idx = train_test_split(
            range(len(labels)), test_size=self.val_fraction, random_state=self.split_seed, stratify=y
        )
        train_idx, val_idx = torch.tensor(train_idx), torch.tensor(val_idx)
        mean, std = images[train_idx].mean().item(), images[train_idx].std().item()
        self.mean, self.std = (mean,), (std,)
        norm = v2.Normalize(self.mean, self.std)
        shift = self.max_shift / 8.0
        train_tf = v2.Compose([v2.RandomAffine(degrees=0, translate=(shift, shift)), norm]) if shift else norm
        self.train_set = TensorImageDataset(images[train_idx], labels[train_idx], train_tf)
        self.val_set = TensorImageDataset(norm(images[val_idx]), labels[val_idx])


@DATAMODULES.register("synthetic")
class SyntheticDataModule(ImageDataModule):
    """Learnable synthetic images: a fixed random prototype per class plus Gaussian noise.

    Args:
        img_size: image size.
        in_chans: channels.
        num_classes: classes (one prototype each).
        num_train: training images.
        num_val: validation images.
        noise: standard deviation of the per-image noise (prototypes have unit variance).
        seed: generator seed (data are identical for a given seed).
        batch_size: loader batch size.
        num_workers: loader workers.
    """

    def __init__(
        self,
        img_size: int = 16,
        in_chans: int = 1,
        num_classes: int = 4,
        num_train: int = 256,
        num_val: int = 64,
        noise: float = 0.5,
        seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        self.img_size, self.in_chans, self.num_classes = img_size, in_chans, num_classes
        self.class_names = [f"class{i}" for i in range(num_classes)]
        self.mean, self.std = (0.0,) * in_chans, (1.0,) * in_chans
        self.num_train, self.num_val, self.noise, self.seed = num_train, num_val, noise, seed

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        g = torch.Generator().manual_seed(self.seed)
        shape = (self.in_chans, self.img_size, self.img_size)
        prototypes = torch.randn(self.num_classes, *shape, generator=g)  # K, C, H, W

        def sample(n: int) -> TensorImageDataset:
            labels = torch.arange(n) % self.num_classes
            images = prototypes[labels] + self.noise * torch.randn(n, *shape, generator=g)  # n, C, H, W
            return TensorImageDataset(images, labels)

        self.train_set, self.val_set = sample(self.num_train), sample(self.num_val)
