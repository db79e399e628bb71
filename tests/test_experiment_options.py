"""An experiment's surgery options on top of another variant: dropped when they came from the experiment,
an error when the user typed them; and the surgery files list exactly their variant's options (the rule relies on it)."""
import pytest
from omegaconf import OmegaConf

from lightning_convshare.config import compose, config_dir
from lightning_convshare.errors import ConfigError
from lightning_convshare.surgery import variant_options


@pytest.mark.parametrize("choice", sorted(p.stem for p in (config_dir() / "surgery").glob("*.yaml")))
def test_every_surgery_file_lists_exactly_the_options_of_its_variant(choice):
    surgery = OmegaConf.to_container(compose([f"surgery={choice}"]).surgery)
    assert set(surgery) - {"name"} == set(variant_options(surgery["name"]))


@pytest.mark.parametrize("tokens, message", [
    (["experiment=paper_grid", "surgery=vit", "surgery.kernel_size=3"],
     "unknown config key 'surgery.kernel_size'. surgery=vit takes no options"),
    (["experiment=paper_grid", "surgery=castling", "surgery.out_policy=crop"],
     "unknown config key 'surgery.out_policy'.* surgery=castling takes dw_kernel, aux_softmax"),
])
def test_the_same_options_typed_on_the_command_line_still_fail(tokens, message):
    with pytest.raises(ConfigError, match=message):
        compose(tokens)


def test_an_experiments_options_for_the_variant_in_use_are_kept_and_the_command_line_wins(caplog):
    with caplog.at_level("INFO", logger="lightning_convshare.config"):
        cfg = compose(["experiment=paper_grid", "surgery=convshare_same_k3", "surgery.kernel_size=5"])
    assert (cfg.surgery.padding, cfg.surgery.kernel_size, cfg.surgery.out_policy) == ("same", 5, "crop")
    assert "dropped" not in caplog.text
