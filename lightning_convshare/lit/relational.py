"""An embedded relational image task: SVRT-style same-different of two shapes far apart, generated on the fly.

Nothing is downloaded or stored: every image is drawn from a seeded generator when the DataModule is set up.
Each image holds two small random binary glyphs on a black background, at two cells of a grid (by default
the 4 px patch grid of a 32 px image, so each glyph lies in one token of the 64), at least ``min_distance``
cells apart. The label says whether the two glyphs are the same shape:

* ``same`` (label 1): the second glyph is a copy of the first;
* ``different`` (label 0): the second glyph is a random rearrangement of the first one's pixels, so it has
  the same number of lit pixels (no pixel count, brightness or size tells the classes apart: only the
  shapes do, and only by comparing two distant parts of the image).

With ``jitter > 0`` each glyph is moved by up to that many pixels inside its cell (independently), so the
two copies of a ``same`` pair usually sit at different offsets in their patches: a harder, translation-
invariant comparison.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
import torch
from torchvision.transforms import v2

from ..errors import ConfigError
from .data import DATAMODULES, ImageDataModule, TensorImageDataset

__all__ = ["RelationalDataModule", "SameDifferent", "make_same_different", "make_vocabulary"]


class SameDifferent(NamedTuple):
    """Generated same-different samples and how each was drawn.

    Attributes:
        images: ``uint8 (n, 1, H, W)``, 1 where a glyph pixel is lit, else 0.
        labels: ``int64 (n,)``, 1 = same, 0 = different; exactly balanced (alternating).
        corners: ``int64 (n, 2, 2)``, the top-left pixel ``(row, col)`` of each of the two glyphs.
        glyphs: ``uint8 (n, 2, s, s)``, the two glyphs as drawn.
    """

    images: np.ndarray
    labels: np.ndarray
    corners: np.ndarray
    glyphs: np.ndarray


def _check(img_size: int, cell: int, shape_size: int, jitter: int, min_distance: float, density: float) -> int:
    """Validate the geometry; returns the grid side ``img_size // cell``."""
    if cell < 1 or img_size % cell:
        raise ConfigError(f"data.cell={cell} must divide data.img_size={img_size} (e.g. the patch size, 4)")
    if not 2 <= shape_size <= cell:
        raise ConfigError(f"data.shape_size={shape_size} must be between 2 and data.cell={cell}")
    if not 0 <= jitter <= cell - shape_size:
        raise ConfigError(f"data.jitter={jitter} must be between 0 and cell - shape_size = {cell - shape_size}: a glyph "
                          "stays inside its cell")
    if not 0 < density < 1:
        raise ConfigError(f"data.density={density} must be in (0, 1)")
    grid = img_size // cell
    if not 0 <= min_distance <= (grid - 1) * np.sqrt(2) * 0.75:
        raise ConfigError(f"data.min_distance={min_distance} cells is too far on a {grid}x{grid} grid: use at most "
                          f"{(grid - 1) * np.sqrt(2) * 0.75:.1f} so that enough cell pairs qualify")
    return grid


