"""The 4f device description: presets in physical units -> the noise stages' normalised parameters,
overrides, errors, and every preset through the config (`convshare train optics=optical optics.device=...`)."""
import math

import pytest
import torch

from lightning_convshare.cli import main
from lightning_convshare.config import compose
from lightning_convshare.errors import ConfigError, UnknownNameError
from lightning_convshare.optics import create_backend
from lightning_convshare.optics.device import DEVICES, Camera, FourFDevice, Light, create_device
from lightning_convshare.optics.fourier_plane import FILTER_MODULATIONS

PLANCK, C = 6.62607015e-34, 299_792_458.0


def stages_of(device: FourFDevice, efficiency: float = 1.0) -> dict:
    return {s["name"]: s for s in device.noise_stages(efficiency)}


def test_full_well_read_noise_and_bits_convert_to_full_scale_units():
    """The issue's example: 30,000 e- full well, 1.5 e- read noise, 16 bits, the exposure filling the well."""
    dev = FourFDevice("example", camera=Camera(full_well=30_000, read_noise=1.5, bits=16, hz=100))
    s = stages_of(dev)
    assert s["shot"]["photons"] == 30_000  # photo-electrons at full scale
    assert s["read"]["sigma"] == pytest.approx(1.5 / 30_000) == pytest.approx(5e-5)
    assert s["adc"]["bits"] == 16 and s["adc"]["range"] == 1.0
    assert dev.conversion()["adc_step"] == pytest.approx(1 / 65_535)  # 1.526e-5 of full scale
    # built into a backend: the ADC stage rounds to that step
    backend = create_backend({"name": "optical", "device": dev, "noise": ["device"]})
    adc = backend.stages[-1]
    x = torch.linspace(0, 1, 100_001)
    assert (adc.output(x, None) - x).abs().max() <= 0.5 / 65_535 + 1e-7


@pytest.mark.parametrize("name", sorted(set(DEVICES.names())))
def test_every_preset_converts_to_what_a_hand_computation_gives(name):
    dev = DEVICES.get(name)
    cam = dev.camera
    s = stages_of(dev, FILTER_MODULATIONS.get(dev.filter.modulation).efficiency)
    if cam.full_well is None:  # the paper's ideal camera: no camera noise at all
        assert not {"shot", "read", "adc"} & set(s)
        return
    # no light budget in the presets: the exposure fills the well, e_fs = full well
    assert dev.light.photons is None and dev.light.power_w is None
    assert s["shot"]["photons"] == cam.full_well
    exposure = 1 / cam.hz
    assert s["read"]["sigma"] == pytest.approx(math.sqrt(cam.read_noise**2 + cam.dark_current * exposure) / cam.full_well)
    assert (s["adc"]["bits"], s["adc"]["range"]) == (cam.bits, 1.0)
    assert s.get("slm", {}).get("input_levels") == dev.slm.levels


def test_orca_numbers_by_hand():
    """lcos-scmos's ORCA-Flash4.0 V3: 1.6 e- read noise and 0.06 e-/s dark current in a 10 ms frame."""
    s = stages_of(DEVICES.get("lcos-scmos"))
    assert s["shot"]["photons"] == 30_000
    assert s["read"]["sigma"] == pytest.approx(math.sqrt(1.6**2 + 0.06 * 0.01) / 30_000, rel=1e-12)  # 5.334e-5
    assert s["adc"]["bits"] == 16 and s["slm"]["input_levels"] == 256


def test_a_light_budget_below_the_well_raises_the_noise_and_coarsens_the_adc():
    dev = FourFDevice("dim", camera=Camera(full_well=30_000, read_noise=2.0, qe=0.8, bits=12, hz=1000), light=Light(photons=10_000))
    c = dev.conversion()
    assert c["electrons"] == pytest.approx(8_000)  # qe * photons < full well
    s = stages_of(dev)
    assert s["shot"]["photons"] == pytest.approx(8_000) and s["read"]["sigma"] == pytest.approx(2.0 / 8_000)
    assert s["adc"]["range"] == pytest.approx(30_000 / 8_000)  # the ADC still spans the well
    assert c["adc_step"] == pytest.approx(3.75 / 4_095)
    # an amplitude-only (Burckhardt) filter passes (sinc(1/3)/3)^2 of the light: fewer electrons
    eff = FILTER_MODULATIONS.get("amplitude").efficiency
    assert eff == pytest.approx((math.sin(math.pi / 3) / (math.pi / 3) / 3) ** 2) == pytest.approx(0.0760, abs=1e-4)
    assert stages_of(dev, eff)["shot"]["photons"] == pytest.approx(8_000 * eff)


