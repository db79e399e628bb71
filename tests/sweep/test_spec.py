"""Sweep YAMLs: W&B's schema, keys that resolve in our config, and `wandb agent`'s argument rendering."""
from pathlib import Path

import pytest
from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

from lightning_convshare.config import compose, config_dir, group_choices
from lightning_convshare.errors import ConfigError
from lightning_convshare.sweep import load_spec, plan_sweep, start_sweep, sweep_args, train_overrides

SWEEPS = sorted((Path(__file__).parents[2] / "sweeps").glob("*.yaml"))


def test_the_repository_ships_the_sweeps_of_the_issue():
    assert {p.name for p in SWEEPS} >= {"grid_padding_kernel_heads.yaml", "paper_grid.yaml", "lr_wd_bayes.yaml"}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_files_are_valid_wandb_sweeps_whose_keys_resolve(path):
    spec = load_spec(path)  # W&B's own schema (sweeps.SweepConfig) accepted it
    assert spec.metric == {"name": "val/acc", "goal": "maximize"}
    groups = group_choices(config_dir())
    # flat keys: dotted config keys, or a config group whose values are files of that group (surgery=castling)
    assert all(("." in key or key in groups) and "parameters" not in p for key, p in spec.parameters.items())
    for key, p in spec.parameters.items():
        if key in groups:
            assert set(p["values"]) <= set(groups[key]), (key, p["values"])
    assert "${args_no_hyphens}" in spec.command and spec.command[1:3] == ["convshare", "train"]
    spec.check_keys()  # every key, with every listed value (or both bounds), composes
    cfg = compose(train_overrides(spec.render({}))[1])
    for key in spec.parameters:  # ... and is a key of the composed config, not a new one
        assert key in groups or key.rsplit(".", 1)[-1] in cfg[key.split(".")[0]]


def test_readme_grid_is_20_trials_of_which_exactly_the_impossible_ones_are_invalid(tmp_path, monkeypatch):
    planned = plan_sweep(SWEEPS[0].with_name("grid_padding_kernel_heads.yaml"))
    assert len(planned) == 20
    bad = [t for t in planned if t["error"]]
    assert [(t["params"]["surgery.padding"], t["params"]["surgery.kernel_size"]) for t in bad] == [("same", 1)] * 2
    assert all(t["error"].startswith("blocks.0.mlp.fc2: cannot turn Linear(256 -> 64)") for t in bad)
    monkeypatch.chdir(tmp_path)  # paper_grid compares attention with a vit reference trained beforehand
    reference = tmp_path / "runs/paper-grid-reference/checkpoints/last.ckpt"
    reference.parent.mkdir(parents=True)
    reference.touch()
    paper = plan_sweep(SWEEPS[0].with_name("paper_grid.yaml"))
    combos = {(t["params"]["surgery.padding"], t["params"]["surgery.shared"], tuple(t["params"]["surgery.targets"]))
              for t in paper if t["error"] is None}
    assert len(paper) == 12 and len(combos) == 12


def test_arguments_are_rendered_exactly_as_wandb_agent_renders_them():
    params = {"surgery.padding": "same", "surgery.kernel_size": None, "surgery.shared": False, "optim.lr": 1e-05,
              "surgery.targets": ["attn", "mlp"], "surgery.map_shape": {"qkv": [4, 16]}, "model.num_heads": 2}
    ours = sweep_args(params)
    theirs = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    for macro, value in ours.items():
        assert value == theirs[macro], macro
    assert ours["args_no_hyphens"][1] == "surgery.kernel_size=None" and ours["args_no_hyphens"][3] == "optim.lr=1e-05"
    # ... and our config reads every rendered value back as the value W&B meant
    cfg = compose(ours["args_no_hyphens"][:5])
    assert cfg.surgery.kernel_size is None and cfg.surgery.shared is False and cfg.optim.lr == 1e-05
    assert list(cfg.surgery.targets) == ["attn", "mlp"] and cfg.surgery.padding == "same"
    spec = load_spec(SWEEPS[0].with_name("grid_padding_kernel_heads.yaml"))
    argv = spec.render({"surgery.padding": "same"})
    assert argv == ["/usr/bin/env", "convshare", "train", "experiment=sweep_digits", "surgery.padding=same"]
    assert create_sweep_command(list(spec.command))[:-1] == spec.command[:-1]  # no ${envvar:...} to expand


def test_train_overrides_recognises_both_entry_points():
    assert train_overrides(["/usr/bin/env", "convshare", "train", "a=1", "--config-dir", "/c", "-v"]) == ("/c", ["a=1"])
    assert train_overrides(["python", "-m", "lightning_convshare", "train", "--config-dir=/d", "b=2"]) == ("/d", ["b=2"])
    assert train_overrides(["python", "train.py", "a=1"]) is None


@pytest.mark.parametrize("change, message", [
    ({"method": "gird"}, "is not a valid W&B sweep"),
    ({"parameters": {"model": {"parameters": {"num_heads": {"values": [2]}}}}}, "use flat dotted keys"),
    ({"parameters": {"optim.lr": {"values": ["1e-3"]}}}, "write it with a decimal point (0.001)"),
    ({"parameters": {"model.num_head": {"values": [2]}}}, "Did you mean model.num_heads"),
    ({"parameters": {"surgery": {"values": ["vit", "convshar"]}}}, "Did you mean convshare"),
])
def test_bad_sweeps_fail_with_what_would_work(tmp_path, change, message):
    config = {"method": "grid", "metric": {"name": "val/acc", "goal": "maximize"},
              "parameters": {"surgery.padding": {"values": ["valid"]}},
              "command": ["${env}", "convshare", "train", "${args_no_hyphens}"], **change}
    with pytest.raises(ConfigError) as e:
        load_spec(config).check_keys()
    assert message in str(e.value)


def test_a_missing_reference_checkpoint_is_reported_before_any_trial_starts(tmp_path, monkeypatch):
    from lightning_convshare.sweep.validate import check_trial

    monkeypatch.chdir(tmp_path)
    check = check_trial(["surgery=castling", "reference.source=runs/variants-reference/checkpoints/last.ckpt"])
    assert check.error and "reference.source runs/variants-reference/checkpoints/last.ckpt: no such file" in check.error
    assert check_trial(["surgery=castling"]).error is None
    # a reference among the fixed arguments: the sweep refuses to start (rather than 12 invalid trials)
    for name in ("paper_grid.yaml", "variants.yaml"):
        with pytest.raises(ConfigError, match=r"the sweep's fixed arguments: reference.source runs/.*-reference/"
                                              r"checkpoints/last.ckpt: no such file .*train the reference first"):
            plan_sweep(SWEEPS[0].with_name(name))
    with pytest.raises(ConfigError, match="train the reference first"):
        start_sweep(SWEEPS[0].with_name("variants.yaml"), directory=tmp_path / "s", wandb_mode="disabled")
    assert not (tmp_path / "s").exists()
