import json

import pytest
import torch

from lightning_convshare.lit import ConvShareClassifier, create_datamodule, run_training
from lightning_convshare.lit.loggers import resolve_wandb_mode
from lightning_convshare.models import load_run_checkpoint


@pytest.mark.slow
def test_short_training_run_learns(tiny_cfg):
    cfg = tiny_cfg("surgery.padding=same", "surgery.kernel_size=3", "trainer.max_epochs=8", "data.num_classes=4")
    result = run_training(cfg)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["val/acc"] >= 0.9, metrics  # chance is 0.25
    assert metrics["train/loss"] < 1.2  # ln(4) = 1.39 at chance
    assert (result.run_dir / "config.yaml").is_file() and (result.run_dir / "surgery.txt").is_file()
    assert (result.run_dir / "csv" / "metrics.csv").is_file()
    # the checkpoint rebuilds the same network and predictions
    model = ConvShareClassifier.load_from_checkpoint(result.best_checkpoint, map_location="cpu").eval()
    dm = create_datamodule(dict(cfg.data))
    dm.setup()
    x, _ = next(iter(dm.val_dataloader()))
    assert model(x).shape == (len(x), 4)
    rebuilt = load_run_checkpoint(result.best_checkpoint).model.eval()  # no Lightning needed to reload
    torch.testing.assert_close(rebuilt(x), model(x))
    assert rebuilt.blocks[0].attn.qkv.geometry.padding == "same"


def test_offline_wandb_run_writes_its_files(tiny_cfg, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent")
    assert resolve_wandb_mode("auto") == "offline"
    result = run_training(tiny_cfg("logger=wandb", "trainer.max_epochs=1"))
    runs = list((result.run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb")), "the offline run has no .wandb data file"
    assert (runs[0] / "files").is_dir()


def test_wandb_mode_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode("auto") == "disabled"
    assert resolve_wandb_mode("offline") == "offline"


def test_digits_datamodule_split_is_deterministic_and_stratified():
    a, b = create_datamodule({"name": "digits"}), create_datamodule({"name": "digits"})
    a.setup(), b.setup()
    assert len(a.train_set) + len(a.val_set) == 1797 and len(a.val_set) == 360
    assert torch.equal(a.val_set.labels, b.val_set.labels) and torch.equal(a.val_set.images, b.val_set.images)
    assert torch.bincount(a.val_set.labels).min() >= 35  # every class is in the validation split
    x, y = next(iter(a.train_dataloader()))
    assert x.shape == (64, 1, 16, 16) and y.dtype == torch.long


@pytest.mark.slow
def test_valid_whole_map_convshare_trains_exactly_like_the_vit(tiny_cfg):
    """Same init (weights transferred), same random stream (surgery forks the RNG), same maths."""
    runs = {
        name: run_training(tiny_cfg(*extra, "trainer.max_epochs=2", f"run.name={name}"))
        for name, extra in {"vit": ["surgery=vit"], "convshare": ["surgery.kernel_size=full"]}.items()
    }
    a, b = (json.loads((r.run_dir / "metrics.json").read_text()) for r in runs.values())
    for key in ("train/loss", "val/loss", "val/acc"):
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    sd_vit = torch.load(runs["vit"].best_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    sd_cs = torch.load(runs["convshare"].best_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    for key, value in sd_vit.items():
        torch.testing.assert_close(sd_cs[key].reshape(value.shape), value, rtol=1e-4, atol=1e-6)


def test_last_checkpoint_is_the_final_epoch_and_best_is_the_best(tiny_cfg):
    # monitoring the *highest* val/loss makes the first epoch the best one
    result = run_training(tiny_cfg("trainer.max_epochs=3", "checkpoint.monitor=val/loss", "checkpoint.mode=max"))
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    last = torch.load(metrics["last_checkpoint"], map_location="cpu", weights_only=False)
    best = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=False)
    assert metrics["last_checkpoint"].endswith("last.ckpt")
    assert last["epoch"] == 2 and best["epoch"] == 0


def test_accuracy_is_top1_over_samples_not_the_class_average():
    module = ConvShareClassifier(model=dict(name="vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=1,
                                            num_classes=3, embed_dim=32, depth=1, num_heads=2))
    logits = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]])
    module.val_acc(logits, torch.tensor([0, 0, 0, 2]))  # 3 of 4 right; macro average would be (1 + 0) / 2
    assert module.val_acc.compute().item() == pytest.approx(0.75)