def test_source_power_and_exposure_give_photons_per_pixel():
    dev = FourFDevice("power", camera=Camera(full_well=1e9, hz=100),
                      light=Light(power_w=1e-9, wavelength_nm=633.0, exposure_s=2e-3))
    dev = dev.replace({"slm": {"resolution": [100, 200]}})
    photons = 1e-9 * 2e-3 * 633e-9 / (PLANCK * C) / (100 * 200)
    assert dev.photons_at_full_scale == pytest.approx(photons)  # about 3.2 photons per pixel per frame
    assert stages_of(dev)["shot"]["photons"] == pytest.approx(photons)  # qe 1, far below the well


def test_single_numbers_override_through_the_config_and_the_old_options_keep_working():
    cfg = compose(["optics=optical", "optics.device.camera.bits=12", "optics.device.filter.levels=16"])
    backend = create_backend(dict(cfg.surgery.backend))
    assert backend.device.name == "lcos-scmos" and backend.device.camera.bits == 12
    assert backend.stages[-1].bits == 12 and backend.filter.levels == 16
    cfg = compose(["optics=optical", "optics.device.preset=dmd-scmos", "optics.device.camera.read_noise=3"])
    backend = create_backend(dict(cfg.surgery.backend))
    assert backend.device.camera.read_noise == 3 and backend.filter.efficiency < 0.1  # Burckhardt
    # a preset by name, and clearing an optional number
    backend = create_backend(dict(compose(["optics=optical", "optics.device=lcos-cmos"]).surgery.backend))
    assert backend.device.name == "lcos-cmos" and backend.stages[-1].bits == 12
    assert create_device({"preset": "lcos-scmos", "filter": {"levels": "continuous"}}).filter.levels is None
    # the old options: an explicit noise list replaces the device's stages, slm_resolution wins over the device's
    cfg = compose(["optics=optical", "optics.noise=[{name: shot, photons: 1e4}, {name: adc, bits: 8}]", "optics.slm_resolution=[64, 64]"])
    backend = create_backend(dict(cfg.surgery.backend))
    assert [type(s).__name__ for s in backend.stages] == ["ShotNoise", "AdcQuantization"]
    assert backend.slm_resolution == (64, 64) and backend.stages[0].photons == 1e4
    # an explicit stage named beside `device` replaces the device's stage of that name, in place
    backend = create_backend({"name": "optical", "device": "lcos-scmos", "noise": ["device", {"name": "shot", "photons": 100}]})
    assert [type(s).__name__ for s in backend.stages] == ["SlmQuantization", "ShotNoise", "ReadNoise", "AdcQuantization"]
    assert backend.stages[1].photons == 100
    # no device: the class defaults are the ideal filter and no noise, as before
    assert create_backend({"name": "optical"}).filter is None and len(create_backend({"name": "optical"}).stages) == 0


def test_bad_device_values_are_clear_errors():
    with pytest.raises(UnknownNameError, match="Did you mean 'lcos-scmos'"):
        create_device("lcos-smos")
    with pytest.raises(ConfigError, match="has no field.*'bitz'.*fields are"):
        create_device({"preset": "paper", "camera": {"bitz": 12}})
    with pytest.raises(ConfigError, match="camera.qe=82.0 is a fraction"):
        create_device({"preset": "lcos-scmos", "camera": {"qe": 82}})
    with pytest.raises(ConfigError, match="modulation='holographic' is not one of"):
        create_device({"preset": "paper", "filter": {"modulation": "holographic"}})
    with pytest.raises(ConfigError, match="needs its full_well"):
        FourFDevice("x", camera=Camera(read_noise=2.0))
    with pytest.raises(ConfigError, match="no device is set"):
        create_backend({"name": "optical", "noise": ["device"]})


TINY = ["data=synthetic", "model.embed_dim=32", "model.depth=1", "model.num_heads=2", "data.batch_size=8",
        "trainer.max_epochs=1", "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1", "logger=none"]


@pytest.mark.parametrize("name", sorted(set(DEVICES.names()) - {"dmd-10khz", "lcos-60hz"}))
def test_every_preset_loads_through_the_config_and_trains_a_step(name, tmp_path):
    """Eager (compile=false) to stay fast; the compiled default is the next test."""
    assert main(["train", "optics=optical", f"optics.device={name}", f"run.dir={tmp_path / name}", *TINY, "optics.compile=false"]) == 0
    assert (tmp_path / name / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_the_default_optical_configuration_trains_a_step_compiled(tmp_path):
    cfg = compose(["optics=optical"])
    assert cfg.optics.compile and cfg.optics.noise == ["device"] and cfg.optics.device.preset == "lcos-scmos"
    assert main(["train", "optics=optical", f"run.dir={tmp_path / 'run'}", *TINY]) == 0
