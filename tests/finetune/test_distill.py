import json
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from safetensors.torch import save_file

from lightning_convshare.cli import main
from lightning_convshare.conversion import (
    BlockRecorder,
    BlockSchedule,
    ProgressiveLayer,
    attention_kd_loss,
    hidden_kd_loss,
    kd_logit_loss,
    progressive_layers,
)
from lightning_convshare.errors import ConfigError
from lightning_convshare.layers import ConvShareLinear
from lightning_convshare.lit import DistillClassifier, create_module, run_training
from lightning_convshare.models import load_run_checkpoint
from lightning_convshare.surgery.init import approximation_error
from tests.conftest import TINY, tiny_vit

NAME = "vit_tiny_patch16_224"
SAME3 = dict(name="convshare", padding="same", kernel_size=3, init="lstsq")


@pytest.fixture
def source(tmp_path):
    """A tiny ViT with confident logits and peaked attention (untrained ones are near uniform), as a weights file."""
    ref = tiny_vit()
    with torch.no_grad():
        ref.head.weight.mul_(5)
        for block in ref.blocks:
            block.attn.qkv.weight.mul_(6)
    path = tmp_path / "teacher.safetensors"
    save_file(ref.state_dict(), str(path))
    return ref, path


def _student(path, surgery=SAME3, model=None, **distill):
    """The fine-tuning module a run with ``distill.source=path`` builds (through resolve and create_module)."""
    return create_module(OmegaConf.create({
        "model": {"name": NAME, "pretrained": False, **TINY, **(model or {})}, "surgery": surgery, "init_from": None,
        "optim": {"name": "adamw", "lr": 1e-3}, "loss": {"label_smoothing": 0.0}, "distill": {"source": str(path), **distill},
    }))


def test_kd_logit_loss_is_hintons():
    s, t = torch.randn(6, 10), torch.randn(6, 10)
    T = 3.0
    p = F.softmax(t / T, -1)
    expected = (p * (p.log() - F.log_softmax(s / T, -1))).sum(-1).mean() * T * T
    torch.testing.assert_close(kd_logit_loss(s, t, T), expected)
    assert kd_logit_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-6)


def test_attention_kd_loss_kl_and_mse():
    t = {"blocks.0.attn": torch.randn(2, 3, 5, 5).softmax(-1)}
    s = {"blocks.0.attn": torch.randn(2, 3, 5, 5).softmax(-1)}
    kl = (t["blocks.0.attn"] * (t["blocks.0.attn"].log() - s["blocks.0.attn"].log())).sum(-1).mean()
    torch.testing.assert_close(attention_kd_loss(s, t, "kl"), kl)
    torch.testing.assert_close(attention_kd_loss(s, t, "mse"), (s["blocks.0.attn"] - t["blocks.0.attn"]).square().sum(-1).mean())
    assert attention_kd_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ConfigError, match="same heads and tokens in blocks.0.attn"):
        attention_kd_loss({"blocks.0.attn": torch.rand(2, 2, 5, 5)}, t)


def test_hidden_kd_loss_is_relative_and_zero_for_the_teacher():
    t = {"blocks.0": torch.randn(2, 5, 8), "blocks.1": 10 * torch.randn(2, 5, 8)}
    assert hidden_kd_loss(t, t).item() == 0.0
    zero = {k: torch.zeros_like(v) for k, v in t.items()}
    assert hidden_kd_loss(zero, t).item() == pytest.approx(1.0)  # all-zero student: 1 in every block, whatever the scale
    s = {k: v + 0.1 * torch.randn_like(v) for k, v in t.items()}
    expected = sum((s[k] - t[k]).square().sum() / t[k].square().sum() for k in t) / 2
    torch.testing.assert_close(hidden_kd_loss(s, t), expected)
    with pytest.raises(ConfigError, match="same tokens and width in blocks.0"):
        hidden_kd_loss({"blocks.0": torch.randn(2, 4, 8)}, {"blocks.0": t["blocks.0"]})


