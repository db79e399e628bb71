import time

import pytest
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from lightning_convshare.cli import main
from lightning_convshare.config import compose
from lightning_convshare.lit import ConvShareClassifier, create_module
from lightning_convshare.models import load_run_checkpoint
from lightning_convshare.resolve import resolve
from lightning_convshare.surgery.init import approximation_error
from tests.conftest import TINY, tiny_vit

NAME = "vit_tiny_patch16_224"
ARCH = ["model.img_size=16", "model.patch_size=4", "model.embed_dim=48", "model.depth=2", "model.num_heads=4"]


@pytest.fixture
def source(tmp_path):
    ref = tiny_vit()
    path = tmp_path / "tiny.safetensors"
    save_file(ref.state_dict(), str(path))
    return ref, path


def _convert(capsys, source, out, *extra, inputs="random"):
    code = main(["convert", "--model", NAME, "--checkpoint", str(source), "--inputs", inputs, "--out", str(out), *ARCH, *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return " ".join(captured.out.split())


def test_convert_whole_map_is_exact_and_the_checkpoint_loads_everywhere(capsys, tmp_path, source):
    ref, path = source
    out = _convert(capsys, path, tmp_path / "exact.ckpt")
    assert out.count("0 (exact)") == 8 and "exact (valid padding, whole-map kernels)" in out and "max |logit diff|" in out
    report = torch.load(tmp_path / "exact.ckpt", weights_only=False)["convshare"]["conversion"]
    assert report["exact"] and report["logits"]["max_abs_diff"] <= 1e-5 and report["logits"]["top1_agreement"] == 1.0
    x = torch.randn(4, 1, 16, 16)
    lit = ConvShareClassifier.load_from_checkpoint(tmp_path / "exact.ckpt", map_location="cpu").eval()
    torch.testing.assert_close(lit(x), ref(x), rtol=0, atol=1e-5)
    torch.testing.assert_close(load_run_checkpoint(tmp_path / "exact.ckpt").model.eval()(x), ref(x), rtol=0, atol=1e-5)


def test_convert_same_padding_reports_layer_errors_and_lstsq_beats_fresh_kernels(capsys, tmp_path, source):
    ref, path = source
    reports = {}
    for init in ("lstsq", "transfer"):
        out = _convert(capsys, path, tmp_path / f"{init}.ckpt", "surgery.padding=same", "surgery.kernel_size=3", f"surgery.init={init}")
        assert "approximate: mean layer rel. error" in out and "(exact)" not in out
        reports[init] = torch.load(tmp_path / f"{init}.ckpt", weights_only=False)["convshare"]["conversion"]
    layers = {r["name"]: r["rel_error"] for r in reports["lstsq"]["layers"]}
    assert len(layers) == 8
    model = load_run_checkpoint(tmp_path / "lstsq.ckpt").model
    for name, error in layers.items():  # the stored numbers are the layers' errors
        assert error == pytest.approx(approximation_error(model.get_submodule(name), ref.get_submodule(name)))
    assert all(r["rel_error"] < t["rel_error"] for r, t in zip(reports["lstsq"]["layers"], reports["transfer"]["layers"], strict=True))
    assert reports["lstsq"]["logits"]["rel_error"] < reports["transfer"]["logits"]["rel_error"]
    assert reports["lstsq"]["logits"]["samples"] == 64


def test_convert_eval_reports_accuracy_on_the_data(capsys, tmp_path):
    """--eval and data inputs need a model that fits the data (1 channel, 16 px, 10 classes here)."""
    ref = tiny_vit(num_classes=10)
    path = tmp_path / "digits.safetensors"
    save_file(ref.state_dict(), str(path))
    _convert(capsys, path, tmp_path / "e.ckpt", "--eval", "data=synthetic", "data.num_classes=10", "data.num_val=40", inputs="auto")
    report = torch.load(tmp_path / "e.ckpt", weights_only=False)["convshare"]["conversion"]
    assert report["inputs"] == "32 validation images of synthetic"  # one batch of data.batch_size
    assert report["accuracy"]["original"] == report["accuracy"]["converted"] and 0 <= report["accuracy"]["original"] <= 1


def test_train_init_from_a_converted_checkpoint_uses_its_network(capsys, tmp_path, source):
    ref, path = source
    _convert(capsys, path, tmp_path / "k3.ckpt", "surgery.padding=same", "surgery.kernel_size=3")
    assert torch.load(tmp_path / "k3.ckpt", weights_only=False)["hyper_parameters"]["surgery"]["init"] == "lstsq"  # convert's default
    converted = load_run_checkpoint(tmp_path / "k3.ckpt").model.eval()
    base = ["data=synthetic", "data.num_classes=5", "logger=csv", f"init_from={tmp_path / 'k3.ckpt'}"]
    cfg = resolve(compose(base))  # the config's model (vit_digits: dim 64, depth 4) and surgery become the checkpoint's
    module = create_module(cfg).eval()
    assert cfg.model.embed_dim == 48 and cfg.model.depth == 2 and cfg.surgery.padding == "same"
    x = torch.randn(3, 1, 16, 16)
    torch.testing.assert_close(module(x), converted(x))
    big = compose([*base, "data.img_size=32"])
    net = create_module(big).net
    expected = resample_abs_pos_embed(converted.pos_embed.detach(), new_size=(8, 8), num_prefix_tokens=1)
    torch.testing.assert_close(net.pos_embed, expected)
    torch.testing.assert_close(net.blocks[1].mlp.fc2.weight, converted.blocks[1].mlp.fc2.weight)


def test_convert_bad_input_is_one_clean_message(capsys, tmp_path, source):
    _, path = source
    assert main(["convert", "--checkpoint", str(path)]) == 2
    assert "convert needs --model NAME" in capsys.readouterr().err
    start = time.time()
    assert main(["convert", "--model", NAME, "--out", str(tmp_path / "hub.ckpt")]) == 2  # hub, HF_HUB_OFFLINE=1 in tests
    err = " ".join(capsys.readouterr().err.split())
    assert "cannot load the pretrained weights of vit_tiny_patch16_224" in err and "Traceback" not in err
    assert time.time() - start < 15
    assert main(["convert", "--model", NAME, "--checkpoint", str(path), *ARCH, "--eval"]) == 2
    assert "--eval: the model has 5 classes and data digits has 10" in " ".join(capsys.readouterr().err.split())
    assert TINY["num_classes"] == 5
