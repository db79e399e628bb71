"""models/: one resolver decides weight sources, ModelSpec constructors, create_network, resolve()."""
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from lightning_convshare.config import compose
from lightning_convshare.errors import ConfigError
from lightning_convshare.lit import ConvShareClassifier, create_module
from lightning_convshare.models import ModelSpec, create_network, resolve_source, save_run_checkpoint
from lightning_convshare.resolve import resolve
from tests.conftest import TINY, tiny_vit

NAME = "vit_tiny_patch16_224"


@pytest.fixture
def files(tmp_path):
    net = tiny_vit()
    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    hp = {"model": {"name": NAME, "pretrained": False, **TINY}, "surgery": {"name": "vit"}}
    save_run_checkpoint(tmp_path / "run.ckpt", net, hp)
    tmp_path.joinpath("saved").mkdir()
    torch.save(net.state_dict(), tmp_path / "saved" / "state.pt")
    return tmp_path


def test_resolve_source_is_the_one_place_that_tells_sources_apart(files):
    assert resolve_source(files / "run.ckpt").kind == "run"
    assert resolve_source(files / "w.safetensors").kind == "file"
    assert resolve_source("vit_tiny_patch16_224.augreg_in21k").kind == "hub"
    assert resolve_source("hf-hub:timm/vit_tiny_patch16_224.augreg_in21k").kind == "hub"
    with pytest.raises(ConfigError, match="run checkpoint .*missing.ckpt does not exist"):
        resolve_source(files / "missing.ckpt")
    with pytest.raises(ConfigError, match="weights file .*missing.pth does not exist"):
        resolve_source(files / "missing.pth")
    (files / "weights.npz").write_bytes(b"x")
    with pytest.raises(ConfigError, match="expected a run checkpoint"):
        resolve_source(files / "weights.npz")
    assert resolve_source(files / "run.ckpt").num_classes() == 5
    assert resolve_source(files / "w.safetensors").num_classes() == 5


def test_model_spec_constructors(files):
    cfg = OmegaConf.create({"model": {"name": NAME, "pretrained": False, **TINY, "checkpoint": str(files / "w.safetensors")},
                            "surgery": {"name": "vit"}, "init_from": None})
    spec = ModelSpec.from_config(cfg)
    assert spec.pretrained == str(files / "w.safetensors") and spec.state is None and spec.kwargs == TINY
    assert ModelSpec.from_hparams(cfg.model, "vit").pretrained is None  # a checkpoint never points at another file
    assert spec.model_hparams() == {"name": NAME, "pretrained": False, **TINY}
    exact = ModelSpec.from_source(str(files / "run.ckpt"), exact=True, data={"num_classes": 7, "depth": 9})
    assert exact.state == str(files / "run.ckpt") and exact.kwargs["num_classes"] == 7 and exact.kwargs["depth"] == 2
    hub = ModelSpec.from_source("vit_tiny_patch16_224.augreg_in21k", kwargs={"num_classes": 3})
    assert hub.name == hub.pretrained == "vit_tiny_patch16_224.augreg_in21k"
    with pytest.raises(ConfigError, match="needs the timm architecture name"):
        ModelSpec.from_source(str(files / "w.safetensors"))
    with pytest.raises(ConfigError, match="not timm.create_model kwargs"):
        ModelSpec(NAME, {"checkpoint": "x"})


def test_create_network_runs_on_the_meta_device_and_loads_a_run_state(files):
    with torch.device("meta"):
        meta = create_network(ModelSpec(NAME, TINY, {"name": "convshare", "padding": "same", "kernel_size": 3})).model
    assert meta.blocks[0].attn.qkv.weight.is_meta
    rebuilt = create_network(ModelSpec.from_source(str(files / "run.ckpt"), exact=True)).model
    saved = torch.load(files / "saved" / "state.pt", weights_only=True)
    assert rebuilt.state_dict().keys() == saved.keys()
    assert all(torch.equal(rebuilt.state_dict()[k], v) for k, v in saved.items())


def test_resolve_returns_a_read_only_config_and_leaves_the_composed_one_alone(files):
    composed = compose(["data=synthetic", "data.num_classes=5", f"init_from={files / 'run.ckpt'}"])
    cfg = resolve(composed)
    assert composed.model.embed_dim == 64 and cfg.model.embed_dim == 48  # the checkpoint's network
    assert cfg.surgery.name == "vit" and OmegaConf.is_readonly(cfg)
    with pytest.raises(Exception, match="read-only"):
        cfg.model.embed_dim = 3
    assert resolve(cfg) == cfg  # resolving again changes nothing
    module = create_module(cfg)
    assert isinstance(module, ConvShareClassifier) and module.hparams["model"]["embed_dim"] == 48
    file_init = resolve(compose([f"init_from={files / 'w.safetensors'}"]))
    assert file_init.model.checkpoint == str(files / "w.safetensors") and file_init.model.pretrained is False
    with pytest.raises(ConfigError, match="set one of distill.source .* and init_from"):
        resolve(compose(["distill=kd", f"distill.source={files / 'run.ckpt'}", f"init_from={files / 'run.ckpt'}"]))


def test_compose_values_are_set_after_the_overrides_without_parsing(tmp_path):
    cfg = compose(["experiment=finetune", "distill.source=a"], values={"distill.source": "1e3", "run.name": "x: y"})
    assert cfg.distill.source == "1e3" and cfg.run.name == "x: y"


def test_init_from_keeps_the_checkpoints_network_but_computes_with_the_configured_optics(files):
    surgery = {"name": "convshare", "padding": "same", "kernel_size": 3, "backend": {"name": "direct"}}
    net = tiny_vit()
    from lightning_convshare.surgery import apply_surgery

    apply_surgery(net, surgery)
    save_run_checkpoint(files / "same3.ckpt", net, {"model": {"name": NAME, "pretrained": False, **TINY}, "surgery": surgery})
    cfg = resolve(compose(["data=synthetic", "data.num_classes=5", f"init_from={files / 'same3.ckpt'}", "optics=optical",
                           "optics.compile=false"]))
    assert cfg.surgery.padding == "same" and cfg.surgery.kernel_size == 3  # the checkpoint's architecture
    assert cfg.surgery.backend.name == "optical"  # noise-aware fine-tuning of a clean checkpoint
    module = create_module(cfg)
    assert type(module.net.blocks[0].attn.qkv.backend).__name__ == "OpticalConv"
    assert torch.equal(module.net.blocks[0].attn.qkv.weight, net.blocks[0].attn.qkv.weight)
