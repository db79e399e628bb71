"""The robustness study: its grid, its threshold, its files, and noise-aware fine-tuning."""
import csv
import json

import pytest
import torch
from omegaconf import OmegaConf

from lightning_convshare.cli import main
from lightning_convshare.config import compose
from lightning_convshare.evaluation.study import StudyGrid, StudyRow, keep_threshold
from lightning_convshare.lit import create_module
from lightning_convshare.optics import physical_backends
from lightning_convshare.resolve import resolve

TINY = ["data=synthetic", "data.num_train=64", "data.num_val=32", "model.embed_dim=16", "model.depth=1",
        "model.num_heads=2", "trainer.max_epochs=1", "logger=none"]


def test_the_grid_has_three_axes_without_duplicates():
    grid = StudyGrid(presets=("dmd-scmos", "lcos-cmos"), photons=(10.0, 1e4), bits=(8, 16), encodings=("offset", "pseudo_negativity"),
                     encoding="offset", draws=2)
    points = grid.points()
    axes = [p["axis"] for p in points]
    assert axes.count("preset") == 2 and points[0]["photons"] is None  # each preset as described
    assert axes.count("light") == 4 and axes.count("bits") == 4 and axes.count("encoding") == 2  # offset on light already
    spec = grid.spec("dmd-scmos", "offset", 12, 100.0, seed=3)
    assert spec["device"] == {"preset": "dmd-scmos", "light": {"photons": 100.0}, "camera": {"bits": 12}}
    assert spec["noise"] == ["device"] and spec["seed"] == 3 and spec["name"] == "optical"


def test_keep_threshold_is_the_smallest_budget_from_which_accuracy_stays_up():
    def row(axis, photons, acc):
        return StudyRow("m", "a", "r", axis, "p", "offset", None, photons, acc, 0.0, acc, acc, 1)

    rows = [row("clean", None, 1.0), row("light", 10.0, 0.2), row("light", 100.0, 0.97), row("light", 1e3, 0.9),
            row("light", 1e4, 0.96), row("light", 1e5, 0.99)]
    assert keep_threshold(rows, "m", "p", 0.95) == 1e4  # 100 dips back below at 1e3
    assert keep_threshold(rows, "m", "p", 0.999) is None


@pytest.mark.slow
def test_the_study_command_on_a_tiny_configuration_writes_its_files(tmp_path, capsys):
    argv = ["robustness-study", "--out", str(tmp_path / "study"), "--wandb", "disabled", *TINY,
            "study.evaluate.presets=[dmd-scmos]", "study.evaluate.photons=[100,10000]", "study.evaluate.bits=[8]",
            "study.evaluate.encodings=[pseudo_negativity]", "study.evaluate.draws=2", "study.evaluate.backend.compile=false",
            "study.regimes.noise_finetune.overrides=[optics=optical,optics.device=dmd-scmos,optics.compile=false]",
            "study.regimes.noise_scratch.overrides=[optics=optical,optics.device=dmd-scmos,optics.compile=false]"]
    assert main(argv) == 0, capsys.readouterr().err
    out = tmp_path / "study"
    with (out / "study.csv").open() as f:
        rows = list(csv.DictReader(f))
    models = {r["model"] for r in rows}
    assert models == {f"{a}-{r}" for a in ("valid_full", "same_k3") for r in ("clean", "noise_finetune", "noise_scratch")}
    per_model = [r for r in rows if r["model"] == "same_k3-noise_finetune"]
    assert [r["axis"] for r in per_model] == ["clean", "noise-free", "preset", "light", "light", "bits", "bits",
                                                "encoding", "encoding"]
    assert all(r["draws"] == "2" for r in per_model if r["axis"] not in ("clean", "noise-free"))
    assert all(0.0 <= float(r["acc"]) <= 1.0 and float(r["acc_min"]) <= float(r["acc"]) <= float(r["acc_max"]) for r in rows)
    md = (out / "study.md").read_text()
    assert "dmd-scmos photons@95%" in md and "dmd-scmos acc" in md and "same_k3-noise_scratch" in md
    assert (out / "study.png").read_bytes()[:4] == b"\x89PNG"
    finetuned = json.loads((out / "runs" / "same_k3-noise_finetune" / "metrics.json").read_text())
    assert finetuned["epochs"] == 1
    # a second call trains nothing: every run finished
    assert main([*argv[:3], "--skip-training", *argv[3:]]) == 0


def test_a_noise_aware_fine_tune_step_changes_the_weights_with_noise_on(tmp_path):
    clean_dir = tmp_path / "clean"
    assert main(["train", *TINY, "surgery=convshare_same_k3", f"run.dir={clean_dir}"]) == 0
    ckpt = clean_dir / "checkpoints" / "last.ckpt"
    cfg = resolve(compose([*TINY, f"init_from={ckpt}", "optics=optical", "optics.device=dmd-scmos", "optics.compile=false"]))
    module = create_module(cfg).train()
    clean = create_module(resolve(compose([*TINY, f"init_from={ckpt}"])))
    assert not list(physical_backends(clean.net))  # the clean reference computes electronically, without noise
    backends = list(physical_backends(module.net))
    assert backends and all(b.noise_enabled and b.active_stages for b in backends)
    before = {k: v.clone() for k, v in module.net.state_dict().items()}
    assert all(torch.equal(before[k], v) for k, v in clean.net.state_dict().items() if k in before)  # starts as the clean net
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 4, (8,))
    optimizer = torch.optim.SGD(module.net.parameters(), lr=0.1)
    noisy = module.net(x)
    with torch.no_grad():
        from lightning_convshare.optics import noise_disabled

        with noise_disabled(module.net):
            quiet = module.net(x)
    assert not torch.allclose(noisy, quiet)  # the step ran through the device's noise
    torch.nn.functional.cross_entropy(noisy, y).backward()
    optimizer.step()
    assert any(not torch.equal(before[k], v) for k, v in module.net.state_dict().items())
    assert OmegaConf.select(cfg, "surgery.padding") == "same"
