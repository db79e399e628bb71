import pytest
from omegaconf import OmegaConf

from lightning_convshare.config import compose, parse_overrides, save_config
from lightning_convshare.errors import ConfigError

GROUPS = ["model", "surgery", "data", "trainer", "logger", "experiment"]


def test_default_config_is_convshare_valid_on_digits_cpu():
    cfg = compose([])
    assert (cfg.surgery.name, cfg.surgery.padding, cfg.surgery.kernel_size) == ("convshare", "valid", "full")
    assert (cfg.data.name, cfg.trainer.accelerator) == ("digits", "cpu")
    assert cfg.model.num_classes == cfg.data.num_classes == 10  # interpolated from the data group
    assert set(cfg.logger) == {"wandb", "csv"}


@pytest.mark.parametrize(
    "tokens, choices, sets",
    [
        (["model.num_heads=2", "surgery.padding=same"], {}, [("model.num_heads", 2, False), ("surgery.padding", "same", False)]),
        (["--model.num_heads=2", "--surgery.kernel_size=3"], {}, [("model.num_heads", 2, False), ("surgery.kernel_size", 3, False)]),
        (["--trainer.max_epochs", "3", "surgery=vit"], {"surgery": "vit"}, [("trainer.max_epochs", 3, False)]),
        (["+model.drop_rate=0.1", "run.name=None"], {}, [("model.drop_rate", 0.1, True), ("run.name", None, False)]),
        (["--surgery.kernel_size={qkv: 5, fc2: 9}"], {}, [("surgery.kernel_size", {"qkv": 5, "fc2": 9}, False)]),
        (["surgery.targets=[attn]", "surgery.kernel_size=full"], {}, [("surgery.targets", ["attn"], False), ("surgery.kernel_size", "full", False)]),
    ],
)
def test_override_forms(tokens, choices, sets):
    assert parse_overrides(tokens, GROUPS) == (choices, sets)


def test_wandb_agent_style_overrides_compose():
    cfg = compose(["--surgery.padding=same", "--surgery.kernel_size=3", "--model.num_heads=2", "--run.name=None"])
    assert (cfg.surgery.padding, cfg.surgery.kernel_size, cfg.model.num_heads, cfg.run.name) == ("same", 3, 2, None)


def test_group_choice_experiment_and_precedence():
    cfg = compose(["experiment=vit_baseline"])
    assert cfg.surgery == {"name": "vit"} and cfg.choices.experiment == "vit_baseline"
    cfg = compose(["experiment=vit_baseline", "surgery=convshare"])  # the command line wins
    assert cfg.surgery.name == "convshare"
    cfg = compose(["experiment=same_k3", "surgery.kernel_size=5"])
    assert (cfg.surgery.padding, cfg.surgery.kernel_size) == ("same", 5)


@pytest.mark.parametrize(
    "tokens, message",
    [
        (["model.num_head=2"], "unknown config key 'model.num_head'. Did you mean model.num_heads"),
        (["surgery=convshar"], "Did you mean convshare or"),
        (["surgery=vit", "surgery.padding=same"], "unknown config key 'surgery.padding'"),
        (["experiment=nope"], "experiment=nope: no file"),
        (["model.num_heads"], "cannot read override 'model.num_heads'"),
    ],
)
def test_bad_overrides_fail_with_suggestions(tokens, message):
    with pytest.raises(ConfigError, match=message.replace("?", r"\?").replace("(", r"\(")):
        compose(tokens)


def test_saved_config_round_trips(tmp_path):
    cfg = compose(["model.depth=2"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert OmegaConf.load(path) == cfg


def test_group_files_extend_files_of_their_group(tmp_path):
    import shutil

    from lightning_convshare.config import config_dir

    conf = tmp_path / "conf"
    shutil.copytree(config_dir(), conf)
    cfg = compose(["surgery=convshare_same_k3"], conf)
    assert (cfg.surgery.name, cfg.surgery.padding, cfg.surgery.kernel_size, cfg.surgery.shared) == ("convshare", "same", 3, True)
    assert compose(["experiment=same_k3"], conf).surgery == cfg.surgery  # the experiment selects the preset
    (conf / "surgery" / "loop.yaml").write_text("defaults: [loop]\nname: convshare\n")
    with pytest.raises(ConfigError, match="circular defaults loop -> loop"):
        compose(["surgery=loop"], conf)
