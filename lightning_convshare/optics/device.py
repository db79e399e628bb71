"""A 4f system in physical units: one description for the noise model and the speed model.

A :class:`FourFDevice` describes the hardware the way a datasheet does (the camera as in the EMVA 1288
camera model): the input SLM (type, resolution, pixel pitch, grey levels, frame rate at that bit
depth), the Fourier-plane filter (modulation ``complex`` | ``amplitude`` | ``phase``, levels,
resolution, frame rate), the camera (resolution, full-well capacity, read noise, quantum efficiency,
bit depth, dark current, frame rate) and the light budget. Presets live in one registry,
:data:`DEVICES` (:mod:`~lightning_convshare.optics.presets`, each with its sources).

From it come

* the **noise stages** of the physical backends, in the normalised units they use
  (:meth:`FourFDevice.noise_stages`, arithmetic in :meth:`FourFDevice.conversion` and docs/optics.md):
  ``e_fs = min(full_well, qe * efficiency * photons)`` photo-electrons at the camera's full scale
  (the brightest read pixel; ``full_well`` when the light budget is not given, i.e. the exposure fills
  the well), ``shot.photons = e_fs``, ``read.sigma = sqrt(read_noise^2 + dark_current * exposure) / e_fs``,
  ``adc.bits = bits`` over ``adc.range = full_well / e_fs`` full scales (the ADC spans the well), and
  ``slm.input_levels = slm.levels``;
* the **filter model** (:mod:`~lightning_convshare.optics.fourier_plane`): modulation and levels;
* the **speed model**'s resolutions and frame rates (:mod:`~lightning_convshare.optics.speed`).

Single numbers are overridable: ``create_device({"preset": "lcos-scmos", "camera": {"bits": 12}})``,
in a config ``optics.device.camera.bits=12``.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from ..errors import ConfigError
from ..registry import Registry

__all__ = [
    "Camera",
    "DEVICES",
    "FilterPlane",
    "FourFDevice",
    "Light",
    "MODULATIONS",
    "Slm",
    "create_device",
    "register_device",
]

MODULATIONS = ("complex", "amplitude", "phase")
PLANCK = 6.62607015e-34  # J s
LIGHT_SPEED = 299_792_458.0  # m / s


def _resolution(value: Any, what: str) -> tuple[int, int]:
    """``[H, W]``, ``"HxW"`` or an int (square) -> ``(H, W)``."""
    try:
        if isinstance(value, str):
            h, w = (int(p) for p in value.lower().split("x"))
        elif isinstance(value, (int, float)):
            h = w = int(value)
        else:
            h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}={value!r} must be [H, W] or 'HxW', e.g. [1080, 1920]") from None
    if min(h, w) < 1:
        raise ConfigError(f"{what}={value!r} must be positive")
    return h, w


def _positive(value: Any, what: str, allow_none: bool = False, cast=float) -> Any:
    if value is None and allow_none:
        return None
    try:
        v = cast(float(value)) if cast is int else cast(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}={value!r} is not a number") from None
    if not v > 0:
        raise ConfigError(f"{what}={value!r} must be positive" + (" (or null)" if allow_none else ""))
    return v


def _levels(value: Any, what: str) -> Optional[int]:
    v = _positive(value, what, allow_none=True, cast=int)
    if v is not None and v < 2:
        raise ConfigError(f"{what}={value!r} must be at least 2 (or null for continuous values)")
    return v


@dataclass(frozen=True)
class Slm:
    """The input spatial light modulator.

    Attributes:
        type: ``dmd`` (micromirrors: binary, grey levels by pulse-width modulation), ``lcos`` (liquid
            crystal: analogue levels) or ``ideal``.
        resolution: pixels ``(H, W)``.
        pitch_um: pixel pitch in micrometres (informational; the wave backend takes its own).
        levels: grey levels at the frame rate ``hz`` (``None``: continuous values).
        hz: frame rate at that bit depth.
    """

    type: str = "ideal"
    resolution: tuple[int, int] = (1080, 1920)
    pitch_um: Optional[float] = None
    levels: Optional[int] = None
    hz: float = 10_000.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "resolution", _resolution(self.resolution, "slm.resolution"))
        object.__setattr__(self, "pitch_um", _positive(self.pitch_um, "slm.pitch_um", allow_none=True))
        object.__setattr__(self, "levels", _levels(self.levels, "slm.levels"))
        object.__setattr__(self, "hz", _positive(self.hz, "slm.hz"))


@dataclass(frozen=True)
class FilterPlane:
    """The Fourier-plane filter (its model: :mod:`~lightning_convshare.optics.fourier_plane`).

    Attributes:
        type: device type (``dmd``, ``lcos``, ``ideal``), informational.
        modulation: ``complex`` (amplitude and phase: the ideal matched filter when levels are ``None``),
            ``amplitude`` (amplitude-only, Burckhardt encoding: three pixels per value) or ``phase``
            (phase-only, double-phase encoding: two pixels per value).
        levels: amplitude levels (``complex``, ``amplitude``) or phase levels (``phase``); ``None``: continuous.
        phase_levels: phase levels of a ``complex`` filter (``None``: continuous).
        resolution: pixels ``(H, W)``.
        hz: frame rate (at the bit depth of ``levels``).
    """

    type: str = "ideal"
    modulation: str = "complex"
    levels: Optional[int] = None
    phase_levels: Optional[int] = None
    resolution: tuple[int, int] = (1080, 1920)
    hz: float = 10_000.0

    def __post_init__(self) -> None:
        if self.modulation not in MODULATIONS:
            raise ConfigError(f"filter.modulation={self.modulation!r} is not one of {list(MODULATIONS)}")
        object.__setattr__(self, "levels", _levels(self.levels, "filter.levels"))
        object.__setattr__(self, "phase_levels", _levels(self.phase_levels, "filter.phase_levels"))
        if self.phase_levels is not None and self.modulation != "complex":
            raise ConfigError(f"filter.phase_levels applies to a complex filter; a {self.modulation} filter has only `levels`")
        object.__setattr__(self, "resolution", _resolution(self.resolution, "filter.resolution"))
        object.__setattr__(self, "hz", _positive(self.hz, "filter.hz"))


@dataclass(frozen=True)
class Camera:
    """The camera, in the EMVA 1288 model's terms.

    Attributes:
        resolution: pixels ``(H, W)``.
        full_well: saturation capacity in electrons (``None``: an ideal camera without shot noise).
        read_noise: temporal dark noise in electrons rms.
        qe: quantum efficiency at the wavelength used (0..1].
        bits: ADC bit depth (``None``: no quantisation).
        dark_current: electrons per pixel per second.
        hz: frame rate at full resolution.
    """

    resolution: tuple[int, int] = (1080, 1920)
    full_well: Optional[float] = None
    read_noise: float = 0.0
    qe: float = 1.0
    bits: Optional[int] = None
    dark_current: float = 0.0
    hz: float = 10_000.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "resolution", _resolution(self.resolution, "camera.resolution"))
        object.__setattr__(self, "full_well", _positive(self.full_well, "camera.full_well", allow_none=True))
        for what in ("read_noise", "dark_current"):
            v = getattr(self, what)
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise ConfigError(f"camera.{what}={v!r} is not a number") from None
            if v < 0:
                raise ConfigError(f"camera.{what}={v} must be >= 0")
            object.__setattr__(self, what, v)
        qe = _positive(self.qe, "camera.qe")
        if qe > 1:
            raise ConfigError(f"camera.qe={qe} is a fraction (0, 1], e.g. 0.82")
        object.__setattr__(self, "qe", qe)
        bits = _positive(self.bits, "camera.bits", allow_none=True, cast=int)
        if bits is not None and bits > 24:
            raise ConfigError(f"camera.bits={bits} must be between 1 and 24 (or null)")
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "hz", _positive(self.hz, "camera.hz"))
        if self.full_well is None and (self.read_noise or self.bits or self.dark_current):
            raise ConfigError("a camera with read noise, dark current or an ADC needs its full_well (electrons) "
                              "to express them in full-scale units")


@dataclass(frozen=True)
class Light:
    """The light budget: how many photons reach the camera's full-scale pixel per frame.

    Attributes:
        photons: photons per frame at the brightest read pixel through a lossless (complex, unquantised)
            filter; ``None`` (and no ``power_w``): enough light to fill the well at the exposure used.
        power_w: or the source power in watts, spread evenly over the SLM's pixels; a full-scale camera
            pixel receives what one full-scale SLM pixel sends (unit magnification, filter transmission 1).
        wavelength_nm: wavelength of the source.
        exposure_s: exposure per frame (``None``: one camera frame, ``1 / camera.hz``).
    """

    photons: Optional[float] = None
    power_w: Optional[float] = None
    wavelength_nm: float = 532.0
    exposure_s: Optional[float] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "photons", _positive(self.photons, "light.photons", allow_none=True))
        object.__setattr__(self, "power_w", _positive(self.power_w, "light.power_w", allow_none=True))
        object.__setattr__(self, "wavelength_nm", _positive(self.wavelength_nm, "light.wavelength_nm"))
        object.__setattr__(self, "exposure_s", _positive(self.exposure_s, "light.exposure_s", allow_none=True))
        if self.photons is not None and self.power_w is not None:
            raise ConfigError("give the light budget as light.photons or as light.power_w (+ exposure), not both")


PARTS = {"slm": Slm, "filter": FilterPlane, "camera": Camera, "light": Light}
#: override values that clear an optional field (``null`` keeps the preset's value)
UNSET = ("off", "continuous", "unlimited", "ideal")


@dataclass(frozen=True)
class FourFDevice:
    """One 4f system: SLM, Fourier-plane filter, camera and light budget (see the module docstring).

    Attributes:
        name: preset name.
        slm, filter, camera, light: the parts.
        source: where the numbers come from (datasheets, papers; what is assumed).
    """

    name: str
    slm: Slm = field(default_factory=Slm)
    filter: FilterPlane = field(default_factory=FilterPlane)
    camera: Camera = field(default_factory=Camera)
    light: Light = field(default_factory=Light)
    source: str = ""

    # --- overrides ------------------------------------------------------------------------
    def replace(self, overrides: Optional[Mapping[str, Any]] = None) -> FourFDevice:
        """A copy with single numbers replaced: ``{"camera": {"bits": 12}, "slm": {"hz": 500}}``;
        ``None`` values keep the preset's value, ``"off"`` (or ``continuous``, ``unlimited``) clears an
        optional one (``{"filter": {"levels": "continuous"}}``, ``{"camera": {"bits": "off"}}``).

        Raises:
            ConfigError: unknown parts or fields (lists the known ones), bad values.
        """
        changes: dict[str, Any] = {}
        for part, values in (overrides or {}).items():
            if part in ("name", "source"):
                if values is not None:
                    changes[part] = str(values)
                continue
            if part not in PARTS:
                raise ConfigError(f"a 4f device has no part {part!r}; its parts are {list(PARTS)} (and name, source)")
            if values is None:
                continue
            if not isinstance(values, Mapping):
                raise ConfigError(f"device.{part} must be a mapping of fields, e.g. {{bits: 12}}; got {values!r}")
            known = [f.name for f in dataclasses.fields(PARTS[part])]
            unknown = sorted(set(values) - set(known))
            if unknown:
                raise ConfigError(f"device.{part} has no field(s) {unknown}; its fields are {known}")
            set_ = {k: (None if isinstance(v, str) and v.lower() in UNSET else v) for k, v in values.items() if v is not None}
            if set_:
                changes[part] = dataclasses.replace(getattr(self, part), **set_)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # --- conversions ------------------------------------------------------------------------
    @property
    def exposure_s(self) -> float:
        """Exposure per frame: ``light.exposure_s`` or one camera frame."""
        return self.light.exposure_s or 1.0 / self.camera.hz

    @property
    def photons_at_full_scale(self) -> Optional[float]:
        """Photons per frame at the camera's full-scale pixel through a lossless filter (``None``: unlimited).

        From ``light.power_w``: ``power * exposure * wavelength / (h c) / (SLM pixels)``.
        """
        if self.light.photons is not None:
            return self.light.photons
        if self.light.power_w is None:
            return None
        per_second = self.light.power_w * self.light.wavelength_nm * 1e-9 / (PLANCK * LIGHT_SPEED)
        return per_second * self.exposure_s / math.prod(self.slm.resolution)

    def full_scale_electrons(self, efficiency: float = 1.0) -> Optional[float]:
        """Photo-electrons at the camera's full scale: ``min(full_well, qe * efficiency * photons)``.

        Args:
            efficiency: the filter encoding's light efficiency (1 for a complex or phase-only filter).

        Returns:
            ``None`` for an ideal camera (no full well) without a light budget: no shot noise.
        """
        photons = self.photons_at_full_scale
        collected = None if photons is None else self.camera.qe * efficiency * photons
        if self.camera.full_well is None:
            return collected
        return self.camera.full_well if collected is None else min(self.camera.full_well, collected)

    def conversion(self, efficiency: float = 1.0) -> dict[str, Optional[float]]:
        """The numbers behind :meth:`noise_stages`, for reports and docs.

        Returns:
            ``electrons`` (``e_fs``), ``read_electrons`` (``sqrt(read^2 + dark * exposure)``),
            ``read_sigma`` (that over ``e_fs``), ``adc_range`` (``full_well / e_fs``), ``adc_step``
            (full-scale units: ``adc_range / (2^bits - 1)``), ``exposure_s``, ``photons``.
        """
        e_fs = self.full_scale_electrons(efficiency)
        read_e = math.sqrt(self.camera.read_noise**2 + self.camera.dark_current * self.exposure_s)
        adc_range = None if e_fs is None or self.camera.full_well is None else self.camera.full_well / e_fs
        bits = self.camera.bits
        return {
            "photons": self.photons_at_full_scale,
            "exposure_s": self.exposure_s,
            "electrons": e_fs,
            "read_electrons": read_e,
            "read_sigma": None if e_fs is None else read_e / e_fs,
            "adc_range": adc_range,
            "adc_step": None if bits is None or adc_range is None else adc_range / (2**bits - 1),
        }

    def noise_stages(self, efficiency: float = 1.0) -> list[dict[str, Any]]:
        """Noise-stage configs in the backends' normalised units (see the module docstring), in the
        order they act: ``slm`` (input grey levels), ``shot``, ``read`` (with dark current), ``adc``.

        Args:
            efficiency: the filter encoding's light efficiency.
        """
        c = self.conversion(efficiency)
        stages: list[dict[str, Any]] = []
        if self.slm.levels is not None:
            stages.append({"name": "slm", "input_levels": self.slm.levels, "kernel_levels": None})
        if c["electrons"] is not None:
            stages.append({"name": "shot", "photons": c["electrons"]})
            if c["read_sigma"]:
                stages.append({"name": "read", "sigma": c["read_sigma"]})
            if self.camera.bits is not None:
                stages.append({"name": "adc", "bits": self.camera.bits, "range": c["adc_range"]})
        return stages

    def describe(self) -> str:
        s, f, c = self.slm, self.filter, self.camera

        def res(r):
            return f"{r[0]}x{r[1]}"

        def lv(n):
            return "continuous" if n is None else f"{n} levels"

        well = "ideal" if c.full_well is None else (f"{c.full_well:,.0f} e- well, {c.read_noise:g} e- read, "
                                                    f"QE {c.qe:g}, {c.bits or '-'} bit")
        return (f"{self.name}: SLM {s.type} {res(s.resolution)} {lv(s.levels)} @ {s.hz:,.0f} Hz | filter {f.type} "
                f"{f.modulation} {res(f.resolution)} {lv(f.levels)} @ {f.hz:,.0f} Hz | camera {res(c.resolution)} "
                f"{well} @ {c.hz:,.0f} Hz")


DEVICES: Registry[FourFDevice] = Registry("4f device")


def register_device(device: FourFDevice, *aliases: str) -> FourFDevice:
    """Register a device preset under its name (and any aliases)."""
    for name in (device.name, *aliases):
        DEVICES.register(name)(device)
    return device


def create_device(spec: Any) -> Optional[FourFDevice]:
    """A device from a preset name, ``{preset: name, <part>: {<field>: value}}`` (overrides on the preset;
    ``null`` values keep it), a full description without ``preset``, or a :class:`FourFDevice`.

    Raises:
        UnknownNameError: an unknown preset (lists the available ones).
        ConfigError: unknown parts or fields, bad values.
    """
    if spec is None or isinstance(spec, FourFDevice):
        return spec
    if isinstance(spec, str):
        return DEVICES.get(spec)
    if not isinstance(spec, Mapping):
        raise ConfigError(f"a 4f device is a preset name or a mapping {{preset: name, camera: {{bits: 12}}}}; got {spec!r}")
    options = dict(spec)
    preset = options.pop("preset", None)
    base = DEVICES.get(preset) if preset is not None else FourFDevice(str(options.get("name") or "custom"))
    return base.replace(options)


from . import presets  # noqa: E402,F401  (registers the presets in DEVICES)
