"""A checkpoint is data: a file carrying a pickled payload is refused by every command, and the payload never runs."""
import pytest
import torch

from lightning_convshare.cli import main
from lightning_convshare.errors import ConfigError, UnsafeCheckpointError
from lightning_convshare.lit import ConvShareClassifier
from lightning_convshare.models import load_run_checkpoint, trusted_checkpoints
from tests.conftest import TINY

NAME = "vit_tiny_patch16_224"


class Payload:
    """Unpickling it creates ``marker`` (stands for any code an attacker would run)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def poisoned(tmp_path):
    """A checkpoint that looks like ours with a payload inside, and a bare payload."""
    marker = tmp_path / "payload-ran"
    good = {"hyper_parameters": {"model": {"name": NAME, "pretrained": False, **TINY}, "surgery": {"name": "vit"}},
            "state_dict": {}, "extra": Payload(marker)}
    torch.save(good, tmp_path / "poisoned.ckpt")
    torch.save(Payload(marker), tmp_path / "bare.ckpt")
    torch.save({"head.weight": Payload(marker)}, tmp_path / "poisoned.pth")
    run = tmp_path / "run"  # a run directory around the poisoned checkpoint, for attention/robustness
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes((tmp_path / "poisoned.ckpt").read_bytes())
    (run / "config.yaml").write_text("data: {name: synthetic}\n")
    return tmp_path, marker


COMMANDS = {
    "train-init-from": ["train", "init_from={t}/poisoned.ckpt"],
    "train-reference": ["train", "reference.source={t}/poisoned.ckpt", "data=synthetic"],
    "finetune-source": ["finetune", "--source", "{t}/poisoned.ckpt"],
    "finetune-teacher": ["finetune", "--source", "{t}/poisoned.pth", "--teacher", "{t}/poisoned.ckpt"],
    "convert": ["convert", "--checkpoint", "{t}/poisoned.ckpt"],
    "convert-bare": ["convert", "--checkpoint", "{t}/bare.ckpt"],
    "convert-weights": ["convert", "--model", NAME, "--checkpoint", "{t}/poisoned.pth"],
    "attention": ["attention", "{t}/run/checkpoints/last.ckpt"],
    "attention-reference": ["attention", "{t}/run/checkpoints/last.ckpt", "--reference", "{t}/bare.ckpt"],
    "robustness": ["robustness", "{t}/run/checkpoints/last.ckpt", "--noise", "shot", "--levels", "1e3"],
}


@pytest.mark.parametrize("argv", list(COMMANDS.values()), ids=list(COMMANDS))
def test_every_command_refuses_a_pickled_payload_without_running_it(argv, poisoned, capsys):
    tmp, marker = poisoned
    argv = [a.replace("{t}", str(tmp)) for a in argv]
    if argv[0] in ("train", "finetune"):
        argv.append(f"run.root={tmp / 'runs'}")
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "it needs full unpickling, which can run code" in err and "--trust-checkpoints" in err, err
    assert not marker.exists(), "the payload ran"
    assert not (tmp / "runs").exists()


def test_library_loaders_refuse_it_too_and_trust_is_explicit(poisoned):
    tmp, marker = poisoned
    with pytest.raises(UnsafeCheckpointError, match="it names io.open"):
        load_run_checkpoint(tmp / "poisoned.ckpt")
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        ConvShareClassifier.load_from_checkpoint(tmp / "poisoned.ckpt")  # Lightning's loader: torch's weights_only
    assert not marker.exists()
    with trusted_checkpoints():  # what --trust-checkpoints does: the user said the file is theirs
        with pytest.raises(ConfigError, match="do not fit"):  # it loads (so the payload runs); there are no weights
            load_run_checkpoint(tmp / "poisoned.ckpt")
    assert marker.exists()
