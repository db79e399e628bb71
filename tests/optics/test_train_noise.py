"""Config wiring, a short noise-aware training run that still learns, checkpoints that keep their
backend, and `convshare robustness` on the result."""
import csv
import json
import math

import pytest

from lightning_convshare.cli import main
from lightning_convshare.config import compose
from lightning_convshare.layers import ConvShareLinear
from lightning_convshare.lit import create_module, run_training
from lightning_convshare.models import load_run_checkpoint
from lightning_convshare.optics import OpticalConv

NOISE = "optics.noise=[{name: shot, photons: 1e3}, {name: read, sigma: 1e-3}, {name: adc, bits: 8}]"
TINY = ["data=synthetic", "logger=csv", "trainer=cpu", "model.embed_dim=32", "model.depth=1", "model.num_heads=2"]


def test_optics_group_feeds_the_surgery_backend():
    cfg = compose(["optics=optical", NOISE, 'surgery.backend_overrides={"blocks.*.mlp.fc2": {name: fourier}}', *TINY])
    assert cfg.surgery.backend.name == "optical" and cfg.surgery.backend.noise[0].name == "shot"
    module = create_module(cfg)
    kinds = {n: type(m.backend).__name__ for n, m in module.net.named_modules() if isinstance(m, ConvShareLinear)}
    assert kinds == {"blocks.0.attn.qkv": "OpticalConv", "blocks.0.attn.proj": "OpticalConv",
                     "blocks.0.mlp.fc1": "OpticalConv", "blocks.0.mlp.fc2": "FourierConv"}
    assert compose(["optics=fourier"]).surgery.backend.readout == "field"
    assert compose([]).surgery.backend == {"name": "direct", "impl": "auto"}


def test_noise_on_a_backend_without_stages_is_a_clean_error(capsys):
    assert main(["train", "--print-config", "optics.noise=[{name: shot}]"]) == 2  # direct has no optics.noise
    assert "unknown config key 'optics.noise'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("noisy")
    cfg = compose([*TINY, "trainer.max_epochs=3", f"run.dir={root / 'run'}", "optics=optical", NOISE])
    return run_training(cfg)


@pytest.mark.slow
def test_short_noisy_training_run_still_learns(noisy_run):
    metrics = json.loads((noisy_run.run_dir / "metrics.json").read_text())
    assert metrics["val/acc"] >= 0.75, metrics  # chance is 0.25 (4 classes)
    assert metrics["train/loss"] < math.log(4)
    model = load_run_checkpoint(noisy_run.best_checkpoint).model  # the checkpoint rebuilds the same optics
    backends = [m.backend for m in model.modules() if isinstance(m, ConvShareLinear)]
    assert backends and all(isinstance(b, OpticalConv) for b in backends)
    assert [type(s).__name__ for s in backends[0].stages] == ["ShotNoise", "ReadNoise", "AdcQuantization"]
    assert backends[0].stages[0].photons == 1e3


@pytest.mark.slow
def test_robustness_writes_table_plot_and_wandb_run(noisy_run, tmp_path, capsys):
    out = tmp_path / "rob"
    argv = ["robustness", str(noisy_run.best_checkpoint), "--noise", "shot", "--levels", "1,1e4", "--out", str(out),
            "--wandb", "offline", "data.batch_size=64"]
    assert main(argv) == 0
    rows = list(csv.DictReader((out / "robustness.csv").open()))
    assert [r["setting"] for r in rows] == ["direct", "optical noise-free", "optical + shot", "optical + shot"]
    acc = {r["level"] or r["setting"]: float(r["acc"]) for r in rows}
    assert acc["1.0"] < acc["optical noise-free"]  # one photon per full-scale pixel ruins the model
    assert abs(acc["optical noise-free"] - acc["direct"]) <= 0.05  # the noise-free optics computes the same conv
    assert (out / "robustness.png").read_bytes()[:4] == b"\x89PNG"
    assert "| direct |" in (out / "robustness.md").read_text()
    assert list((out / "wandb").glob("offline-run-*"))
    assert "optical + shot" in capsys.readouterr().out


def test_robustness_bad_input_is_a_clean_error(tmp_path, capsys):
    assert main(["robustness", str(tmp_path / "none.ckpt"), "--noise", "shot", "--levels", "1"]) == 2
    assert "does not exist" in " ".join(capsys.readouterr().err.split())
