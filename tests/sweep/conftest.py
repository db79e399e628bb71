"""Helpers for sweep tests: write sweep YAMLs, read a sweep directory's state."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

FAKE = Path(__file__).with_name("fake_train.py")


@pytest.fixture
def write_sweep(tmp_path):
    """``write_sweep(parameters, command=None, **top)`` -> path of a W&B sweep YAML (fake program by default)."""

    def _write(parameters: dict, command: list | None = None, name: str = "t", **top) -> Path:
        spec = {"name": name, "method": "grid", "metric": {"name": "val/acc", "goal": "maximize"},
                "parameters": parameters,
                "command": command or ["${interpreter}", str(FAKE), "${args_no_hyphens}"], **top}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    return _write


def state_of(directory: Path) -> dict:
    return json.loads((Path(directory) / "state.json").read_text())


def trials_of(directory: Path) -> dict[str, dict]:
    return {t["id"]: t for t in state_of(directory)["trials"]}


PYTHON = sys.executable
