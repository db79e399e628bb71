"""4f device presets from datasheets and papers, one registry (:data:`~lightning_convshare.optics.device.DEVICES`).

Every number says where it comes from; where a value is assumed (not published for that system, or
quoted from memory of a datasheet that could not be fetched here), the comment says so. Units: pixels
``(H, W)``, micrometres, frames per second, electrons, electrons per pixel per second.

Grey levels on a DMD are pulse-width modulated binary frames. A camera integrates *intensity* over
those frames, so for coherent light the grey level is exact only where a pixel is fully on or off
(``levels: 2``); the 8-bit DMD presets model ideal grey levels at the 8-bit frame rate, an optimistic
assumption (docs/optics.md, "Devices"). For strictly binary patterns set
``optics.device.slm.levels=2 optics.device.slm.hz=32552``.
"""
from __future__ import annotations

from .device import Camera, FilterPlane, FourFDevice, Light, Slm, register_device

__all__ = ["DEFAULT_DEVICE"]

#: the preset of ``conf/optics/optical.yaml``
DEFAULT_DEVICE = "lcos-scmos"

# --- cameras ------------------------------------------------------------------------------------
# Hamamatsu ORCA-Flash4.0 V3 (C13440-20CU) scientific CMOS, datasheet: 2048 x 2048 pixels of 6.5 um,
# full-well capacity 30,000 e-, read noise 1.6 e- rms (1.4 e- median, standard scan), 16-bit output,
# QE about 82 % near 550 nm, 100 frames/s at full resolution (Camera Link). Dark current: assumed
# 0.06 e-/pixel/s (the datasheet's order for the cooled sensor, quoted from memory; at a 10 ms
# exposure it adds 6e-4 e- and does not matter).
ORCA_FLASH4_V3 = Camera(resolution=(2048, 2048), full_well=30_000, read_noise=1.6, qe=0.82, bits=16,
                        dark_current=0.06, hz=100)

# Basler ace acA1920-155um (Sony IMX174 global-shutter CMOS), EMVA 1288 data sheet: 1920 x 1200 pixels
# of 5.86 um, saturation capacity about 32,000 e-, temporal dark noise about 6.5 e- (6-7 e-), 12-bit ADC,
# QE about 0.70 at 545 nm (approximate), 155 frames/s (the model's nominal rate). Dark current: assumed
# 10 e-/pixel/s (uncooled CMOS order of magnitude; 0.06 e- per 6.5 ms frame).
BASLER_IMX174 = Camera(resolution=(1200, 1920), full_well=32_000, read_noise=6.5, qe=0.70, bits=12,
                       dark_current=10.0, hz=155)

# --- modulators ---------------------------------------------------------------------------------
# Texas Instruments DLP7000 (0.7" XGA DMD, with the DLPC410 controller), datasheet: 1024 x 768 mirrors of
# 13.68 um; binary patterns up to 32,552 Hz, 8-bit grey levels at about 1,900 Hz.
DLP7000_8BIT = dict(type="dmd", resolution=(768, 1024), hz=1_900.0)

# Holoeye PLUTO-2 (PLUTO-2.1 VIS) phase-only LCoS, datasheet: 1920 x 1080 pixels of 8.0 um, 8-bit
# (256 levels) addressing, 60 Hz frame rate. As the input SLM it modulates amplitude between crossed
# polarisers (256 grey levels assumed uniform in amplitude; a real polariser gives cos^2 steps).
PLUTO_2 = dict(type="lcos", resolution=(1080, 1920), hz=60.0)


register_device(FourFDevice(
    "paper",
    # The ConvShareViT paper (Ibadulla, Chen, Reyes-Aldasoro, arXiv 2504.11517) estimates "up to 3.04x
    # faster inference than GPU-based systems" without device parameters that could be retrieved here.
    # Reconstructed (docs/optics.md, "Speed model"): the fastest published 4f hardware, DMD rates of
    # Miscuglio et al. 2020 (10 kHz) on 1920 x 1080 planes for SLM, filter and camera, with the ideal
    # system the paper assumes: continuous values, a complex (amplitude and phase) filter, a noise-free
    # camera keeping pace. All of it an assumption; formerly the speed preset `dmd-10khz`.
    slm=Slm(type="dmd", resolution=(1080, 1920), levels=None, hz=10_000.0),
    filter=FilterPlane(type="ideal", modulation="complex", resolution=(1080, 1920), hz=10_000.0),
    camera=Camera(resolution=(1080, 1920), full_well=None, hz=10_000.0),
    light=Light(),
    source="ConvShareViT paper's assumed setting as reconstructed here (arXiv 2504.11517; no device parameters "
           "published): 1080x1920 planes at 10 kHz (Miscuglio et al. 2020's DMD rate) for SLM, filter and camera, "
           "ideal complex filter, continuous levels, noise-free camera (assumed)",
), "dmd-10khz")

