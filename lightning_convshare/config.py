"""Compose one run configuration from ``conf/`` with OmegaConf.

Merge order (later wins): ``conf/config.yaml`` -> the chosen file of each group -> the
``experiment/`` file -> command-line dotlist. Overrides come in three forms, all of which may be
mixed on one command line:

* ``group=choice`` selects ``conf/<group>/<choice>.yaml`` (e.g. ``surgery=vit trainer=ddp``);
* ``key.path=value`` / ``--key.path=value`` / ``--key.path value`` set an existing key (the
  ``--key=value`` form is what ``wandb agent`` passes); values are parsed as YAML, and ``None``
  (how W&B renders None) means null;
* ``+key.path=value`` adds a key that the composed config does not have (e.g. an extra timm kwarg).

A key that does not exist fails with close-match suggestions. An experiment file may start with
``defaults: [{surgery: vit}]`` to choose group files; choices made on the command line win. Any other
group file may extend files of its own group with ``defaults: [convshare]`` (its keys win).

A surgery file lists every option of its variant, so an experiment's ``surgery`` keys that the chosen
file lacks are options of another variant: ``experiment=paper_grid surgery=vit`` trains the ViT and
drops the experiment's ConvShare ``kernel_size`` and ``out_policy`` (an info line says so). The same
keys given on the command line still fail: the user asked for them.
"""
from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from .errors import ConfigError
from .files import atomic_write

__all__ = [
    "ALLOW_RESOLVERS_ENV",
    "SECRET_VARIABLES",
    "check_no_secrets",
    "check_override_value",
    "compose",
    "compose_saved",
    "config_dir",
    "flat_keys",
    "group_choices",
    "parse_overrides",
    "run_config_path",
    "save_config",
]

log = logging.getLogger(__name__)

NULLS = {"None", "none", "null", "Null", "NULL", "~"}
#: groups whose files list every option of what they choose (``conf/surgery/<variant>.yaml``: the variant's
#: keyword arguments, ``tests/test_config.py`` checks it): an experiment's keys that the chosen file lacks
#: belong to another choice and are dropped
OPTION_GROUPS = ("surgery",)
#: ``1`` allows resolver calls (``${oc.env:...}``) in overrides and sweep parameters
ALLOW_RESOLVERS_ENV = "CONVSHARE_ALLOW_RESOLVERS"
_RESOLVER_CALL = re.compile(r"\$\{\s*[\w.\-]+\s*:")
#: environment variables whose values never go into a config (plus any name matching _SECRET_NAME)
SECRET_VARIABLES = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "GITHUB_TOKEN", "GH_TOKEN",
                    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "OPENAI_API_KEY", "NETRC_PASSWORD")
_SECRET_NAME = re.compile(r"(API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|PRIVATE_KEY|ACCESS_KEY|CREDENTIAL)", re.IGNORECASE)
# YAML 1.1 (PyYAML) reads "1e-05" as a string, but that is how Python (and so `wandb agent`) prints 0.00001
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def config_dir(override: str | os.PathLike | None = None) -> Path:
    """The ``conf/`` directory: ``override``, ``$CONVSHARE_CONFIG_DIR``, the installed copy, or the repo's."""
    for candidate in (override, os.environ.get("CONVSHARE_CONFIG_DIR")):
        if candidate:
            path = Path(candidate).expanduser()
            if not (path / "config.yaml").is_file():
                raise ConfigError(f"config directory {path} has no config.yaml")
            return path
    here = Path(__file__).resolve().parent
    for path in (here / "conf", here.parent / "conf"):  # wheel install / source checkout
        if (path / "config.yaml").is_file():
            return path
    raise ConfigError(f"no conf/ directory found next to {here}; pass --config-dir or set CONVSHARE_CONFIG_DIR")


def group_choices(conf: Path) -> dict[str, list[str]]:
    """``{group: [choices]}`` for every sub-directory of ``conf``."""
    return {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))
        for d in sorted(conf.iterdir())
        if d.is_dir() and not d.name.startswith((".", "_"))
    }


