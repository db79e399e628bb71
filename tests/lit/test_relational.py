"""The embedded relational task: deterministic, balanced, and its labels mean what they say."""
import numpy as np
import pytest
import torch

from lightning_convshare.errors import ConfigError
from lightning_convshare.lit import create_datamodule
from lightning_convshare.lit.relational import make_same_different


def _crop(images: np.ndarray, corners: np.ndarray, s: int) -> np.ndarray:
    """The two s x s glyph crops of every image: n, 2, s, s."""
    n = len(images)
    rows = corners[:, :, 0, None, None] + np.arange(s)[None, None, :, None]  # n, 2, s, 1
    cols = corners[:, :, 1, None, None] + np.arange(s)[None, None, None, :]  # n, 2, 1, s
    return images[np.arange(n)[:, None, None, None], 0, rows, cols]


@pytest.mark.parametrize("shape_size, jitter", [(4, 0), (2, 2)])
def test_same_pairs_hold_one_shape_twice_and_different_pairs_two_shapes_of_equal_size(shape_size, jitter):
    s = make_same_different(400, 3, shape_size=shape_size, jitter=jitter)
    size = s.glyphs.shape[-1]
    crops = _crop(s.images, s.corners, size)
    np.testing.assert_array_equal(crops, s.glyphs)  # the image holds exactly the recorded glyphs ...
    assert s.images.sum() == s.glyphs.sum()  # ... and nothing else
    same = (crops[:, 0] == crops[:, 1]).all(axis=(1, 2))
    np.testing.assert_array_equal(same, s.labels == 1)
    lit = crops.sum(axis=(2, 3))
    np.testing.assert_array_equal(lit[:, 0], lit[:, 1])  # pixel counts never tell the classes apart
    assert (lit >= 2).all() and (lit < size * size).all()


def test_glyphs_lie_in_distinct_cells_far_apart_and_inside_the_image():
    s = make_same_different(500, 1, img_size=32, cell=4, shape_size=3, jitter=1, min_distance=3.0)
    cells = s.corners // 4  # n, 2, (row, col)
    assert np.linalg.norm(cells[:, 0] - cells[:, 1], axis=-1).min() >= 3.0
    offsets = s.corners % 4
    assert offsets.max() <= 1 and s.corners.max() + 3 <= 32
    assert len(np.unique(offsets.reshape(-1, 2), axis=0)) == 4  # every offset up to the jitter occurs


def test_datamodule_is_deterministic_for_a_seed_balanced_and_of_the_declared_shape():
    a, b, c = (create_datamodule({"name": "relational", "num_train": 300, "num_val": 101, "seed": seed})
               for seed in (0, 0, 1))
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.train_set.images, b.train_set.images) and torch.equal(a.val_set.labels, b.val_set.labels)
    assert torch.equal(a.val_set.images, b.val_set.images)
    assert not torch.equal(a.train_set.images, c.train_set.images)
    assert torch.bincount(a.train_set.labels).tolist() == [150, 150]
    assert torch.bincount(a.val_set.labels).tolist() == [51, 50]
    x, y = next(iter(a.val_dataloader()))
    assert x.shape == (101, 1, 32, 32) and y.dtype == torch.long and (a.img_size // 4) ** 2 == 64
    assert abs(a.train_set.images.mean().item()) < 1e-5 and a.train_set.images.std().item() == pytest.approx(1, abs=1e-3)
    # the validation set does not depend on the training set's size
    d = create_datamodule({"name": "relational", "num_train": 50, "num_val": 101})
    d.setup()
    np.testing.assert_array_equal(d.val_samples.images, a.val_samples.images)


def test_flipped_training_images_keep_their_label():
    s = make_same_different(200, 5, jitter=0)
    flipped = s.images[..., ::-1]
    corners = s.corners.copy()
    corners[:, :, 1] = 32 - 4 - corners[:, :, 1]
    crops = _crop(flipped, corners, 4)
    np.testing.assert_array_equal((crops[:, 0] == crops[:, 1]).all(axis=(1, 2)), s.labels == 1)


@pytest.mark.parametrize("options, message", [
    ({"cell": 5}, "data.cell=5 must divide data.img_size=32"),
    ({"shape_size": 5}, "data.shape_size=5 must be between 2 and data.cell=4"),
    ({"shape_size": 3, "jitter": 2}, "data.jitter=2 must be between 0 and cell - shape_size = 1"),
    ({"min_distance": 9}, "data.min_distance=9 cells is too far"),
    ({"num_classes": 10}, "relational has 1 channel and 2 classes"),
    ({"num_train": 1}, "data.num_train=1 must be an integer >= 2"),
])
def test_impossible_geometry_fails_with_what_would_work(options, message):
    with pytest.raises(ConfigError, match=message):
        create_datamodule({"name": "relational", **options})
