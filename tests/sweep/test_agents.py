"""Device groups (--devices/--parallel) and the `wandb agent` command lines of `convshare agents`."""
import pytest

from lightning_convshare.cli import main
from lightning_convshare.errors import ConfigError
from lightning_convshare.sweep import agent_commands, device_groups


def test_device_groups_pin_each_slot_to_its_gpus(monkeypatch):
    monkeypatch.setenv("CONVSHARE_RUN_DIR", "/leaked/from/a/parent/run")
    groups = device_groups("0,1,2,3", 2)
    assert groups.groups == ["0,1", "2,3"]
    env = groups.env(1, {"PATH": "/bin", "CONVSHARE_RUN_DIR": "/x", "LOCAL_RANK": "1"})
    assert env == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "2,3"}  # no rank or run-dir variables leak into trials
    assert device_groups("0,1,2,3", None).groups == ["0", "1", "2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert device_groups("auto", None).groups == ["4", "6"]  # auto respects the caller's own pinning
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    cpu = device_groups("auto", 2, cpu_count=2)  # no GPU: K processes share the cores
    assert cpu.groups == [None, None] and cpu.env(0, {})["OMP_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in device_groups(None, 1).env(0, {})


@pytest.mark.parametrize("devices, parallel, message", [
    ("0,1,2", 2, "does not divide the 3 GPUs"), ("0,x", None, "distinct GPU indices"), ("0,0", None, "distinct"),
    ("cpu", 0, "at least 1"),
])
def test_bad_device_requests_say_what_works(devices, parallel, message):
    with pytest.raises(ConfigError, match=message):
        device_groups(devices, parallel)


def test_one_wandb_agent_per_gpu_group():
    cmds = agent_commands("ent/proj/abc123", device_groups("0,1,2,3", 2), count=5, executable="wandb")
    assert [c.shell() for c in cmds] == [
        "CUDA_VISIBLE_DEVICES=0,1 wandb agent --count 5 ent/proj/abc123",
        "CUDA_VISIBLE_DEVICES=2,3 wandb agent --count 5 ent/proj/abc123",
    ]
    bare = agent_commands("abc123", device_groups("7", None), project="p", entity="e", executable="wandb")
    assert bare[0].argv == ["wandb", "agent", "--project", "p", "--entity", "e", "abc123"]
    with pytest.raises(ConfigError, match="ENTITY/PROJECT/ID"):
        agent_commands("proj/abc", device_groups("0", None), executable="wandb")


def test_agents_cli_dry_run_prints_the_command_lines(capsys):
    assert main(["agents", "ent/proj/abc123", "--devices", "0,1,2,3", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(ln.startswith(f"CUDA_VISIBLE_DEVICES={i} ") for i, ln in enumerate(lines))
    assert all(ln.split()[1].endswith("wandb") and ln.split()[2:] == ["agent", "ent/proj/abc123"] for ln in lines)