def make_same_different(
    n: int, seed: int | np.random.SeedSequence, *, img_size: int = 32, cell: int = 4, shape_size: int = 4,
    jitter: int = 0, min_distance: float = 3.0, density: float = 0.5, vocabulary: Optional[np.ndarray] = None,
) -> SameDifferent:
    """Draw ``n`` same-different images (half of each class).

    Args:
        n: images to draw.
        seed: an integer or a ``numpy`` ``SeedSequence``; the same seed gives the same images.
        img_size: image side in pixels.
        cell: the grid the glyphs are placed on (a glyph per cell; the patch size puts each in one token).
        shape_size: glyph side in pixels (<= ``cell``).
        jitter: largest offset of a glyph inside its cell (0: top-left aligned).
        min_distance: least Euclidean distance between the two glyphs' cells, in cells.
        density: chance that a glyph pixel is lit (glyphs with fewer than 2 or all pixels lit are redrawn).
        vocabulary: ``(K, s, s)`` glyphs (:func:`make_vocabulary`) to draw the pairs from; ``None``: a new
            random glyph for every image.

    Returns:
        A :class:`SameDifferent`.

    Raises:
        ConfigError: a geometry that cannot hold two glyphs as asked.
    """
    grid = _check(img_size, cell, shape_size, jitter, min_distance, density)
    rng = np.random.default_rng(seed)
    s2 = shape_size * shape_size
    labels = (np.arange(n) % 2).astype(np.int64)

    if vocabulary is not None:  # two glyphs of the vocabulary: the same one twice, or two different ones
        vocab = np.asarray(vocabulary, dtype=bool).reshape(len(vocabulary), -1)
        if vocab.shape[1] != s2 or len(vocab) < 2:
            raise ConfigError(f"a vocabulary of {shape_size}x{shape_size} glyphs needs at least 2 of them, got "
                              f"{np.shape(vocabulary)}")
        a = rng.integers(0, len(vocab), size=n)
        b = np.where(labels == 1, a, (a + rng.integers(1, len(vocab), size=n)) % len(vocab))
        first, second = vocab[a], vocab[b]
    else:
        # first glyph: lit pixels at random, at least 2 and not all (so that a rearrangement can differ)
        first = rng.random((n, s2)) < density  # n, s*s
        while (redraw := np.flatnonzero((first.sum(1) < 2) | (first.sum(1) == s2))).size:
            first[redraw] = rng.random((redraw.size, s2)) < density
        # second glyph: a copy (same) or a rearrangement of the same pixels that differs (different)
        second = first.copy()
        todo = np.flatnonzero(labels == 0)
        while todo.size:
            perm = np.argsort(rng.random((todo.size, s2)), axis=1)
            second[todo] = np.take_along_axis(first[todo], perm, axis=1)
            todo = todo[(second[todo] == first[todo]).all(1)]
    glyphs = np.stack([first, second], 1).reshape(n, 2, shape_size, shape_size).astype(np.uint8)

    # two cells at least min_distance apart (rejection sampling, redrawing only the pairs that fail)
    cells = rng.integers(0, grid * grid, size=(n, 2))
    while True:
        rc = np.stack([cells // grid, cells % grid], -1)  # n, 2, (row, col)
        too_close = np.linalg.norm(rc[:, 0] - rc[:, 1], axis=-1) < max(min_distance, 1e-9)
        if not too_close.any():
            break
        cells[too_close] = rng.integers(0, grid * grid, size=(int(too_close.sum()), 2))
    offsets = rng.integers(0, jitter + 1, size=(n, 2, 2))
    corners = (rc * cell + offsets).astype(np.int64)  # n, 2, (row, col)

    images = np.zeros((n, 1, img_size, img_size), dtype=np.uint8)
    span = np.arange(shape_size)
    batch = np.arange(n)[:, None, None]
    for k in (0, 1):
        rows = corners[:, k, 0, None, None] + span[None, :, None]  # n, s, 1
        cols = corners[:, k, 1, None, None] + span[None, None, :]  # n, 1, s
        images[batch, 0, rows, cols] = glyphs[:, k]
    return SameDifferent(images, labels, corners, glyphs)


def make_vocabulary(k: int, seed: int | np.random.SeedSequence, *, shape_size: int = 4, density: float = 0.5) -> np.ndarray:
    """``k`` distinct ``uint8 (k, s, s)`` glyphs with the same number of lit pixels, ``round(density * s * s)``.

    Raises:
        ConfigError: fewer than 2 glyphs, or more than there are glyphs of that size and pixel count.
    """
    from math import comb

    s2 = shape_size * shape_size
    lit = min(max(round(density * s2), 1), s2 - 1)
    if not 2 <= k <= min(comb(s2, lit), 100_000):
        raise ConfigError(f"data.vocabulary={k} must be 0 (a new glyph per image) or between 2 and "
                          f"{min(comb(s2, lit), 100_000)} ({shape_size}x{shape_size} glyphs with {lit} lit pixels)")
    rng = np.random.default_rng(seed)
    glyphs: dict[bytes, np.ndarray] = {}
    while len(glyphs) < k:
        g = np.zeros(s2, dtype=np.uint8)
        g[rng.choice(s2, lit, replace=False)] = 1
        glyphs.setdefault(g.tobytes(), g)
    return np.stack(list(glyphs.values())).reshape(k, shape_size, shape_size)


@DATAMODULES.register("relational")
class RelationalDataModule(ImageDataModule):
    """Same-different of two random glyphs far apart (SVRT problem 1 style), drawn on the fly from a seed.

    The training and validation images come from two independent streams of ``seed`` (numpy
    ``SeedSequence.spawn``), so the validation set does not depend on ``num_train``. Images are
    normalised with the training images' mean and std; training images are flipped horizontally at
    random (a flip keeps the label: both glyphs flip alike).

    Args:
        img_size: image side (32: 64 tokens with 4 px patches).
        in_chans: must be 1.
        num_classes: must be 2 (``different``, ``same``).
        num_train: training images.
        num_val: validation images.
        cell: placement grid in pixels (the patch size puts each glyph in one token).
        shape_size: glyph side in pixels.
        jitter: largest offset of a glyph inside its cell.
        min_distance: least distance between the two glyphs' cells, in cells.
        density: chance that a glyph pixel is lit.
        vocabulary: 0: a new random glyph in every image (the second one of a different pair rearranges the first
            one's pixels); K >= 2: the pairs are drawn from K fixed glyphs (the same for training and validation)
            with equal pixel counts.
        flip: random horizontal flips of training images.
        seed: generator seed (same seed, same images).
        batch_size: loader batch size.
        num_workers: loader workers.
    """

    def __init__(
        self,
        img_size: int = 32,
        in_chans: int = 1,
        num_classes: int = 2,
        num_train: int = 5000,
        num_val: int = 1000,
        cell: int = 4,
        shape_size: int = 4,
        jitter: int = 0,
        min_distance: float = 3.0,
        density: float = 0.5,
        vocabulary: int = 0,
        flip: bool = True,
        seed: int = 0,
        batch_size: int = 128,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if in_chans != 1 or num_classes != 2:
            raise ConfigError(f"relational has 1 channel and 2 classes (different, same); got in_chans={in_chans}, "
                              f"num_classes={num_classes}")
        for key, value in (("num_train", num_train), ("num_val", num_val)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ConfigError(f"data.{key}={value!r} must be an integer >= 2")
        _check(img_size, cell, shape_size, jitter, min_distance, density)
        if vocabulary:
            make_vocabulary(vocabulary, 0, shape_size=shape_size, density=density)  # checks k
        self.vocabulary = vocabulary
        self.img_size, self.in_chans, self.num_classes = img_size, 1, 2
        self.class_names = ["different", "same"]
        self.mean, self.std = (0.0,), (1.0,)
        self.num_train, self.num_val, self.seed, self.flip = num_train, num_val, seed, flip
        self.geometry = dict(img_size=img_size, cell=cell, shape_size=shape_size, jitter=jitter,
                             min_distance=min_distance, density=density)
        self.train_samples: Optional[SameDifferent] = None
        self.val_samples: Optional[SameDifferent] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        train_seed, val_seed, vocab_seed = np.random.SeedSequence(self.seed).spawn(3)
        vocab = None
        if self.vocabulary:
            g = self.geometry
            vocab = make_vocabulary(self.vocabulary, vocab_seed, shape_size=g["shape_size"], density=g["density"])
        self.train_samples = make_same_different(self.num_train, train_seed, **self.geometry, vocabulary=vocab)
        self.val_samples = make_same_different(self.num_val, val_seed, **self.geometry, vocabulary=vocab)
        train = torch.from_numpy(self.train_samples.images).float()  # n, 1, H, W
        self.mean, self.std = (train.mean().item(),), (train.std().item(),)
        norm = v2.Normalize(self.mean, self.std)
        train_tf = v2.RandomHorizontalFlip() if self.flip else None
        self.train_set = TensorImageDataset(norm(train), torch.from_numpy(self.train_samples.labels), train_tf)
        val = torch.from_numpy(self.val_samples.images).float()
        self.val_set = TensorImageDataset(norm(val), torch.from_numpy(self.val_samples.labels))
