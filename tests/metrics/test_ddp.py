"""Two CPU processes (gloo, launched as a subprocess) give the single-process metric values."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.metrics._ddp_worker import compute, make_data

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_gloo_run_equals_the_single_process_run(tmp_path):
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "tests/metrics/_ddp_worker.py"), str(out), str(_free_port())],
                          env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = torch.load(out)
    assert result["world"] == 2
    a, r = make_data()
    single = compute(a, r, batch=4)  # one process, other batch boundaries
    assert result["synced"].keys() == single.keys()
    for key, value in single.items():
        torch.testing.assert_close(result["synced"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    # rank 0 alone (4 of the 10 images) differs: the equality above comes from the reduction
    assert not torch.allclose(result["local"]["cosine/head"], single["cosine/head"])
