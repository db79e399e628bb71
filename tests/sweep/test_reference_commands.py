"""Every sweep file's documented steps run as written: its reference training composes, resolves and builds,
trains what the trials are compared with, and every trial composes on top of it.

The documented commands are the ``#   convshare train ...`` lines of each sweep file's header (the README and
docs/sweeps.md quote the same lines, which is checked too). Nothing is trained: networks are built on the
meta device.
"""
from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lightning_convshare.config import compose
from lightning_convshare.models import ModelSpec, create_network
from lightning_convshare.resolve import resolve
from lightning_convshare.sweep.spec import load_spec, train_overrides
from lightning_convshare.sweep.validate import check_trial

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))
DOCUMENTED = re.compile(r"^#\s+convshare train (.+)$")


def documented_commands(path: Path) -> list[list[str]]:
    """The ``convshare train`` overrides of each command line in a sweep file's comments."""
    return [shlex.split(m.group(1)) for line in path.read_text().splitlines() if (m := DOCUMENTED.match(line.strip()))]


def _value(tokens: list[str], key: str) -> str | None:
    found = [t.split("=", 1)[1] for t in tokens if t.split("=", 1)[0].lstrip("-+") == key]
    return found[-1] if found else None


def _trial_tokens(path: Path) -> list[list[str]]:
    """Every grid point's (or every listed value's) ``convshare train`` overrides, as the runner renders them."""
    spec = load_spec(path)
    values = spec.sample_values()
    points = ([dict(zip(values, combo, strict=True)) for combo in itertools.product(*values.values())] if spec.method == "grid"
              else [{k: v[0] for k, v in values.items()}, {k: v[-1] for k, v in values.items()}])
    return [train_overrides(spec.render(p))[1] for p in points]


def _build_on_meta(cfg) -> None:
    with torch.device("meta"):
        create_network(ModelSpec.from_config(cfg))


def test_there_are_sweep_files():
    assert len(SWEEPS) >= 5


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_documented_reference_training_composes_and_trains_what_the_trials_are_compared_with(path, caplog):
    fixed = train_overrides(load_spec(path).render({}))[1]
    reference = _value(fixed, "reference.source")
    commands = documented_commands(path)
    if reference is None:
        assert not any(_value(c, "run.dir") for c in commands), "a reference run nobody compares with"
        return
    makers = [c for c in commands if Path(_value(c, "run.dir") or "-") / "checkpoints" / "last.ckpt" == Path(reference)]
    assert len(makers) == 1, f"{path.name} compares with {reference}; its header must say how to train it (run.dir=...)"
    with caplog.at_level("INFO", logger="lightning_convshare.config"):
        cfg = resolve(compose(makers[0]))  # the reference step, as written
    _build_on_meta(cfg)
    assert cfg.surgery.name == "vit" and cfg.attention.enabled
    for other in commands:  # the other documented steps (a second ViT to compare with the same reference ...)
        if other is not makers[0]:
            step = resolve(compose(other))
            _build_on_meta(step)
            assert step.reference.source in (None, reference)
    for tokens in _trial_tokens(path):
        trial = compose([t for t in tokens if not t.startswith("reference.")])
        # same network shape and data as the trials, a different seed (the control is never a copy of the reference)
        assert OmegaConf.to_container(trial.model) == OmegaConf.to_container(cfg.model)
        assert OmegaConf.to_container(trial.data) == OmegaConf.to_container(cfg.data)
        assert trial.seed != cfg.seed and trial.trainer.max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_trial_of_every_sweep_file_composes(path):
    for tokens in _trial_tokens(path):
        check = check_trial([t for t in tokens if not t.startswith("reference.")])
        assert check.config is not None, f"{tokens}: {check.error}"
        # the only trials allowed to be impossible are the ones a sweep file announces as invalid
        assert check.error is None or "invalid" in path.read_text(), f"{tokens}: {check.error}"


def test_reference_commands_in_readme_and_docs_are_the_sweep_files():
    documented = {" ".join(c) for path in SWEEPS for c in documented_commands(path) if _value(c, "run.dir")}
    for doc in (ROOT / "README.md", ROOT / "docs" / "sweeps.md"):
        for quoted in re.findall(r"convshare train ([^`\n]*?run\.dir=runs/[\w-]*reference)", doc.read_text()):
            assert " ".join(quoted.split()) in documented, f"{doc.name} quotes a reference step no sweep file has: {quoted}"


def test_surgery_on_top_of_an_experiment_drops_only_the_experiments_options_it_does_not_take(caplog):
    with caplog.at_level("INFO", logger="lightning_convshare.config"):
        cfg = compose(["experiment=paper_grid", "surgery=vit"])
    assert dict(cfg.surgery) == {"name": "vit"}
    assert "surgery=vit does not take surgery.kernel_size=3, surgery.out_policy=crop; dropped" in caplog.text
    cvt = compose(["experiment=paper_grid", "surgery=cvt_proj"]).surgery  # takes kernel_size, not out_policy
    assert cvt.kernel_size == 3 and "out_policy" not in cvt
    assert compose(["experiment=paper_grid"]).surgery.out_policy == "crop"  # the variant it was written for keeps all
    _build_on_meta(resolve(compose(["experiment=paper_grid", "surgery=castling"])))
