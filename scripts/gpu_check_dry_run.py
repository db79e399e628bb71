"""The Python side of ``scripts/gpu_check.sh``.

Without arguments (the dry run, one process so the imports happen once): the ``gpu`` tests collect
and skip, every command of the real run exists and accepts its options (each is in its ``--help``),
and the training overrides compose to a GPU trainer. The commands come from the shell script through
the environment (``GPU_TESTS``, ``BENCHES`` separated by ``;``, ``TRAIN``), so what is checked is
what would run.

``--environment`` (the real run's first step): versions, the device, Triton, a C compiler, and
whether the Philox normals are bit-identical on the CPU and the GPU.
"""
from __future__ import annotations

import contextlib
import io
import os
import runpy
import shutil
import sys

import torch


def environment() -> None:
    print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
    print("device", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
    try:
        import triton

        print("triton", triton.__version__)
    except ImportError:
        print("triton: not installed (optics compile=true cannot build its kernel)")
    print("C compiler:", shutil.which("cc") or shutil.which("gcc") or "none")
    from lightning_convshare.optics.rng import philox_normal_pair

    counter, seed = torch.arange(1 << 20), torch.tensor(123_456_789_012)
    pairs = zip(philox_normal_pair(counter, seed), philox_normal_pair(counter.cuda(), seed.cuda()), strict=True)
    same = all(torch.equal(cpu, gpu.cpu()) for cpu, gpu in pairs)
    print("Philox normals bit-identical on CPU and CUDA:", same, "(the 32-bit words: tests/test_gpu.py)")


def dry_run() -> None:
    print("python", sys.version.split()[0], "torch", torch.__version__, "cuda available:", torch.cuda.is_available())
    import pytest

    args = os.environ["GPU_TESTS"].split()[2:]  # after "-m pytest"
    code = pytest.main(args)
    assert code == 0, f"pytest {' '.join(args)} exited with {code}"
    for command in os.environ["BENCHES"].split(";"):
        script, *options = command.split()
        sys.argv, text = [script, "--help"], io.StringIO()
        with contextlib.redirect_stdout(text):
            try:
                runpy.run_path(script, run_name="__main__")
            except SystemExit as e:
                assert e.code in (0, None), f"{script} --help exited with {e.code}"
        missing = [o for o in options if o.startswith("--") and o not in text.getvalue()]
        assert not missing, f"{script} does not accept {missing}"
        print(f"{command}: exists and accepts these options")

    from lightning_convshare.cli import main
    from lightning_convshare.config import compose

    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(["train", "--help"])
        except SystemExit as e:
            assert e.code in (0, None), f"convshare train --help exited with {e.code}"
    cfg = compose(os.environ["TRAIN"].split())
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed", dict(cfg.trainer)
    print(f"convshare train {os.environ['TRAIN']}: composes, trainer {dict(cfg.trainer)}")


if __name__ == "__main__":
    environment() if sys.argv[1:] == ["--environment"] else dry_run()