def _parse_value(text: str) -> Any:
    if text in NULLS:
        return None
    if _EXPONENT_FLOAT.fullmatch(text):
        return float(text)
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def parse_overrides(args: Sequence[str], groups: Iterable[str]) -> tuple[dict[str, str], list[tuple[str, Any, bool]]]:
    """Split command-line overrides into group choices and ``(key, value, add)`` assignments.

    Raises:
        ConfigError: for tokens that are not overrides.
    """
    groups = set(groups)
    choices: dict[str, str] = {}
    sets: list[tuple[str, Any, bool]] = []
    items = list(args)
    i = 0
    while i < len(items):
        token = items[i]
        i += 1
        key = token[2:] if token.startswith("--") else token
        if "=" in key:
            key, text = key.split("=", 1)
        elif token.startswith("--") and i < len(items) and not items[i].startswith("--"):
            text = items[i]
            i += 1
        else:
            raise ConfigError(f"cannot read override {token!r}: use key=value, --key=value or group=choice")
        add = key.startswith("+")
        key = key.lstrip("+")
        if not key:
            raise ConfigError(f"override {token!r} has no key")
        if key in groups and not add:
            choices[key] = text
        else:
            sets.append((key, _parse_value(text), add))
    return choices, sets


def flat_keys(cfg: Any, prefix: str = "") -> list[str]:
    """All dotted keys of a config (leaves and inner nodes)."""
    keys: list[str] = []
    if isinstance(cfg, DictConfig):
        for k in cfg.keys():
            path = f"{prefix}{k}"
            keys.append(path)
            node = cfg._get_node(k)
            if isinstance(node, DictConfig):
                keys += flat_keys(node, path + ".")
    return keys


