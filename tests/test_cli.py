import json
import os
import subprocess
import sys

import pytest

from lightning_convshare.cli import main


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    assert "train" in capsys.readouterr().out


def test_unknown_command_suggests(capsys):
    assert main(["trian"]) == 2
    assert "Did you mean 'train'" in capsys.readouterr().err


def test_print_config_applies_key_value_forms(capsys):
    assert main(["train", "--print-config", "--model.num_heads=2", "surgery.padding=same", "--surgery.kernel_size", "3"]) == 0
    out = capsys.readouterr().out
    assert "num_heads: 2" in out and "padding: same" in out and "kernel_size: 3" in out


def test_bad_config_is_one_clean_message(capsys):
    assert main(["train", "model.num_head=2"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'model.num_head'" in err and "Traceback" not in err


def test_impossible_kernel_fails_fast_with_the_layer_message(capsys, tmp_path):
    assert main(["train", "surgery.kernel_size=3", f"run.root={tmp_path}"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "blocks.0.attn.qkv" in err and "Kernel sizes that work here: [1, 5, 7, 8]" in err
    assert not any(tmp_path.iterdir()), "an invalid run must not leave a run directory"


@pytest.mark.slow
def test_console_script_trains_end_to_end(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "lightning_convshare", "train", "data=synthetic", "logger=csv",
           "model.depth=1", "model.embed_dim=32", "--trainer.max_epochs=1", f"--run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and "val/acc" in metrics and "summary" in proc.stdout