def test_block_recorder_records_block_outputs_and_removes_its_hooks():
    model = tiny_vit().eval()
    x = torch.randn(2, 1, 16, 16)
    with BlockRecorder(model, blocks=[-1]) as rec:
        logits = model(x)
    feats = rec.features
    assert list(feats) == [f"blocks.{len(model.blocks) - 1}"]
    torch.testing.assert_close(model.head(model.fc_norm(model.norm(feats[list(feats)[0]])[:, 0])), logits)
    assert not any(b._forward_hooks for b in model.blocks)


def _distil(module, steps=10, lr=1e-3, key="loss"):
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 16, 16), torch.randint(0, 5, (16,))
    opt = torch.optim.Adam(module.net.parameters(), lr=lr)
    first = {k: v.item() for k, v in module.distill_losses(x, y).items() if k != "logits"}
    for _ in range(steps):
        loss = module.distill_losses(x, y)[key]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return first, {k: v.item() for k, v in module.distill_losses(x, y).items() if k != "logits"}


def test_a_few_distillation_steps_reduce_the_kd_loss(source):
    ref, path = source
    module = _student(path, logit_weight=1.0, temperature=2.0).train()
    assert not module.teacher.training and not any(p.requires_grad for p in module.teacher.parameters())
    x = torch.randn(4, 1, 16, 16)
    torch.testing.assert_close(module.teacher(x), ref(x))  # the teacher is the unconverted source
    first, last = _distil(module)
    assert first["kd"] > 0.1 and last["kd"] < 0.7 * first["kd"], (first, last)
    assert "attn" not in last  # off: nothing recorded
    assert all(torch.equal(a, b) for a, b in zip(module.teacher.state_dict().values(), ref.state_dict().values(), strict=True))


def test_attention_distillation_moves_the_student_attention_towards_the_teacher(source):
    _, path = source
    module = _student(path, logit_weight=0.0, attn_weight=1.0, attn_blocks=[-1]).train()
    assert module.distill_losses(torch.randn(2, 1, 16, 16), torch.zeros(2, dtype=torch.long))["attn"].requires_grad
    first, last = _distil(module, steps=8, lr=1e-2, key="attn")  # the attention term alone
    assert last["attn"] < 0.95 * first["attn"], (first, last)


def test_hidden_state_distillation_is_zero_for_the_teacher_and_reduced_by_a_few_steps(source):
    ref, path = source
    x, y = torch.randn(4, 1, 16, 16), torch.zeros(4, dtype=torch.long)
    same = _student(path, surgery={"name": "vit"}, logit_weight=0.0, feat_weight=1.0).train()
    assert same.distill_losses(x, y)["feat"].item() == pytest.approx(0.0, abs=1e-10)  # the student is the teacher
    module = _student(path, logit_weight=0.0, feat_weight=1.0).train()
    first, last = _distil(module, steps=10, lr=1e-2, key="feat")
    assert first["feat"] > 1e-3 and last["feat"] < 0.7 * first["feat"], (first, last)
    assert "attn" not in last and "train/feat" in module.monitor_keys()
    with pytest.raises(ConfigError, match="feat_weight >= 0"):
        _student(path, feat_weight=-1.0)


def test_teacher_head_for_other_classes_is_refused_for_logit_kd(source):
    _, path = source
    with pytest.raises(ConfigError, match="predicts 5 classes and the data has 7"):
        _student(path, model={"num_classes": 7}, logit_weight=0.5)
    module = _student(path, model={"num_classes": 7}, logit_weight=0.0, attn_weight=1.0)  # attention only is fine
    assert isinstance(module, DistillClassifier) and module.net.head.out_features == 7
    with pytest.raises(ConfigError, match="unknown distill options"):
        _student(path, temprature=2)