def _load_yaml(path: Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # yaml syntax errors
        raise ConfigError(f"cannot parse {path}: {e}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path} must hold a mapping, not {type(cfg).__name__}")
    return cfg


def _group_file(conf: Path, group: str, choice: str, available: dict[str, list[str]], _seen: tuple = ()) -> DictConfig:
    """``conf/<group>/<choice>.yaml``; a file may extend others of its group with ``defaults: [base]``."""
    path = conf / group / f"{choice}.yaml"
    if not path.is_file():
        close = difflib.get_close_matches(choice, available.get(group, []), n=2)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise ConfigError(
            f"{group}={choice}: no file {path}.{hint} Choices for {group}: {', '.join(available.get(group, []))}"
        )
    node = _load_yaml(path)
    if group == "experiment" or "defaults" not in node:
        return node
    bases = node.pop("defaults")
    if not isinstance(bases, ListConfig) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: 'defaults' of a {group} file must list other {group} files, e.g. [convshare]")
    if choice in _seen:
        raise ConfigError(f"{path}: circular defaults {' -> '.join((*_seen, choice))}")
    merged = OmegaConf.create()
    for base in bases:
        merged = OmegaConf.merge(merged, _group_file(conf, group, base, available, (*_seen, choice)))
    return OmegaConf.merge(merged, node)


def _defaults(cfg: DictConfig, where: str) -> dict[str, str]:
    raw = cfg.pop("defaults", None)
    if raw is None:
        return {}
    out: dict[str, str] = {}
    if not isinstance(raw, ListConfig):
        raise ConfigError(f"{where}: 'defaults' must be a list like [{{model: vit_digits}}, {{data: digits}}]")
    for entry in raw:
        if not isinstance(entry, DictConfig) or len(entry) != 1:
            raise ConfigError(f"{where}: each defaults entry must be one {{group: choice}} pair, got {entry}")
        (group, choice), = entry.items()
        out[str(group)] = str(choice)
    return out


def _drop_other_choices_options(experiment: DictConfig, base: DictConfig, choices: Mapping[str, str], name: str) -> None:
    """Remove from ``experiment`` the keys of :data:`OPTION_GROUPS` that the chosen group file does not have.

    An experiment's options are meant for the choices it was written for (e.g. ConvShare kernels); on top of
    another choice (``surgery=vit``) they are dropped, with an info line, instead of failing the run.
    """
    for group in OPTION_GROUPS:
        node = experiment.get(group)
        if not isinstance(node, DictConfig) or not isinstance(base.get(group), DictConfig):
            continue
        foreign = [str(k) for k in node.keys() if k not in base[group]]
        if foreign:
            log.info("experiment %s: %s=%s does not take %s; dropped (the experiment's values apply to the "
                     "choices that have these options)", name, group, choices.get(group),
                     ", ".join(f"{group}.{k}={node[k]}" for k in foreign))
            for key in foreign:
                del node[key]


def _resolvers_allowed() -> bool:
    return os.environ.get(ALLOW_RESOLVERS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def check_override_value(key: str, value: Any) -> None:
    """Refuse resolver calls (``${oc.env:...}``, ``${oc.decode:...}``, ...) in a value from the command line or a sweep.

    Resolvers can read the environment (API keys, tokens) into a config that is saved next to the run and
    sent to W&B; with ``convshare agents`` the values come from a W&B server. Plain interpolations
    (``${data.img_size}``) stay allowed; ``CONVSHARE_ALLOW_RESOLVERS=1`` allows resolvers too.

    Raises:
        ConfigError: a value that calls a resolver.
    """
    if _resolvers_allowed():
        return
    for text in _strings(value):
        if _RESOLVER_CALL.search(text):
            raise ConfigError(f"{key}={text!r} calls a resolver (${{name:...}}); resolvers such as oc.env read the "
                              f"environment, so overrides and sweep parameters may not use them. Give the value itself "
                              f"(or set {ALLOW_RESOLVERS_ENV}=1 to allow resolvers)")


def _secret_values() -> dict[str, str]:
    """The values of environment variables that hold credentials (by name), at least 6 characters long."""
    out = {}
    for name, value in os.environ.items():
        if (name in SECRET_VARIABLES or _SECRET_NAME.search(name)) and len(value.strip()) >= 6:
            out[name] = value.strip()
    return out


def check_no_secrets(cfg: DictConfig) -> None:
    """Refuse a config that holds the value of a credential from the environment (``WANDB_API_KEY``, ``*_TOKEN`` ...).

    The config is saved as ``config.yaml``, in the checkpoints' hyperparameters and as the W&B run config.

    Raises:
        ConfigError: names the key and the variable (never the value).
    """
    secrets = _secret_values()
    if not secrets:
        return
    plain = OmegaConf.to_container(cfg, resolve=False)

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")
        elif isinstance(node, str):
            for name, value in secrets.items():
                if value in node:
                    raise ConfigError(f"{path} holds the value of ${name}, a credential: configs are saved next to "
                                      "the run and sent to W&B. Remove it from the config or the overrides")

    walk(plain, "")


def _apply_sets(base: DictConfig, sets: Sequence[tuple[str, Any, bool]]) -> None:
    """Set ``(key, value, add)`` assignments on a struct config; unknown keys fail with suggestions."""
    known = flat_keys(base)
    for key, value, add in sets:
        check_override_value(key, value)
        if not add and OmegaConf.select(base, key, default="__missing__") == "__missing__" and key not in known:
            group = key.split(".", 1)[0]
            option_group = group in OPTION_GROUPS and isinstance(base.get(group), DictConfig) and "choices" in base
            close = [c for c in difflib.get_close_matches(key, known, n=3, cutoff=0.6)
                     if not (option_group and c == f"{group}.name")]
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            if option_group:
                hint += (f" {group}={base.choices.get(group)} takes "
                         f"{', '.join(str(k) for k in base[group] if k != 'name') or 'no options'}.")
            raise ConfigError(f"unknown config key {key!r}.{hint} (prefix a key with '+' to add a new one)")
        try:
            OmegaConf.update(base, key, value, merge=True, force_add=add)
        except Exception as e:
            raise ConfigError(f"cannot set {key}={value!r}: {e}") from None


def _resolve_interpolations(cfg: DictConfig) -> DictConfig:
    try:
        OmegaConf.resolve(cfg)
    except Exception as e:
        raise ConfigError(f"cannot resolve interpolations in the config: {e}") from None
    return cfg


def compose(
    overrides: Sequence[str] = (),
    conf_dir: str | os.PathLike | None = None,
    *,
    values: Mapping[str, Any] | None = None,
) -> DictConfig:
    """Compose the run config (see the module docstring for order and override forms).

    Args:
        overrides: command-line tokens, e.g. ``["surgery=vit", "model.num_heads=2", "--trainer.max_epochs=3"]``.
        conf_dir: configuration directory; default :func:`config_dir`.
        values: ``{key: value}`` set after the overrides, as given (not parsed), e.g. the values of a
            command's own options (``convshare finetune --source PATH``).

    Returns:
        The composed, resolved ``DictConfig`` (struct mode: unknown keys raise). ``cfg.choices``
        records the group files used.

    Raises:
        ConfigError: unknown groups, files or keys (with suggestions), unparsable YAML.
    """
    conf = config_dir(conf_dir)
    available = group_choices(conf)
    cli_choices, sets = parse_overrides(overrides, available)
    sets = [*sets, *((k, v, False) for k, v in (values or {}).items())]
    base = _load_yaml(conf / "config.yaml")
    choices = _defaults(base, "config.yaml")
    unknown_groups = sorted(set(choices) - set(available))
    if unknown_groups:
        raise ConfigError(f"config.yaml defaults name groups without a directory in {conf}: {unknown_groups}")
    experiment = None
    exp_name = cli_choices.get("experiment", choices.get("experiment"))
    if exp_name and exp_name not in NULLS:
        experiment = _group_file(conf, "experiment", exp_name, available)
        choices.update(_defaults(experiment, f"experiment/{exp_name}.yaml"))
    choices.update(cli_choices)
    choices.pop("experiment", None)
    for group, choice in choices.items():
        node = _group_file(conf, group, choice, available)
        base = OmegaConf.merge(base, {group: node})
    if experiment is not None:
        _drop_other_choices_options(experiment, base, choices, exp_name)
        base = OmegaConf.merge(base, experiment)
    base.choices = {**choices, "experiment": exp_name if exp_name not in NULLS else None}
    OmegaConf.set_struct(base, True)
    _apply_sets(base, sets)
    cfg = _resolve_interpolations(base)
    check_no_secrets(cfg)
    return cfg


def run_config_path(checkpoint: str | os.PathLike) -> Path:
    """``config.yaml`` of the run that wrote ``checkpoint`` (its folder or the one above ``checkpoints/``).

    Raises:
        ConfigError: no such file.
    """
    checkpoint = Path(checkpoint).expanduser()
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    raise ConfigError(f"no config.yaml next to {checkpoint} or in {checkpoint.parent.parent}: "
                      "is it a checkpoint of a `convshare train` run directory?")


def compose_saved(
    path: str | os.PathLike, overrides: Sequence[str] = (), *, values: Mapping[str, Any] | None = None
) -> DictConfig:
    """A run's saved ``config.yaml`` with ``key=value`` overrides, checked like :func:`compose`'s.

    Raises:
        ConfigError: an unreadable file, a group choice (a saved config has no groups to choose),
            unknown keys.
    """
    base = _load_yaml(Path(path))
    _, sets = parse_overrides(overrides, ())
    sets = [*sets, *((k, v, False) for k, v in (values or {}).items())]
    for key, value, _ in sets:
        if isinstance(OmegaConf.select(base, key, default=None), DictConfig) and not isinstance(value, Mapping):
            raise ConfigError(f"{key}={value}: a saved run config takes key=value overrides of its values "
                              f"(e.g. {key}.batch_size=256), not group choices")
    OmegaConf.set_struct(base, True)
    _apply_sets(base, sets)
    cfg = _resolve_interpolations(base)
    check_no_secrets(cfg)
    return cfg


def save_config(cfg: DictConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (atomically) and return its path."""
    return atomic_write(path, OmegaConf.to_yaml(cfg, resolve=True))
