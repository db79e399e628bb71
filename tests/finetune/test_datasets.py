import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_convshare.config import compose
from lightning_convshare.errors import ConfigError, DataError
from lightning_convshare.lit import create_datamodule
from lightning_convshare.lit.datasets import CIFAR100_URL, read_cifar100

FINE = [f"fine{i}" for i in range(100)]
COARSE = [f"coarse{i}" for i in range(20)]


def write_fake_cifar100(root, n_train=20, n_test=10, archive=False):
    """The CIFAR-100 python layout: pickled dicts with byte-string keys, (n, 3072) uint8 rows (R, G, B planes)."""
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in (("train", n_train), ("test", n_test)):
        fine = (np.arange(n) * 7) % 100
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        data[:, 0] = fine  # the first red pixel of each image encodes its label, to check the layout
        splits[split] = (data, fine)
        with open(base / split, "wb") as f:
            pickle.dump({b"filenames": [f"img{i}.png".encode() for i in range(n)], b"batch_label": split.encode(),
                         b"fine_labels": fine.tolist(), b"coarse_labels": (fine // 5).tolist(), b"data": data}, f, protocol=2)
    with open(base / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [n.encode() for n in FINE], b"coarse_label_names": [n.encode() for n in COARSE]}, f)
    if archive:
        with tarfile.open(root / "cifar-100-python.tar.gz", "w:gz") as tar:
            tar.add(base, arcname="cifar-100-python")
        for p in base.iterdir():
            p.unlink()
        base.rmdir()
    return splits


def test_fake_cifar100_archive_loads_with_shapes_labels_and_class_names(tmp_path):
    splits = write_fake_cifar100(tmp_path)
    arrays = read_cifar100(tmp_path)
    assert arrays.train_images.shape == (20, 32, 32, 3) and arrays.test_images.shape == (10, 32, 32, 3)
    assert arrays.class_names == FINE
    np.testing.assert_array_equal(arrays.train_labels, splits["train"][1])
    np.testing.assert_array_equal(arrays.train_images[:, 0, 0, 0], splits["train"][1])  # CHW rows -> HWC images
    np.testing.assert_array_equal(arrays.train_images[3].transpose(2, 0, 1).reshape(-1), splits["train"][0][3])

    cfg = compose(["data=cifar100", f"data.root={tmp_path}", "data.batch_size=8", "data.num_workers=0"])
    dm = create_datamodule(dict(cfg.data))
    dm.setup()
    assert dm.class_names == FINE and len(dm.train_set) == 20 and len(dm.val_set) == 10
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
    assert y.tolist() == splits["test"][1][:8].tolist()
    xt, _ = next(iter(dm.train_dataloader()))
    assert xt.shape == (8, 3, 32, 32)


def test_cifar100_coarse_labels_224px_and_tar_gz_extraction(tmp_path):
    splits = write_fake_cifar100(tmp_path, archive=True)
    dm = create_datamodule(dict(name="cifar100", root=str(tmp_path), img_size=224, num_classes=20, labels="coarse",
                                val_fraction=0.5, batch_size=4, num_workers=0))
    dm.setup()
    assert (tmp_path / "cifar-100-python" / "meta").is_file()  # extracted on first use
    assert dm.class_names == COARSE and len(dm.test_set) == 10 and len(dm.train_set) + len(dm.val_set) == 20
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (4, 3, 224, 224)
    assert y.tolist() == (splits["test"][1][:4] // 5).tolist()


def test_missing_cifar100_archive_says_where_and_how_to_get_it(tmp_path):
    dm = create_datamodule(dict(name="cifar100", root=str(tmp_path / "nowhere"), num_workers=0))
    with pytest.raises(DataError) as err:
        dm.setup()
    msg = str(err.value)
    assert f"{tmp_path / 'nowhere' / 'cifar-100-python'}/ (files train, test, meta)" in msg
    assert CIFAR100_URL in msg and "data.download=true" in msg


def test_malformed_cifar100_files_are_named(tmp_path):
    write_fake_cifar100(tmp_path)
    with open(tmp_path / "cifar-100-python" / "test", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"fine_labels": [0] * 4}, f)
    with pytest.raises(DataError, match=r"test: 'data' is uint8 \(4, 100\), expected uint8 \(n, 3072\)"):
        read_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "meta").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="meta is not a CIFAR-100 python pickle"):
        read_cifar100(tmp_path)
    with pytest.raises(ConfigError, match="has 100 classes; got data.num_classes=10"):
        create_datamodule(dict(name="cifar100", root=str(tmp_path), num_classes=10))


