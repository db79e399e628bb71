"""Attention metrics in training runs: off costs nothing, a reference is logged, pictured and changes nothing."""
import csv
import json

import pytest
import torch

from lightning_convshare.config import compose
from lightning_convshare.errors import ConfigError, GeometryError
from lightning_convshare.layers import AttentionRecorder
from lightning_convshare.lit import run_training
from lightning_convshare.lit.attention_callback import AttentionMetricsCallback, create_attention_callback
from lightning_convshare.lit.callbacks import create_callbacks
from lightning_convshare.metrics import AttentionSimilarity, load_reference, record_attention

TINY = ["data=synthetic", "logger=csv", "trainer=cpu", "model.embed_dim=32", "model.depth=1", "model.num_heads=2"]


@pytest.fixture(scope="module")
def reference_ckpt(tmp_path_factory):
    """A tiny `vit` baseline run (2 epochs): the reference of the tests below."""
    root = tmp_path_factory.mktemp("reference")
    result = run_training(compose([*TINY, "surgery=vit", "trainer.max_epochs=2", f"run.dir={root / 'vit'}"]))
    return result.run_dir / "checkpoints" / "last.ckpt"


def _csv_rows(run_dir):
    with open(run_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_metrics_off_means_no_callback_and_no_recording(tiny_cfg, monkeypatch, tmp_path):
    cfg = tiny_cfg("trainer.max_epochs=1", "data.num_train=64", f"run.dir={tmp_path / 'run'}")
    assert create_attention_callback(cfg) is None
    assert not any(isinstance(c, AttentionMetricsCallback) for c in create_callbacks(cfg, cfg.run.root))

    def refuse(self):
        raise AssertionError("attention was recorded although the metrics are off")

    monkeypatch.setattr(AttentionRecorder, "__enter__", refuse)
    metrics = json.loads((run_training(cfg).run_dir / "metrics.json").read_text())
    assert "val/acc" in metrics and not any(k.startswith("val/attn") for k in metrics)


def test_similarity_is_per_layer_unless_per_head_is_asked_for(tiny_cfg, reference_ckpt):
    """Per layer by default (the cheap setting, bench/attention.py); per head costs about H+1 times as much."""
    assert create_attention_callback(tiny_cfg(f"reference.source={reference_ckpt}")).per_head is False
    assert create_attention_callback(tiny_cfg(f"reference.source={reference_ckpt}", "attention.per_head=true")).per_head


@pytest.mark.slow
def test_reference_metrics_are_logged_on_schedule_with_tables_and_pictures(tiny_cfg, reference_ckpt, tmp_path):
    cfg = tiny_cfg(f"run.dir={tmp_path / 'run'}", "logger=default", "surgery.padding=same", "surgery.kernel_size=3", "trainer.max_epochs=3",
                   "data.num_train=64",
                   f"reference.source={reference_ckpt}", "reference.every_n_epochs=2",
                   "attention.images.every_n_epochs=2", "attention.images.num=3", "attention.per_head=true")
    run_dir = run_training(cfg).run_dir
    rows = [r for r in _csv_rows(run_dir) if r["val/acc"]]  # one validation row per epoch (overall values)
    similarity = {int(r["epoch"]) for r in rows if r["val/attn/cosine"]}
    intrinsic = {int(r["epoch"]) for r in rows if r["val/attn/distance"]}
    assert similarity == {1, 2} and intrinsic == {0, 1, 2}  # every 2nd epoch + the last; own metrics every epoch
    # the reference's constant statistics: through Lightning once (kept in metrics.json below), to the loggers
    # on every similarity epoch
    assert {int(r["epoch"]) for r in _csv_rows(run_dir) if r.get("val/attn/ref/distance")} == {1, 2}
    last = [r for r in _csv_rows(run_dir) if r.get("val/attn/layer0/head1/js")][-1]  # per-layer/head values: CSV row
    assert int(last["epoch"]) == 2 and float(last["val/attn/layer0/head1/js"]) >= 0
    assert last["val/attn/ref/layer0/entropy"] and not any("ref/layer0/head" in k for k in last)  # ref: per layer only
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("val/attn/cosine", "val/attn/js", "val/attn/cka", "val/attn/cls_spearman",
                "val/attn/distance", "val/attn/to_cls", "val/attn/ref/distance"):
        assert key in metrics, key
    assert not any("/layer" in k for k in metrics)  # metrics.json keeps the overall values
    assert 0 < metrics["val/attn/cosine"] <= 1 and 0 <= metrics["val/attn/js"] <= 1
    assert sorted(p.name for p in (run_dir / "attention").glob("*.png")) == ["maps-epoch001.png", "maps-epoch002.png"]
    with open(run_dir / "attention" / "layers.csv") as f:
        layer_rows = list(csv.DictReader(f))
    assert [r["layer"] for r in layer_rows] == ["0"] and float(layer_rows[0]["cosine"]) == pytest.approx(
        float(last["val/attn/layer0/cosine"]), rel=1e-6)
    media = next((run_dir / "wandb").glob("offline-run-*")) / "files" / "media"
    assert list((media / "table" / "val" / "attn").glob("layers_*.table.json")), "no W&B table"
    assert len(list((media / "images" / "val" / "attn").glob("maps_*.png"))) == 2, "no W&B images"


@pytest.mark.slow
def test_the_reference_does_not_change_the_trained_model(tiny_cfg, reference_ckpt, tmp_path):
    runs = {}
    for name, extra in {"plain": [], "with_ref": [f"reference.source={reference_ckpt}", "attention.images.every_n_epochs=1"]}.items():
        runs[name] = run_training(tiny_cfg("surgery.padding=same", "surgery.kernel_size=3", "trainer.max_epochs=2", "data.num_train=96",
                                           f"run.dir={tmp_path / name}", *extra))
    a, b = (json.loads((r.run_dir / "metrics.json").read_text()) for r in runs.values())
    assert a["train/loss"] == b["train/loss"]  # training is bit-identical
    assert a["val/acc"] == b["val/acc"] and a["val/loss"] == pytest.approx(b["val/loss"], rel=1e-6)
    assert runs["plain"].run_dir != runs["with_ref"].run_dir
    assert not (runs["plain"].run_dir / "attention").exists() and (runs["with_ref"].run_dir / "attention").is_dir()
    sd = [torch.load(r.run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
          for r in runs.values()]
    assert sd[0].keys() == sd[1].keys()  # the reference is not part of the checkpoint
    for key in sd[0]:
        assert torch.equal(sd[0][key], sd[1][key]), key


def test_reference_from_a_weights_file_is_frozen_and_left_out_of_the_random_stream(tmp_path):
    from safetensors.torch import save_file

    from tests.conftest import TINY as TINY_KW
    from tests.conftest import tiny_vit

    path = tmp_path / "ref.safetensors"
    save_file(tiny_vit().state_dict(), str(path))
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    ref = load_reference(path, "vit_tiny_patch16_224", **TINY_KW)
    assert torch.equal(torch.rand(3), expected)  # loading drew no random numbers from the caller's stream
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    x = torch.randn(2, 1, 16, 16)
    _, maps = record_attention(ref, x)
    sim = AttentionSimilarity.from_models(ref, ref)
    sim.update(maps, maps)
    assert sim.compute()["cosine"].item() == pytest.approx(1.0, abs=1e-6)


def test_a_bad_reference_fails_before_a_run_directory_is_written(tiny_cfg, tmp_path):
    cfg = tiny_cfg(f"reference.source={tmp_path / 'missing.ckpt'}", f"run.dir={tmp_path / 'run'}")
    with pytest.raises(ConfigError, match="missing.ckpt does not exist"):
        run_training(cfg)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="reference.every_n_epochs must be a positive"):
        AttentionMetricsCallback(reference_every_n_epochs=0)


def test_a_reference_with_another_patch_grid_is_refused_with_the_fix(tiny_cfg, reference_ckpt, tmp_path):
    cfg = tiny_cfg(f"reference.source={reference_ckpt}", "data.img_size=32", "trainer.max_epochs=1", f"run.dir={tmp_path / 'run'}")
    with pytest.raises(GeometryError, match="different patch grids; give the reference the model's img_size"):
        run_training(cfg)


def test_report_command_writes_tables_heatmaps_and_pictures(reference_ckpt, tmp_path, capsys):
    from lightning_convshare.cli import main

    out = tmp_path / "report"
    code = main(["attention", str(reference_ckpt), str(reference_ckpt), "--reference", str(reference_ckpt),
                 "--out", str(out), "--images", "2", "--max-batches", "1"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "attention per layer" in printed and "side by side" in printed
    run = reference_ckpt.parent.parent.name
    for name in ("layers.csv", "layers.md", "heads.csv", "heatmap.png", "maps.png"):
        assert (out / run / name).is_file() and (out / f"{run}-2" / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    model = summary["models"][run]
    assert summary["images"] == 32  # one batch of the synthetic validation split
    # the reference against itself: identical attention
    assert model["cosine"] == pytest.approx(1.0, abs=1e-5) and model["cka"] == pytest.approx(1.0, abs=1e-5)
    assert model["js"] == pytest.approx(0.0, abs=1e-5) and model["distance"] == pytest.approx(model["ref_distance"])
    with open(out / "summary.csv") as f:
        rows = {r["metric"]: r for r in csv.DictReader(f)}
    assert set(rows["CKA (1 = same)"]) == {"metric", run, f"{run}-2", "reference"}
    assert "| metric |" in (out / "summary.md").read_text()


def test_report_command_errors_are_one_clean_line(reference_ckpt, tmp_path, capsys):
    from lightning_convshare.cli import main

    assert main(["attention", str(tmp_path / "nope.ckpt")]) == 2
    assert "nope.ckpt does not exist" in " ".join(capsys.readouterr().err.split())
    assert main(["attention", str(reference_ckpt), "--data", "synthetic", "data.img_size=32", "--out", str(tmp_path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "takes 16x16 images but the data are 32x32" in err and "Traceback" not in err


def _validate_twice(cfg, reference, loaders, tmp_path, **kwargs):
    """``trainer.validate`` once per loader with one callback; its logged values per round and its forwards."""
    import pytorch_lightning as pl

    from lightning_convshare.lit.factory import create_module

    torch.manual_seed(0)
    module = create_module(cfg).eval()
    callback = AttentionMetricsCallback(tmp_path, reference, num_images=0, **kwargs)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, default_root_dir=tmp_path, callbacks=[callback])
    values = []
    for loader in loaders:
        trainer.validate(module, dataloaders=loader, verbose=False)
        values.append({k: float(v) for k, v in trainer.callback_metrics.items()  # the reference's own statistics
                       if k.startswith("val/attn") and not k.startswith("val/attn/ref/")})  # are computed once
    return values, callback


def _loader(seed: int, n: int = 24, batch: int = 8):
    g = torch.Generator().manual_seed(seed)
    data = torch.utils.data.TensorDataset(torch.randn(n, 1, 16, 16, generator=g), torch.randint(0, 2, (n,), generator=g))
    return torch.utils.data.DataLoader(data, batch_size=batch)


def test_the_reference_cache_skips_its_forward_and_changes_no_value(tiny_cfg, reference_ckpt, tmp_path):
    cfg = tiny_cfg("surgery.padding=same", "surgery.kernel_size=3")
    reference = load_reference(str(reference_ckpt))
    same = _loader(0)
    cached, cb = _validate_twice(cfg, reference, [same, same, same], tmp_path / "a")
    plain, cb0 = _validate_twice(cfg, reference, [same, same, same], tmp_path / "b", reference_cache_mb=0)
    assert cb.reference_forwards == 3 and cb0.reference_forwards == 9  # 3 batches: once, or every epoch
    assert cached == plain and "val/attn/cosine" in cached[0]
    # other images under the same batch indices are recognised and recomputed, then cached in their place
    other = _loader(1)
    values, cb = _validate_twice(cfg, reference, [same, other, other], tmp_path / "c")
    expect, _ = _validate_twice(cfg, reference, [other], tmp_path / "d", reference_cache_mb=0)
    assert cb.reference_forwards == 6 and values[1] == values[2] == expect[0] != values[0]


def test_the_reference_cache_follows_the_reference_weights_and_its_budget(tiny_cfg, reference_ckpt, tmp_path):
    cfg = tiny_cfg()
    reference = load_reference(str(reference_ckpt))
    same = _loader(0)
    _, cb = _validate_twice(cfg, reference, [same, same], tmp_path / "a")
    assert cb.reference_forwards == 3
    with torch.no_grad():
        next(reference.parameters()).mul_(1.5)  # other weights loaded into the reference
    import pytorch_lightning as pl
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, default_root_dir=tmp_path, callbacks=[cb])
    from lightning_convshare.lit.factory import create_module
    trainer.validate(create_module(cfg).eval(), dataloaders=same, verbose=False)
    assert cb.reference_forwards == 6  # recomputed for the new weights
    # a budget below one batch's maps caches nothing; a negative one is refused with the fix
    _, small = _validate_twice(cfg, load_reference(str(reference_ckpt)), [same, same], tmp_path / "b", reference_cache_mb=1e-4)
    assert small.reference_forwards == 6 and not small._ref_cache
    with pytest.raises(ConfigError, match="reference.cache_mb must be a number of MiB >= 0"):
        create_attention_callback(tiny_cfg(f"reference.source={reference_ckpt}", "reference.cache_mb=-1"))
