"""Sweep specifications: W&B sweep YAMLs, checked with W&B's own schema, rendered as ``wandb agent`` does.

A sweep file is W&B's format unchanged (``wandb sweep FILE`` accepts it). Parameters use flat dotted
config keys (``surgery.padding``), and ``command:`` starts ``convshare train`` with
``${args_no_hyphens}``, which renders every parameter as ``key=value`` with Python's ``str`` of the
value (so ``None`` arrives as the string ``None``, which our config parser reads as null).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from ..errors import ConfigError

__all__ = [
    "DEFAULT_COMMAND",
    "SweepSpec",
    "load_spec",
    "render_command",
    "sweep_args",
    "train_overrides",
]

# W&B's `sweeps` package (imported lazily) still uses a pydantic-v1 config key; the warning is not for our users
warnings.filterwarnings("ignore", message="Valid config keys have changed in V2", category=UserWarning)

#: W&B's command when a sweep has no ``command:``
DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
_ENVVAR = re.compile(r"\$\{envvar:([A-Z0-9_]*)\}")
_TRAIN_OPTIONS_WITH_VALUE = {"--config-dir"}
_TRAIN_FLAGS = {"--print-config", "-v", "--verbose"}


def sweep_args(params: Mapping[str, Any]) -> dict[str, list[str]]:
    """The argument macros ``wandb agent`` offers a command, for one trial's parameters.

    Mirrors ``wandb.sdk.launch.sweeps.utils.create_sweep_command_args`` (the tests check that
    both agree), e.g. ``{"surgery.padding": "same"}`` gives ``args_no_hyphens == ["surgery.padding=same"]``.
    """
    out: dict[str, list[str]] = {k: [] for k in (
        "args", "args_no_equals", "args_no_hyphens", "args_no_boolean_flags", "args_append_hydra", "args_override_hydra")}
    for key, value in params.items():
        flag = f"{key}={value}"
        out["args"].append("--" + flag)
        out["args_no_hyphens"].append(flag)
        out["args_no_equals"] += [f"--{key}", str(value)]
        out["args_append_hydra"].append("+" + flag)
        out["args_override_hydra"].append("++" + flag)
        if not isinstance(value, bool):
            out["args_no_boolean_flags"].append("--" + flag)
        elif value:
            out["args_no_boolean_flags"].append("--" + key)
    out["args_json"] = [json.dumps(dict(params))]
    return out


def render_command(template: Sequence[Any], params: Mapping[str, Any], program: Optional[str] = None) -> list[str]:
    """The argv ``wandb agent`` would run for ``params`` (macros ``${args_no_hyphens}``, ``${env}`` ...).

    ``${interpreter}`` becomes this Python (W&B uses a bare ``python``), so trials run in the
    runner's environment; unknown ``${...}`` chunks are dropped, as W&B does.
    """
    macros = {**sweep_args(params), "interpreter": [sys.executable], "env": ["/usr/bin/env"],
              "program": [program] if program else []}
    argv: list[str] = []
    for chunk in template:
        chunk = _ENVVAR.sub(lambda m: os.environ.get(m.group(1), m.group(1)), str(chunk))
        if chunk == "${args_json_file}":
            raise ConfigError("the local sweep runner does not support ${args_json_file}; use ${args_no_hyphens}")
        if chunk.startswith("${") and chunk.endswith("}"):
            argv += macros.get(chunk[2:-1]) or []
        else:
            argv.append(chunk)
    return argv


def train_overrides(argv: Sequence[str]) -> Optional[tuple[Optional[str], list[str]]]:
    """``(config_dir, overrides)`` if ``argv`` runs ``convshare train``, else ``None``.

    Recognises ``[/usr/bin/env] convshare train ...`` and ``python -m lightning_convshare train ...``.
    """
    argv = list(argv)
    start = None
    for i, token in enumerate(argv[:-1]):
        if Path(token).name == "convshare" and argv[i + 1] == "train":
            start = i + 2
        elif token == "-m" and argv[i + 1] == "lightning_convshare" and argv[i + 2:i + 3] == ["train"]:
            start = i + 3
        if start is not None:
            break
    if start is None:
        return None
    config_dir, overrides, rest = None, [], argv[start:]
    i = 0
    while i < len(rest):
        token = rest[i]
        name = token.split("=", 1)[0]
        if name in _TRAIN_OPTIONS_WITH_VALUE:
            if "=" in token:
                config_dir = token.split("=", 1)[1]
            else:
                config_dir = rest[i + 1] if i + 1 < len(rest) else None
                i += 1
        elif token not in _TRAIN_FLAGS:
            overrides.append(token)
        i += 1
    return config_dir, overrides


@dataclass
class SweepSpec:
    """A validated sweep configuration.

    Attributes:
        config: the sweep as written (what ``wandb sweep`` receives).
        filled: the same with W&B's defaults filled in (``sweeps.SweepConfig``).
        path: the file it came from, if any.
    """

    config: dict[str, Any]
    filled: dict[str, Any] = field(repr=False)
    path: Optional[Path] = None

    @property
    def name(self) -> str:
        return str(self.config.get("name") or (self.path.stem if self.path else "sweep"))

    @property
    def method(self) -> str:
        return str(self.config["method"])

    @property
    def parameters(self) -> dict[str, dict[str, Any]]:
        return dict(self.config["parameters"])

    @property
    def metric(self) -> Optional[dict[str, str]]:
        """``{"name", "goal"}`` or ``None``."""
        metric = self.filled.get("metric")
        return {"name": metric["name"], "goal": metric.get("goal", "minimize")} if metric else None

    @property
    def run_cap(self) -> Optional[int]:
        return self.config.get("run_cap")

    @property
    def command(self) -> list[Any]:
        return list(self.config.get("command") or DEFAULT_COMMAND)

    def render(self, params: Mapping[str, Any]) -> list[str]:
        """This trial's command line, exactly as ``wandb agent`` builds it."""
        return render_command(self.command, params, self.config.get("program"))

    def grid_size(self) -> Optional[int]:
        """Number of grid points (``None`` unless ``method: grid``)."""
        if self.method != "grid":
            return None
        size = 1
        for p in self.parameters.values():
            if "values" in p:
                size *= len(p["values"])
            elif "min" in p and "max" in p and isinstance(p["min"], int) and "q" not in p:
                size *= p["max"] - p["min"] + 1
        return size

    def sample_values(self) -> dict[str, list[Any]]:
        """Values to check per parameter: all listed values, or the bounds of a distribution."""
        out = {}
        for key, p in self.parameters.items():
            if "values" in p:
                out[key] = list(p["values"])
            elif "value" in p:
                out[key] = [p["value"]]
            else:
                out[key] = [p[b] for b in ("min", "max") if b in p] or [p.get("mu", 0.0)]
        return out

    def check_keys(self, extra: Sequence[str] = (), conf_dir: Optional[str] = None) -> None:
        """Every parameter key (with each value) must resolve in the composed ``convshare train`` config.

        Raises:
            ConfigError: naming every key or value that does not compose, with the config's own hint.
        """
        from ..config import compose

        base = train_overrides(self.render({}))
        if base is None:
            return  # not a convshare command: nothing to resolve against
        conf_dir = conf_dir or base[0]
        problems = []
        for key, values in self.sample_values().items():
            for value in values:
                token = sweep_args({key: value})["args_no_hyphens"][0]
                try:
                    compose([*base[1], *extra, token], conf_dir)
                except ConfigError as e:
                    problems.append(f"{token}: {e}")
                    break
        if problems:
            raise ConfigError(f"sweep {self.name}: parameters that do not resolve in the config: " + "; ".join(problems))