def _write_pngs(root, classes, per_class, size=(20, 12)):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_imagefolder_of_generated_pngs_loads(tmp_path):
    _write_pngs(tmp_path / "train", ["cat", "dog", "owl"], 4)
    _write_pngs(tmp_path / "val", ["dog", "owl"], 2)  # a split may lack a class: labels follow the training split
    cfg = compose(["data=imagefolder", f"data.root={tmp_path}", "data.num_classes=3", "data.img_size=32",
                   "data.batch_size=16", "data.num_workers=0"])
    dm = create_datamodule(dict(cfg.data))
    dm.setup()
    assert dm.class_names == ["cat", "dog", "owl"]
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [1, 1, 2, 2]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (12, 3, 32, 32) and sorted(y.tolist()) == [0] * 4 + [1] * 4 + [2] * 4

    grey = create_datamodule(dict(name="imagefolder", root=str(tmp_path / "train"), num_classes=3, img_size=16,
                                  in_chans=1, val_fraction=0.25, batch_size=64, num_workers=0))
    grey.setup()  # no train/ folder: <root>/<class>/ split into train and val
    assert len(grey.train_set) == 9 and len(grey.val_set) == 3
    assert next(iter(grey.val_dataloader()))[0].shape == (3, 1, 16, 16)


def test_imagefolder_errors_say_what_was_expected(tmp_path):
    _write_pngs(tmp_path / "train", ["a", "b"], 1)
    with pytest.raises(DataError, match=r"has 2 class folders \['a', 'b'\] but data.num_classes=5; set data.num_classes=2"):
        create_datamodule(dict(name="imagefolder", root=str(tmp_path), num_classes=5, num_workers=0)).setup()
    with pytest.raises(DataError, match="does not exist; expected"):
        create_datamodule(dict(name="imagefolder", root=str(tmp_path / "x"), num_classes=2, num_workers=0)).setup()
    (tmp_path / "train" / "c").mkdir()
    with pytest.raises(DataError, match="class folder .*c has no images"):
        create_datamodule(dict(name="imagefolder", root=str(tmp_path), num_classes=3, num_workers=0)).setup()
    with pytest.raises(ConfigError, match="data.root is required"):
        create_datamodule(dict(name="imagefolder", num_classes=3))


@pytest.mark.parametrize("experiment", ["finetune", "finetune_progressive", "finetune_cifar100", "finetune_cifar100_teacher"])
def test_finetune_experiments_compose(experiment, tmp_path):
    write_fake_cifar100(tmp_path, n_train=4, n_test=2)
    cfg = compose([f"experiment={experiment}", f"data.root={tmp_path}"] if "cifar" in experiment else [f"experiment={experiment}"])
    if experiment == "finetune_cifar100_teacher":
        assert cfg.surgery.name == "vit" and cfg.init_from and cfg.distill is None
    else:
        assert cfg.distill.logit_weight > 0 and cfg.surgery.init == "lstsq"
    if "cifar" in experiment:
        assert cfg.model.img_size == 224 and cfg.model.num_classes == 100
        dm = create_datamodule(dict(cfg.data, num_workers=0))
        dm.setup()
        assert dm.val_set[0][0].shape == (3, 224, 224)


def test_a_corrupt_image_is_skipped_with_its_name_and_a_count(tmp_path, caplog):
    _write_pngs(tmp_path / "images", ["cat", "dog"], 3)
    bad = sorted((tmp_path / "images" / "cat").iterdir())[1]
    bad.write_bytes(bad.read_bytes()[:60])  # truncated mid-file
    dm = create_datamodule(dict(name="imagefolder", root=str(tmp_path / "images"), num_classes=2, img_size=16,
                                batch_size=6, val_fraction=0.5))
    dm.setup("fit")
    dataset = dm.train_set if any(str(bad) == str(f) for f in dm.train_set.load.files) else dm.val_set
    index = [str(f) for f in dataset.load.files].index(str(bad))
    with caplog.at_level("WARNING"):
        x, y = dataset[index]
    assert x.shape == (3, 16, 16) and dataset.skipped == {index}
    assert f"skipping {bad}" in caplog.text and "1 unreadable image(s) so far" in caplog.text
    assert [len(b[0]) for b in dm.train_dataloader()] and [len(b[0]) for b in dm.val_dataloader()]  # whole epochs run
