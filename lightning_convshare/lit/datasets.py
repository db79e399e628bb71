"""Datasets for fine-tuning: CIFAR-100 from its python archive, any class-per-folder dataset, timm transforms.

Both register into :data:`~lightning_convshare.lit.data.DATAMODULES` (``data.name``) and share
:func:`create_transforms`, timm's ``create_transform`` with defaults for small (<= 64 px, e.g.
CIFAR at 32 px) and large (224 px) inputs. Nothing here downloads anything unless asked
(``data.download=true`` for CIFAR-100); a missing or malformed dataset raises a
:class:`~lightning_convshare.errors.DataError` that says what was expected where and how to get it.
"""
from __future__ import annotations

import logging
import pickle
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import numpy as np
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..errors import ConfigError, DataError
from .data import DATAMODULES, ImageDataModule
from .transforms import ArrayImages, FileImages, PILDataset, channel_stats, create_transforms, pil_mode

__all__ = [
    "CIFAR100_URL",
    "CIFAR100DataModule",
    "CifarArrays",
    "ImageFolderDataModule",
    "read_cifar100",
    "scan_image_folder",
]

log = logging.getLogger(__name__)

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_DIR = "cifar-100-python"
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 else None
    train, val = train_test_split(idx, test_size=fraction, random_state=seed, stratify=stratify)
    return np.sort(train), np.sort(val)


# ----------------------------------------------------------------------------- CIFAR-100


