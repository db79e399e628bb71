"""The GPU check stays runnable without a GPU: its dry run passes, and the Dockerfile builds an image it runs in.

Docker cannot run here, so the Dockerfile is checked by reading it: a base with a C compiler (Triton
builds kernel launchers at run time), the torch the suite runs on, and every top-level path the
package and the check need copied into the directory the documented command runs from.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


@pytest.mark.slow
def test_the_dry_run_collects_the_gpu_tests_and_checks_every_command(tmp_path):
    out = tmp_path / "gpu-check"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    summary = (out / "summary.md").read_text()
    assert proc.returncode == 0, proc.stdout + proc.stderr + summary
    assert "| dry-run | ok |" in summary
    assert re.search(r"\d+ skipped", summary) and "needs a CUDA device" in summary  # the gpu tests exist and skip
    for bench in ("throughput", "optics", "attention"):
        assert re.search(rf"bench/{bench}\.py --device cuda .*exists and accepts these options", summary), bench
    assert "convshare train trainer=gpu" in summary and "'precision': 'bf16-mixed'" in summary
    # the gpu tests' bodies ran on the CPU: every one but wave's and the CUDA-allocator one passed
    assert "| gpu-tests-on-cpu | ok |" in summary
    ran = re.search(r"(\d+) passed, 1 skipped, (\d+) deselected", summary)
    assert ran and int(ran.group(1)) >= 40 and int(ran.group(2)) == 2, summary


def test_a_failing_step_fails_the_check_and_is_reported(tmp_path):
    out = tmp_path / "gpu-check"
    env = {**os.environ, "PYTHON": "false"}  # every Python step fails at once
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "| dry-run | FAILED (exit 1) |" in (out / "summary.md").read_text()


def _instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def _needed_paths() -> set[str]:
    """Top-level paths the package (wheel build) and the GPU check (what the script runs) read."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wheel = project["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = {"pyproject.toml", project["project"]["readme"], *wheel["packages"], *wheel.get("force-include", {})}
    script = SCRIPT.read_text()
    needed |= {m.split("/")[0] for m in re.findall(r"\b(?:scripts|bench|tests)/[\w./]+", script)}
    for path in needed:
        assert (ROOT / path).exists(), path
    return needed


def test_the_dockerfile_has_a_compiler_and_the_tested_torch():
    instructions = _instructions()
    base = next(args for op, args in instructions if op == "FROM")
    assert "-runtime" not in base, f"{base}: a runtime image has no C compiler for Triton"
    compiler = "-devel" in base or any(op == "RUN" and re.search(r"\b(build-essential|gcc)\b", args) for op, args in instructions)
    assert compiler, "install a C compiler (build-essential) or start from a -devel image"
    pinned = {args.split("=", 1)[1] for op, args in instructions if op == "ARG" and args.startswith("TORCH_VERSION=")}
    assert pinned == {torch.__version__.split("+")[0]}, f"the image's torch {pinned} is not the suite's {torch.__version__}"
    assert any(op == "RUN" and "torch==${TORCH_VERSION}" in args for op, args in instructions)


def test_the_dockerfile_copies_everything_the_package_and_the_check_need():
    instructions = _instructions()
    workdir, copied = "/", {}
    for op, args in instructions:
        if op == "WORKDIR":
            workdir = args
        elif op == "COPY":
            *sources, dest = args.split()
            for source in sources:
                copied[source.rstrip("/")] = workdir
    missing = sorted(_needed_paths() - set(copied))
    assert not missing, f"the Dockerfile does not copy {missing}"
    # `bash scripts/gpu_check.sh` runs from the final WORKDIR: the check's paths must be there
    final = [args for op, args in instructions if op == "WORKDIR"][-1]
    assert copied["scripts"] == copied["bench"] == copied["tests"] == final
    assert "docker run --gpus all" in (ROOT / "Dockerfile").read_text() and "bash scripts/gpu_check.sh" in (ROOT / "Dockerfile").read_text()
