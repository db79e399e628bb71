"""The paper-grid sweep on the embedded relational task, at a tiny size: reference first, then trials compared with it."""
import json

import pytest
import yaml

from lightning_convshare.cli import main
from lightning_convshare.config import compose
from lightning_convshare.lit import run_training
from lightning_convshare.resolve import resolve

from .conftest import trials_of

TINY = ["experiment=paper_grid_relational", "data.num_train=64", "data.num_val=32", "data.batch_size=32",
        "model.embed_dim=32", "model.depth=2", "model.num_heads=2", "trainer.max_epochs=1", "logger=csv",
        "attention.images.num=0"]


@pytest.mark.slow
def test_paper_grid_on_the_relational_task_runs_end_to_end_with_per_layer_attention(write_sweep, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the sweep's relative reference path, as in sweeps/paper_grid_relational.yaml
    reference = run_training(resolve(compose([*TINY, "surgery=vit", "attention.enabled=true",
                                              "run.dir=runs/reference"])))
    assert reference.metrics["val/attn/distance"] > 0
    sweep = write_sweep({"surgery.padding": {"values": ["valid", "same"]}, "surgery.targets": {"values": [["attn", "mlp"]]}},
                        command=["${env}", "convshare", "train", *TINY, "seed=1",
                                 "reference.source=runs/reference/checkpoints/last.ckpt", "${args_no_hyphens}"])
    assert main(["sweep", str(sweep), "--dir", "s", "--parallel", "2", "--wandb", "disabled"]) == 0
    trials = trials_of(tmp_path / "s")
    assert [t["status"] for t in trials.values()] == ["finished", "finished"], [t["message"] for t in trials.values()]
    for t in trials.values():
        run = tmp_path / "s" / "trials" / t["id"] / f"t-{t['id']}"
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["data"]["name"] == "relational" and config["surgery"]["padding"] == t["params"]["surgery.padding"]
        metrics = json.loads((run / "metrics.json").read_text())
        assert 0 <= metrics["val/attn/cka"] <= 1 and metrics["val/attn/ref/distance"] > 0
    layers = (tmp_path / "s" / "layers.csv").read_text().splitlines()
    assert len(layers) == 1 + 2 * 2 and "ref_distance" in layers[0]  # 2 trials x 2 layers
    md = (tmp_path / "s" / "summary.md").read_text()
    assert "attention distance per layer (last epoch):" in md and "| reference |" in md
    assert (tmp_path / "s" / "plots" / "layers_distance.png").is_file()