register_device(FourFDevice(
    "dmd-scmos",
    # A DMD + scientific sCMOS lab system: TI DLP7000 DMDs as input SLM and as amplitude-only Fourier
    # filter (both 8-bit at 1.9 kHz: grey levels by PWM, see the module docstring), ORCA-Flash4.0 V3
    # camera (the bottleneck at 100 frames/s). Light: enough to fill the well in 10 ms (assumed; 1 mW at
    # 532 nm over the DMD gives about 3e7 photons per pixel per frame).
    slm=Slm(**DLP7000_8BIT, pitch_um=13.68, levels=256),
    filter=FilterPlane(**DLP7000_8BIT, modulation="amplitude", levels=256),
    camera=ORCA_FLASH4_V3,
    light=Light(),
    source="TI DLP7000 datasheet (1024x768, 13.68 um; 8-bit grey at ~1,900 Hz, binary 32,552 Hz) for input SLM and "
           "amplitude-only filter; Hamamatsu ORCA-Flash4.0 V3 datasheet (2048x2048, 30,000 e- full well, 1.6 e- rms, "
           "QE 0.82, 16 bit, 100 fps); dark current and light budget assumed",
))

register_device(FourFDevice(
    "lcos-scmos",
    # An LCoS + scientific sCMOS lab system: Holoeye PLUTO-2 as amplitude input SLM and as phase-only
    # Fourier filter (double-phase encoding of the complex spectrum, 256 phase levels), ORCA-Flash4.0 V3
    # camera. The default of `optics=optical`. Formerly the speed preset `lcos-60hz`.
    slm=Slm(**PLUTO_2, pitch_um=8.0, levels=256),
    filter=FilterPlane(**PLUTO_2, modulation="phase", levels=256),
    camera=ORCA_FLASH4_V3,
    light=Light(),
    source="Holoeye PLUTO-2 datasheet (1920x1080, 8 um, 8-bit, 60 Hz) for input SLM and phase-only filter; "
           "Hamamatsu ORCA-Flash4.0 V3 datasheet (2048x2048, 30,000 e- full well, 1.6 e- rms, QE 0.82, 16 bit, "
           "100 fps); dark current and light budget assumed",
), "lcos-60hz")

register_device(FourFDevice(
    "lcos-cmos",
    # An LCoS + machine-vision CMOS system: PLUTO-2 input and phase-only filter as above, a Basler
    # acA1920-155um (Sony IMX174) camera: 12 bits, 4x the read noise of the sCMOS.
    slm=Slm(**PLUTO_2, pitch_um=8.0, levels=256),
    filter=FilterPlane(**PLUTO_2, modulation="phase", levels=256),
    camera=BASLER_IMX174,
    light=Light(),
    source="Holoeye PLUTO-2 datasheet (1920x1080, 8 um, 8-bit, 60 Hz) for input SLM and phase-only filter; Basler "
           "acA1920-155um / Sony IMX174 EMVA 1288 data (1920x1200, ~32,000 e- saturation, ~6.5 e- read noise, 12 bit, "
           "QE ~0.70, 155 fps); dark current and light budget assumed",
))

register_device(FourFDevice(
    "miscuglio2020",
    # Miscuglio et al., "Massively parallel amplitude-only Fourier neural network", Optica 7(12):1812
    # (2020): DMDs as input and amplitude-only Fourier filter, binary (1-bit) patterns at about 10 kHz on
    # about 1000 x 1000 pixels. Their filters were learned directly as binary Fourier masks; here a
    # spatial kernel is Burckhardt-encoded onto the binary amplitude filter (this simulator's choice).
    # Camera: assumed to keep pace at 10 kHz on 1000 x 1000 pixels; its noise figures (high-speed CMOS:
    # 16,000 e- full well, 20 e- read noise, 12 bits, QE 0.5) are assumptions, not from the paper.
    slm=Slm(type="dmd", resolution=(1000, 1000), levels=2, hz=10_000.0),
    filter=FilterPlane(type="dmd", modulation="amplitude", levels=2, resolution=(1000, 1000), hz=10_000.0),
    camera=Camera(resolution=(1000, 1000), full_well=16_000, read_noise=20.0, qe=0.5, bits=12, hz=10_000.0),
    light=Light(),
    source="Miscuglio et al., Optica 7(12):1812 (2020): binary DMD input and amplitude-only Fourier filter at ~10 kHz, "
           "~1000x1000 pixels; the camera (keeping pace, 16,000 e-, 20 e- read, 12 bit, QE 0.5) is assumed",
))

register_device(FourFDevice(
    "dmd-23khz",
    # TI DLP9500 (1920 x 1080 mirrors of 10.8 um) datasheet: binary patterns at up to 23,148 Hz, here as
    # input and amplitude-only filter with binary levels (the rate holds for binary frames only). Photron
    # FASTCAM SA-Z datasheet: 1024 x 1024 at about 21,000 frames/s, 12-bit. Its full well (16,000 e-),
    # read noise (20 e-) and QE (0.5) are assumptions. Formerly the speed preset of the same name.
    slm=Slm(type="dmd", resolution=(1080, 1920), pitch_um=10.8, levels=2, hz=23_148.0),
    filter=FilterPlane(type="dmd", modulation="amplitude", levels=2, resolution=(1080, 1920), hz=23_148.0),
    camera=Camera(resolution=(1024, 1024), full_well=16_000, read_noise=20.0, qe=0.5, bits=12, hz=21_000.0),
    light=Light(),
    source="TI DLP9500 datasheet (1920x1080, 10.8 um, binary 23,148 Hz) for input and amplitude-only filter; Photron "
           "FASTCAM SA-Z datasheet (1024x1024 at ~21,000 fps, 12 bit); the camera's full well, read noise and QE assumed",
))