def _check_parameters(config: dict[str, Any], where: str) -> None:
    params = config.get("parameters")
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"{where}: 'parameters' must map config keys to W&B parameter specs, e.g. "
                          "{surgery.padding: {values: [valid, same]}}")
    for key, p in params.items():
        if not isinstance(p, dict):
            raise ConfigError(f"{where}: parameter {key!r} must be a mapping like {{values: [...]}} or {{value: ...}}")
        if "parameters" in p:
            raise ConfigError(f"{where}: parameter {key!r} has a nested 'parameters' block; use flat dotted keys "
                              f"instead, e.g. '{key}.<option>: {{values: [...]}}'")
        for name in ("values", "min", "max", "value"):
            values = p.get(name) if name == "values" else [p.get(name)]
            for v in values or []:
                if isinstance(v, str) and re.fullmatch(r"[-+]?\d*\.?\d+[eE][-+]?\d+", v):
                    raise ConfigError(f"{where}: parameter {key!r} has {name} {v!r}, which YAML reads as a string; "
                                      f"write it with a decimal point ({float(v)!r}) so W&B sees a number")


def load_spec(source: str | os.PathLike | Mapping[str, Any]) -> SweepSpec:
    """Read and validate a sweep (a YAML file or a mapping) with W&B's sweep schema.

    Raises:
        ConfigError: unreadable file, schema violations (W&B's own messages), nested parameter
            blocks, or numbers written so that YAML reads them as strings.
    """
    from sweeps import SweepConfig, schema_violations_from_proposed_config

    path = None
    if isinstance(source, Mapping):
        config = dict(source)
        where = "sweep"
    else:
        path = Path(source).expanduser()
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"sweep file {path} does not exist")
        try:
            config = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"cannot parse {path}: {e}") from None
        if not isinstance(config, dict):
            raise ConfigError(f"{path} must hold a W&B sweep mapping (method, metric, parameters, command)")
    _check_parameters(config, where)
    check_sweep_name(config.get("name"), where)
    try:
        violations = schema_violations_from_proposed_config(config)
    except ValueError as e:
        violations = [str(e)]
    if violations:
        raise ConfigError(f"{where} is not a valid W&B sweep: " + "; ".join(violations))
    filled = dict(SweepConfig(config))
    return SweepSpec(config=config, filled=filled, path=path)


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_sweep_name(name: Any, where: str = "sweep") -> None:
    """A sweep's ``name`` names folders (``sweep_runs/<name>-<date>``, each trial's run directory): one safe
    folder name, never a path.

    Raises:
        ConfigError: ``..``, ``/``, an absolute path or other characters.
    """
    if name is None:
        return
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise ConfigError(f"{where}: name {name!r} must be one folder name of letters, digits, '.', '_' and '-' "
                          "(no '/', no '..'): it names the sweep's and its trials' directories")


def quote(argv: Sequence[str]) -> str:
    """A shell-pasteable command line."""
    return " ".join(shlex.quote(str(a)) for a in argv)
