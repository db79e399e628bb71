"""The attention callback under Lightning DDP (2 CPU processes, gloo) logs the single-process values."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_convshare.config import compose
from lightning_convshare.lit import run_training
from tests.lit._attention_ddp import validate

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ddp_validation_logs_the_single_process_attention_metrics(tmp_path):
    ref = run_training(compose(["data=synthetic", "logger=csv", "model.embed_dim=32", "model.depth=1", "model.num_heads=2",
                                "surgery=vit", "trainer.max_epochs=1", f"run.dir={tmp_path / 'vit'}"]))
    ckpt = str(ref.run_dir / "checkpoints" / "last.ckpt")
    out = tmp_path / "ddp" / "values.json"
    out.parent.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("CONVSHARE_RUN_DIR", None)
    proc = subprocess.run([sys.executable, str(ROOT / "tests/lit/_attention_ddp.py"), str(out), "2", ckpt],
                          env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads(out.read_text())
    assert ddp["world"] == 2
    (tmp_path / "single").mkdir()
    single = validate(tmp_path / "single" / "values.json", 1, ckpt)
    assert len(single) == 40 and ddp["values"].keys() == single.keys()
    for key, value in single.items():
        assert ddp["values"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