class CifarArrays(NamedTuple):
    """The CIFAR-100 python archive in memory: ``uint8 (n, 32, 32, 3)`` images and integer labels."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]


def _missing_cifar(root: Path) -> DataError:
    return DataError(
        f"CIFAR-100 not found: expected the python version of the dataset at {root / CIFAR100_DIR}/ (files train, test, "
        f"meta) or its archive {root / 'cifar-100-python.tar.gz'}. Get it with `mkdir -p {root} && curl -L "
        f"{CIFAR100_URL} | tar xz -C {root}`, point data.root at the folder that holds {CIFAR100_DIR}/, or set "
        "data.download=true on a machine with network"
    )


def _text(value: Any) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


class _NotData(pickle.UnpicklingError):
    """A pickle that names a class or function outside the allow-list."""


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles containers and numpy arrays only: a file that names any other class or function is refused
    (a pickle can run code through them)."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"), ("copy_reg", "_reconstructor"),
               ("copyreg", "_reconstructor"), ("__builtin__", "object"), ("builtins", "object")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise _NotData(f"refusing to load {module}.{name} (not plain data: it could run code)")


def _unpickle(path: Path) -> dict[str, Any]:
    """One archive file: a pickled dict, byte-string keys in the original (Python 2) files."""
    if not path.is_file():
        raise DataError(f"CIFAR-100 archive {path.parent} has no file {path.name!r} (expected train, test and meta); "
                        f"re-extract it from {CIFAR100_URL}")
    try:
        with open(path, "rb") as f:
            raw = _ArrayUnpickler(f, encoding="latin1").load()
    except _NotData as e:
        raise DataError(f"{path}: {e}; the CIFAR-100 python files hold only dicts, lists and numpy arrays. Re-extract "
                        f"them from {CIFAR100_URL}") from None
    except Exception as e:
        raise DataError(f"{path} is not a CIFAR-100 python pickle ({type(e).__name__}: {e}); re-extract it from "
                        f"{CIFAR100_URL}") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path} holds a {type(raw).__name__}, expected the CIFAR-100 dict (data, fine_labels, ...)")
    return {_text(k): v for k, v in raw.items()}


def read_cifar100(root: str | Path, labels: str = "fine") -> CifarArrays:
    """Read the CIFAR-100 python archive under ``root`` (extracting ``cifar-100-python.tar.gz`` if only that is there).

    Args:
        root: folder holding ``cifar-100-python/{train,test,meta}``.
        labels: ``fine`` (100 classes) or ``coarse`` (20 superclasses).

    Raises:
        DataError: missing files, or files whose keys, shapes or labels are not CIFAR-100's.
    """
    if labels not in ("fine", "coarse"):
        raise ConfigError(f"data.labels must be 'fine' or 'coarse', got {labels!r}")
    root = Path(root).expanduser()
    base = root / CIFAR100_DIR
    archive = root / "cifar-100-python.tar.gz"
    if not base.is_dir():
        if not archive.is_file():
            raise _missing_cifar(root)
        log.info("extracting %s", archive)
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
    meta = _unpickle(base / "meta")
    name_key = f"{labels}_label_names"
    if name_key not in meta:
        raise DataError(f"{base / 'meta'} has no {name_key!r} (keys: {sorted(meta)}); expected the CIFAR-100 meta file")
    names = [_text(n) for n in meta[name_key]]
    out = []
    for split in ("train", "test"):
        path = base / split
        d = _unpickle(path)
        key = f"{labels}_labels"
        if "data" not in d or key not in d:
            raise DataError(f"{path} has keys {sorted(d)}, expected 'data' and {key!r} (the CIFAR-100 python format)")
        data = np.asarray(d["data"])
        y = np.asarray(d[key], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 (n, 3072) rows of 32x32 RGB")
        if len(y) != len(data) or (len(y) and (y.min() < 0 or y.max() >= len(names))):
            raise DataError(f"{path}: {len(y)} labels for {len(data)} images, range [{y.min() if len(y) else '-'}, "
                            f"{y.max() if len(y) else '-'}], expected one label per image in [0, {len(names) - 1}]")
        out += [data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y]  # n, 32, 32, 3 (HWC for PIL)
    return CifarArrays(*out, names)


@DATAMODULES.register("cifar100")
class CIFAR100DataModule(ImageDataModule):
    """CIFAR-100 (50,000 training and 10,000 test images, 32x32 RGB) read from its python archive.

    The test split is the validation split (the usual protocol), unless ``val_fraction > 0`` holds
    out a stratified part of the training images (the test split then serves ``test``).

    Args:
        root: folder holding ``cifar-100-python/`` (or ``cifar-100-python.tar.gz``).
        img_size: model input size (32 native; 224 for ImageNet-pretrained ViTs at their resolution).
        in_chans: 3, or 1 for grey conversions.
        num_classes: 100 (``labels=fine``) or 20 (``labels=coarse``).
        labels: ``fine`` or ``coarse``.
        val_fraction: 0 (validate on the test split) or the share of training images held out.
        split_seed: seed of that split.
        download: fetch the archive with torchvision when it is missing (needs network).
        augment: ``create_transform`` training options over the defaults (see ``transforms.create_transforms``).
        crop_pct: evaluation crop fraction (default 1: the whole image).
        mean: normalisation mean (default CIFAR-100's; use the pretrained model's if it differs).
        std: normalisation std.
        interpolation: resize interpolation.
        batch_size: loader batch size.
        num_workers: loader workers.
    """

    def __init__(
        self,
        root: str = "data",
        img_size: int = 32,
        in_chans: int = 3,
        num_classes: int = 100,
        labels: str = "fine",
        val_fraction: float = 0.0,
        split_seed: int = 0,
        download: bool = False,
        augment: Optional[Mapping[str, Any]] = None,
        crop_pct: Optional[float] = 1.0,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        interpolation: str = "bicubic",
        batch_size: int = 128,
        num_workers: int = 2,
    ) -> None:
        super().__init__(batch_size, num_workers)
        expected = {"fine": 100, "coarse": 20}.get(labels)
        if num_classes != expected:
            raise ConfigError(f"CIFAR-100 with labels={labels!r} has {expected} classes; got data.num_classes={num_classes}")
        if not 0 <= val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        self.root, self.labels, self.download = Path(root).expanduser(), labels, download
        self.img_size, self.in_chans, self.num_classes = img_size, in_chans, num_classes
        self.mode = pil_mode(in_chans)
        self.mean = channel_stats(mean, CIFAR100_MEAN, in_chans, "mean")
        self.std = channel_stats(std, CIFAR100_STD, in_chans, "std")
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.train_tf, self.eval_tf = create_transforms(img_size, self.mean, self.std, augment, crop_pct, interpolation)
        self.class_names: list[str] = []

    def prepare_data(self) -> None:
        if self.download and not (self.root / CIFAR100_DIR).is_dir():
            from torchvision.datasets import CIFAR100

            CIFAR100(str(self.root), download=True)

    def _dataset(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> PILDataset:
        return PILDataset(ArrayImages(images, self.mode), labels.tolist(), transform)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        if self.download:
            self.prepare_data()
        arrays = read_cifar100(self.root, self.labels)
        self.class_names = arrays.class_names
        if self.val_fraction:
            tr, va = _stratified_split(arrays.train_labels, self.val_fraction, self.split_seed)
            self.train_set = self._dataset(arrays.train_images[tr], arrays.train_labels[tr], self.train_tf)
            self.val_set = self._dataset(arrays.train_images[va], arrays.train_labels[va], self.eval_tf)
            self.test_set = self._dataset(arrays.test_images, arrays.test_labels, self.eval_tf)
        else:
            self.train_set = self._dataset(arrays.train_images, arrays.train_labels, self.train_tf)
            self.val_set = self._dataset(arrays.test_images, arrays.test_labels, self.eval_tf)


# ----------------------------------------------------------------------------- ImageFolder


def scan_image_folder(root: Path, classes: Optional[Sequence[str]] = None) -> tuple[list[Path], list[int], list[str]]:
    """Image files under ``root/<class>/`` (sorted), their labels and the class names.

    Args:
        root: the split folder.
        classes: the class names to index by (a validation split uses the training split's);
            ``None`` takes the sub-folders of ``root``.

    Raises:
        DataError: no class folders, empty classes, or classes unknown to ``classes``.
    """
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        raise DataError(f"{root} has no class folders: expected {root}/<class name>/<image files> (ImageFolder layout)")
    names = list(classes) if classes is not None else found
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise DataError(f"{root} has class folders {unknown} that the training split does not have ({len(names)} classes)")
    index = {c: i for i, c in enumerate(names)}
    files, labels = [], []
    for c in found:
        images = sorted(p for p in (root / c).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not images:
            raise DataError(f"class folder {root / c} has no images ({', '.join(IMAGE_SUFFIXES[:4])} ...)")
        files += images
        labels += [index[c]] * len(images)
    return files, labels, names


@DATAMODULES.register("imagefolder")
class ImageFolderDataModule(ImageDataModule):
    """Any dataset in class-per-folder layout: ``root/train/<class>/*`` and ``root/val/<class>/*``.

    Without a ``train`` folder, ``root/<class>/*`` is split (stratified, ``val_fraction``).

    Args:
        root: dataset folder.
        img_size: model input size.
        in_chans: 3 (RGB) or 1 (grey).
        num_classes: the number of class folders (checked; the model's head is built from it).
        train_dir: training split folder under ``root``.
        val_dir: validation split folder under ``root`` (optional).
        val_fraction: share held out when there is no ``val_dir``.
        split_seed: seed of that split.
        augment: ``create_transform`` training options over the defaults (see ``transforms.create_transforms``).
        crop_pct: evaluation crop fraction (default: 1 for small, 0.875 for large images).
        mean: normalisation mean (default ImageNet's).
        std: normalisation std.
        interpolation: resize interpolation.
        batch_size: loader batch size.
        num_workers: loader workers.
    """

    def __init__(
        self,
        root: Optional[str] = None,
        img_size: int = 224,
        in_chans: int = 3,
        num_classes: Optional[int] = None,
        train_dir: str = "train",
        val_dir: str = "val",
        val_fraction: float = 0.1,
        split_seed: int = 0,
        augment: Optional[Mapping[str, Any]] = None,
        crop_pct: Optional[float] = None,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        interpolation: str = "bicubic",
        batch_size: int = 64,
        num_workers: int = 2,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if not root:
            raise ConfigError("data.root is required for imagefolder: the folder with train/<class>/ and val/<class>/")
        self.root = Path(root).expanduser()
        self.img_size, self.in_chans, self.num_classes = img_size, in_chans, num_classes
        self.mode = pil_mode(in_chans)
        self.mean = channel_stats(mean, IMAGENET_DEFAULT_MEAN, in_chans, "mean")
        self.std = channel_stats(std, IMAGENET_DEFAULT_STD, in_chans, "std")
        self.train_dir, self.val_dir, self.val_fraction, self.split_seed = train_dir, val_dir, val_fraction, split_seed
        self.train_tf, self.eval_tf = create_transforms(img_size, self.mean, self.std, augment, crop_pct, interpolation)
        self.class_names: list[str] = []

    def _dataset(self, files: Sequence[Path], labels: Sequence[int], transform: Callable) -> PILDataset:
        return PILDataset(FileImages(files, self.mode), labels, transform)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        if not self.root.is_dir():
            raise DataError(f"ImageFolder dataset not found: {self.root} does not exist; expected "
                            f"{self.root}/{self.train_dir}/<class>/<images> (and optionally {self.val_dir}/<class>/), "
                            "or <root>/<class>/<images>")
        train_root = self.root / self.train_dir
        split = train_root.is_dir()
        files, labels, names = scan_image_folder(train_root if split else self.root)
        if self.num_classes != len(names):
            shown = names if len(names) <= 10 else names[:10] + ["..."]
            raise DataError(f"{train_root if split else self.root} has {len(names)} class folders {shown} but "
                            f"data.num_classes={self.num_classes}; set data.num_classes={len(names)}")
        self.class_names = names
        val_root = self.root / self.val_dir
        if split and val_root.is_dir():
            val_files, val_labels, _ = scan_image_folder(val_root, names)
        else:
            if not 0 < self.val_fraction < 1:
                raise ConfigError(f"no {val_root}: data.val_fraction must be in (0, 1) to hold out validation images")
            tr, va = _stratified_split(np.asarray(labels), self.val_fraction, self.split_seed)
            val_files, val_labels = [files[i] for i in va], [labels[i] for i in va]
            files, labels = [files[i] for i in tr], [labels[i] for i in tr]
        self.train_set = self._dataset(files, labels, self.train_tf)
        self.val_set = self._dataset(val_files, val_labels, self.eval_tf)
        log.info("imagefolder %s: %d classes, %d training and %d validation images",
                 self.root, len(names), len(files), len(val_files))