def test_block_schedule():
    s = BlockSchedule.create([0, 1, 2, 3, 4], every_n_epochs=2, blocks_per_step=2, order="last_first")
    assert s.groups == ((4, 3), (2, 1), (0,)) and s.full_epoch == 4
    assert [s.converted_at(e) for e in (0, 1, 2, 4, 9)] == [[3, 4], [3, 4], [1, 2, 3, 4], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]
    with pytest.raises(ConfigError, match="order 'middle'"):
        BlockSchedule.create([0], order="middle")


def test_progressive_replacement_converts_on_schedule_and_saves_rebuildable_checkpoints(source, tmp_path):
    ref, path = source
    module = _student(path, progressive={"every_n_epochs": 1, "blocks_per_step": 1, "order": "last_first"})
    waiting = progressive_layers(module.net)
    assert sorted(waiting) == ["blocks.0.attn.proj", "blocks.0.attn.qkv", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2"]
    assert isinstance(module.net.blocks[1].attn.qkv, ConvShareLinear) and module.converted_blocks() == [1]
    x = torch.randn(3, 1, 16, 16)

    def saved(name):
        ckpt = {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}
        module.on_save_checkpoint(ckpt)
        torch.save(ckpt, tmp_path / name)
        return ckpt, load_run_checkpoint(tmp_path / name).model.eval()

    ckpt, rebuilt = saved("epoch0.ckpt")
    assert ckpt["hyper_parameters"]["surgery"]["blocks"] == [1] and "distill" not in ckpt["hyper_parameters"]
    assert "checkpoint" not in ckpt["hyper_parameters"]["model"] and not any(k.startswith("teacher.") for k in ckpt["state_dict"])
    torch.testing.assert_close(rebuilt(x), module.eval()(x))
    with torch.no_grad():  # fine-tuning moves the waiting linear layer; conversion starts from where it is then
        waiting["blocks.0.mlp.fc1"].linear.weight.mul_(1.5)
    assert module.apply_schedule(0) == [] and sorted(module.apply_schedule(1)) == sorted(waiting)
    assert module.fully_converted and module.converted_blocks() == [0, 1]
    layer = waiting["blocks.0.mlp.fc1"]
    assert approximation_error(layer.conv, layer.linear) < approximation_error(layer.conv, ref.blocks[0].mlp.fc1) + 1.0
    torch.testing.assert_close(layer.conv.bias, layer.linear.bias)
    ckpt, rebuilt = saved("epoch1.ckpt")
    assert ckpt["hyper_parameters"]["surgery"].get("blocks") is None
    torch.testing.assert_close(rebuilt(x), module.eval()(x))
    assert all(isinstance(m, ProgressiveLayer) for m in waiting.values())


@pytest.mark.slow
def test_finetune_command_distils_a_trained_vit_into_convshare(tiny_cfg, tmp_path, capsys):
    base = ["model.embed_dim=32", "model.depth=1", "model.num_heads=2"]
    vit = run_training(tiny_cfg("surgery=vit", "trainer.max_epochs=3", "run.name=vit"))
    args = ["finetune", "--source", str(vit.run_dir / "checkpoints" / "last.ckpt"), "data=synthetic", "logger=csv", *base,
            "surgery.padding=same", "surgery.kernel_size=3", "distill.attn_weight=0.5", "trainer.max_epochs=4",
            "optim.lr=0.01", "optim.warmup_epochs=0",
            f"run.dir={tmp_path / 'ft'}"]
    assert main(args) == 0, capsys.readouterr().err
    assert "convshare finetune: summary" in capsys.readouterr().out
    m = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert m["teacher/val_acc"] >= 0.9  # synthetic data: the 3-epoch ViT has learned it
    assert m["val/acc_start"] < 0.5 and m["val/acc"] >= 0.5, m  # 3x3 same-padding kernels on 4x8 maps: learned in 4 epochs
    assert m["train/kd"] >= 0 and m["train/attn"] >= 0 and math.isfinite(m["train/loss"])
    assert 0 <= m["train/feat"] < 1  # experiment=finetune distils the hidden states
    model = load_run_checkpoint(m["best_checkpoint"]).model
    assert model.blocks[0].attn.qkv.geometry.padding == "same" and m["params"] < 3000
