"""A fine-tune killed after its first epoch and resumed with `convshare finetune --resume` continues it."""
import json

import pytest
import pytorch_lightning as pl
import torch

from lightning_convshare.cli import main
from lightning_convshare.conversion import ShrinkingLayer
from lightning_convshare.layers import ConvShareLinear
from lightning_convshare.lit import callbacks as callback_module
from lightning_convshare.lit import run_training
from lightning_convshare.models import load_run_checkpoint

BASE = ["data=synthetic", "logger=csv", "model.embed_dim=32", "model.depth=2", "model.num_heads=2", "data.num_train=96",
        "data.batch_size=16", "trainer.deterministic=true", "optim.warmup_epochs=0"]
EXPERIMENTS = {
    "oneshot": ["experiment=finetune"],
    "shrink": ["experiment=finetune_shrink", "distill.shrink.support=[0.0,0.5]", "distill.shrink.blend=[0.0,0.75]"],
    "progressive": ["experiment=finetune_progressive"],
}


class Killed(RuntimeError):
    """Stands for the process dying in the middle of the second epoch."""


class _Killer(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 2:
            raise Killed("killed mid-epoch")


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    from lightning_convshare.config import compose

    root = tmp_path_factory.mktemp("vit")
    cfg = compose(["surgery=vit", "trainer=cpu", *BASE, "trainer.max_epochs=2", f"run.dir={root / 'vit'}"])
    return run_training(cfg).run_dir / "checkpoints" / "last.ckpt"


def _finetune(vit, run_dir, experiment):
    return ["finetune", "--source", str(vit), *EXPERIMENTS[experiment], *BASE, "surgery.padding=same",
            "surgery.kernel_size=3", "trainer.max_epochs=4", f"run.dir={run_dir}"]


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_a_finetune_killed_after_epoch_1_and_resumed_ends_like_an_uninterrupted_one(vit, experiment, tmp_path, monkeypatch):
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(_finetune(vit, full, experiment)) == 0
    factories = callback_module.CALLBACK_FACTORIES
    monkeypatch.setattr(callback_module, "CALLBACK_FACTORIES", (*factories, lambda cfg, run_dir: _Killer()))
    with pytest.raises(Killed):
        main(_finetune(vit, cut, experiment))
    monkeypatch.setattr(callback_module, "CALLBACK_FACTORIES", factories)
    assert not (cut / "metrics.json").exists() and (cut / "checkpoints" / "last.ckpt").is_file()
    saved = torch.load(cut / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["epoch"] == 0 and "teacher.head.weight" not in saved["state_dict"]
    if experiment != "oneshot":  # the kill falls while layers are still staged (linear or blending)
        assert not all(saved["distill"]["converted"].values()), saved["distill"]["converted"]

    assert main(["finetune", "--resume", str(cut)]) == 0
    m, f = (json.loads((d / "metrics.json").read_text()) for d in (cut, full))
    assert m["epochs"] == f["epochs"] == 4 and m["resumed_from"].endswith("last.ckpt")
    resumed, expected = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for d in (cut, full))
    assert resumed.keys() == expected.keys() and not any(k.startswith("teacher.") for k in resumed)
    assert all(torch.equal(resumed[k], expected[k]) for k in expected), "weights differ from the uninterrupted run"
    assert m["val/acc"] == f["val/acc"] and m["val/acc_start"] == f["val/acc_start"]  # the start is not re-measured
    model = load_run_checkpoint(cut / "checkpoints" / "last.ckpt").model  # a plain ConvShare network, 3x3 everywhere
    convs = [mod for mod in model.modules() if isinstance(mod, ConvShareLinear)]
    assert len(convs) == 8 and all(c.weight.shape[-2:] == (3, 3) for c in convs)
    assert not any(isinstance(mod, ShrinkingLayer) for mod in model.modules())
