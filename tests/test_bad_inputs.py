"""The bad-input table: every input gets one clear line on stderr and exit status 2, before anything is written.

Each row runs through the CLI entry point in-process. ``{tmp}`` in an argument is the test's temporary
folder, where the ``inputs`` fixture writes the bad files; train rows also get ``run.root={tmp}/runs``,
and the test checks that no run directory appeared.
"""
from __future__ import annotations

import json
import os
import pickle

import pytest
import timm
import torch
from safetensors.torch import save_file

from lightning_convshare.cli import main
from lightning_convshare.models import save_run_checkpoint
from lightning_convshare.surgery import apply_surgery
from tests.conftest import TINY

NAME = "vit_tiny_patch16_224"
ARCH = ["model.img_size=16", "model.patch_size=4", "model.embed_dim=48", "model.depth=4", "model.num_heads=4"]

#: (id, argv, message fragment)
TABLE = [
    # ---- convshare train: types and ranges, checked before the run directory exists
    ("max_epochs-abc", ["train", "trainer.max_epochs=abc"], "trainer.max_epochs='abc' must be an integer >= 1"),
    ("max_epochs-0", ["train", "trainer.max_epochs=0"], "trainer.max_epochs=0 must be an integer >= 1"),
    ("seed-abc", ["train", "seed=abc"], "seed='abc' must be an integer"),
    ("batch-size-0", ["train", "data.batch_size=0"], "data.batch_size=0 must be an integer >= 1"),
    ("batch-size-negative", ["train", "data.batch_size=-4"], "data.batch_size=-4 must be an integer >= 1"),
    ("num-workers-negative", ["train", "data.num_workers=-1"], "data.num_workers=-1 must be an integer >= 0"),
    ("embed-dim-0", ["train", "model.embed_dim=0"], "embed_dim=0 must be a positive integer (model.embed_dim)"),
    ("heads-do-not-divide", ["train", "model.num_heads=5"], "embed_dim=64 is not divisible by num_heads=5"),
    ("img-size-15", ["train", "data.img_size=15"], "img_size=15 is not a multiple of patch_size=4"),
    ("label-smoothing-2", ["train", "loss.label_smoothing=2.0"], "loss.label_smoothing=2.0 must be a number in [0, 1)"),
    ("lr-negative", ["train", "optim.lr=-1"], "optim.lr=-1 must be a number > 0"),
    ("unknown-optimizer", ["train", "optim.name=adamx"], "cannot create optimizer 'adamx'"),
    ("unknown-trainer-arg", ["train", "+trainer.foo=1"], "trainer.foo is not an argument of lightning's Trainer"),
    ("gradient-clip", ["train", "+trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1 must be a number >= 0"),
    ("monitor-unknown", ["train", "checkpoint.monitor=val/nonexistent"],
     "checkpoint.monitor='val/nonexistent' is not a metric this run logs"),
    ("monitor-mode", ["train", "checkpoint.mode=maximum"], "checkpoint:"),
    ("unknown-key", ["train", "model.num_head=2"], "unknown config key 'model.num_head'"),
    ("unknown-group-file", ["train", "surgery=convshare_valid_k7"], "no file"),
    ("kernel-does-not-fit", ["train", "surgery.kernel_size=3"], "Kernel sizes that work here"),
    ("unknown-backend", ["train", "optics.name=laser"], "laser"),
    ("run-name-escapes", ["train", "run.name=../../escape"], "run.name='../../escape' must be a single folder name"),
    ("run-name-absolute", ["train", "run.name=/tmp/x"], "must be a single folder name"),
    ("env-resolver", ["train", "run.name=${oc.env:HOME}"], "calls a resolver"),
    ("decode-resolver", ["train", "optim.lr=${oc.decode:'1e-3'}"], "calls a resolver"),
    ("init-from-missing", ["train", "init_from={tmp}/missing.ckpt"], "run checkpoint {tmp}/missing.ckpt does not exist"),
    ("init-from-not-ours", ["train", "init_from={tmp}/foreign.ckpt"], "is not a checkpoint written by `convshare train`"),
    ("resume-nothing", ["train", "--resume", "{tmp}/nowhere"], "--resume {tmp}/nowhere: no run there"),
    ("ckpt-path-missing", ["train", "trainer.ckpt_path={tmp}/none.ckpt"], "trainer.ckpt_path={tmp}/none.ckpt"),
    ("imagefolder-missing", ["train", "data=imagefolder", "data.root={tmp}/no-images", "data.num_classes=2"], "no-images"),
    ("reference-missing", ["train", "reference.source={tmp}/ref.ckpt"], "does not exist"),
    ("reference-cache-negative", ["train", "attention.enabled=true", "reference.cache_mb=-1"],
     "reference.cache_mb must be a number of MiB >= 0"),
    ("reference-cache-text", ["train", "attention.enabled=true", "reference.cache_mb=lots"],
     "reference.cache_mb must be a number of MiB >= 0"),
    ("distill-both", ["train", "distill=kd", "distill.source={tmp}/depth1.safetensors", "init_from={tmp}/depth1.safetensors"],
     "set one of distill.source"),
    # ---- files that are not what they claim to be
    ("convert-random-pth", ["convert", "--model", NAME, "--checkpoint", "{tmp}/random.pth", *ARCH],
     "cannot read weights file {tmp}/random.pth"),
    ("convert-random-safetensors", ["convert", "--model", NAME, "--checkpoint", "{tmp}/random.safetensors", *ARCH],
     "cannot read weights file {tmp}/random.safetensors"),
    ("convert-castling-ckpt", ["convert", "--checkpoint", "{tmp}/castling.ckpt", "--inputs", "random"],
     "network (castling) has layers a timm ViT does not have"),
    ("convert-depth1-into-depth4", ["convert", "--model", NAME, "--checkpoint", "{tmp}/depth1.safetensors", *ARCH,
                                    "model.in_chans=1", "model.num_classes=5", "--inputs", "random"],
     "missing 36 of the model's parameters"),
    ("convert-batch-size-0", ["convert", "--model", NAME, "--checkpoint", "{tmp}/depth1.safetensors", "--batch-size", "0"],
     "--batch-size must be >= 1, got 0"),
    ("convert-unknown-suffix", ["convert", "--model", NAME, "--checkpoint", "{tmp}/weights.npz"], "expected a run checkpoint"),
    ("finetune-resnet-source", ["finetune", "--source", "{tmp}/resnet.pth", "data=synthetic", "data.num_classes=5",
                                "model.embed_dim=48", "model.depth=2"], "unexpected ones, e.g. ['bn1.bias'"),
    # ---- robustness, attention, sweeps
    ("robustness-bad-yaml", ["robustness", "{tmp}/run/checkpoints/last.ckpt", "--noise", "shot", "--levels", "1e3",
                             "--backend", "{name: ["], "--backend '{name: [' is not valid YAML"),
    ("robustness-repeats-0", ["robustness", "{tmp}/run/checkpoints/last.ckpt", "--noise", "shot", "--levels", "1e3",
                              "--repeats", "0"], "--repeats must be >= 1, got 0"),
    ("robustness-levels", ["robustness", "{tmp}/run/checkpoints/last.ckpt", "--noise", "shot", "--levels", "a,b"],
     "must be comma-separated numbers"),
    ("attention-images", ["attention", "{tmp}/run/checkpoints/last.ckpt", "--images", "-1"], "--images must be >= 0"),
    ("speed-batch-size-0", ["speed", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    ("speed-rounds-0", ["speed", "--rounds", "0"], "--rounds must be >= 1, got 0"),
    ("speed-slm-hz-negative", ["speed", "--slm-hz", "-5"], "slm.hz=-5.0 must be positive"),
    ("speed-unknown-device", ["speed", "--device", "nope"], "unknown 4f device 'nope'. Available:"),
    ("speed-unknown-encoding", ["speed", "--encoding", "nope"], "unknown signed-value encoding 'nope'. Available:"),
    ("optics-device-bits", ["train", "optics=optical", "optics.device.camera.bits=0"], "bits"),
    ("sweep-state-structure", ["sweep", "--resume", "{tmp}/bad-sweep"], "is not a sweep state"),
    ("sweep-name-escapes", ["sweep", "{tmp}/escape.yaml"], "name '../../victim' must be one folder name"),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The bad files of the table, written once."""
    tmp = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    depth1 = timm.create_model(NAME, **{**TINY, "depth": 1})
    save_file(depth1.state_dict(), str(tmp / "depth1.safetensors"))
    torch.save(timm.create_model("resnet18", num_classes=5).state_dict(), tmp / "resnet.pth")
    (tmp / "random.pth").write_bytes(os.urandom(4096))
    (tmp / "random.safetensors").write_bytes(os.urandom(4096))
    (tmp / "weights.npz").write_bytes(os.urandom(64))
    torch.save({"epoch": 0, "state_dict": {}}, tmp / "foreign.ckpt")
    castling = timm.create_model(NAME, **TINY)
    apply_surgery(castling, {"name": "castling"})
    save_run_checkpoint(tmp / "castling.ckpt", castling, {"model": {"name": NAME, **TINY}, "surgery": {"name": "castling"}})
    sweep = tmp / "bad-sweep"
    sweep.mkdir()
    (sweep / "state.json").write_text(json.dumps({"trials": {"t000": "finished"}}))
    (tmp / "escape.yaml").write_text("name: ../../victim\nmethod: grid\nparameters:\n  seed:\n    values: [0]\n")
    run = tmp / "run"
    assert main(["train", "data=synthetic", "logger=none", "model.embed_dim=32", "model.depth=1", "model.num_heads=2",
                 "trainer.max_epochs=1", f"run.dir={run}"]) == 0
    return tmp


@pytest.mark.parametrize("argv,fragment", [pytest.param(a, f, id=i) for i, a, f in TABLE])
def test_bad_input_is_one_line_and_exit_status_2(argv, fragment, inputs, capsys, request):
    tmp = str(inputs)
    argv = [a.replace("{tmp}", tmp) for a in argv]
    runs = inputs / "runs" / request.node.callspec.id
    if argv[0] in ("train", "finetune"):
        argv.append(f"run.root={runs}")
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), err
    assert sum(line.startswith("error: ") for line in lines) == 1 and "Traceback" not in err
    assert fragment.replace("{tmp}", tmp) in lines[-1], lines[-1]
    assert not runs.exists() or not any(runs.iterdir()), f"{argv[0]} wrote {list(runs.iterdir())} for a bad input"


def test_gpu_on_a_machine_without_one(inputs, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["train", "trainer.accelerator=gpu", f"run.root={inputs / 'runs-gpu'}"]) == 2
    assert "this machine has no CUDA GPU; use trainer=cpu" in capsys.readouterr().err
    assert not (inputs / "runs-gpu").exists()


def test_a_credential_from_the_environment_never_reaches_a_config(inputs, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef")
    assert main(["train", "run.name=x0123456789abcdef", f"run.root={inputs / 'runs-secret'}"]) == 2
    err = capsys.readouterr().err
    assert "run.name holds the value of $WANDB_API_KEY" in err and "0123456789abcdef" not in err
    monkeypatch.setenv("CONVSHARE_ALLOW_RESOLVERS", "1")  # resolvers allowed: the secret check still holds
    assert main(["train", "run.name=${oc.env:WANDB_API_KEY}", f"run.root={inputs / 'runs-secret'}"]) == 2
    assert "holds the value of $WANDB_API_KEY" in capsys.readouterr().err
    assert not (inputs / "runs-secret").exists()


def test_the_cifar_archive_is_read_without_running_code(tmp_path):
    from lightning_convshare.errors import DataError
    from lightning_convshare.lit.datasets import read_cifar100
    from tests.finetune.test_datasets import write_fake_cifar100

    write_fake_cifar100(tmp_path)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(tmp_path / "cifar-100-python" / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [Payload()]}, f)
    with pytest.raises(DataError, match=r"refusing to load (builtins|io)\.open"):
        read_cifar100(tmp_path)
    assert not marker.exists()
