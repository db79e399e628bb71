"""The 4f speed model: pass counts on hand-checkable cases, timing, presets, and `convshare speed`."""
import json

import pytest

from lightning_convshare.cli import main
from lightning_convshare.optics.device import DEVICES, Camera, FilterPlane, FourFDevice, Slm, create_device
from lightning_convshare.optics.speed import best_arrangement, filter_extent, pass_time


def device(slm=(64, 64), filt=(64, 64), camera=(64, 64), hz=(1000.0, 1000.0, 1000.0), modulation="complex"):
    return FourFDevice("small", slm=Slm(resolution=slm, hz=hz[0]), filter=FilterPlane(modulation=modulation, resolution=filt, hz=hz[1]),
                       camera=Camera(resolution=camera, hz=hz[2]))


SMALL = device()


def test_valid_whole_map_layer_counts_tiles_and_kernel_copies():
    # 8x8 maps, whole-map 8x8 kernels (1 output pixel per map): no guard, 8x8 = 64 maps per plane.
    # One kernel copy needs a footprint of n*8 + 7 camera pixels per axis: with 64 pixels only n = 7 maps
    # fit beside a second copy (2 * (7*8 + 7) = 126 > 64), so copies never pay off here.
    one = best_arrangement("l", (8, 8), (0, 0, 0, 0), (8, 8), (1, 1), (1, 1), kernels=10, tiles=128, groups=1, device=SMALL)
    assert (one.tiles_per_pass, one.kernels_per_pass) == (49, 1)  # 7x7: the footprint 7*8+7 = 63 fits the camera
    assert one.passes == 3 * 10 * 4  # ceil(128 / 49) blocks x 10 kernels x 4 sign passes
    # a camera and filter 4x larger hold 4x4 copies of a 7x7 block: kernels tile in the filter
    wide = device(filt=(256, 256), camera=(256, 256))
    many = best_arrangement("l", (8, 8), (0, 0, 0, 0), (8, 8), (1, 1), (1, 1), kernels=10, tiles=128, groups=1, device=wide)
    assert many.kernels_per_pass == 10 and many.passes == 3 * 1 * 4
    # a phase-only filter holds a value per 2 pixels along its columns: half the copies side by side
    assert filter_extent(device(filt=(256, 256), modulation="phase")) == (256, 128)
    assert filter_extent(device(filt=(256, 255), modulation="amplitude")) == (256, 85)
    half = best_arrangement("l", (8, 8), (0, 0, 0, 0), (8, 8), (1, 1), (1, 1), kernels=10, tiles=128, groups=1,
                            device=device(filt=(256, 256), camera=(256, 256), modulation="phase"))
    assert half.kernels_per_pass < many.kernels_per_pass


def test_same_padding_costs_a_guard_band_and_non_shared_layers_pay_per_token():
    # 6x8 maps, 3x3 same: guard 1 and 1-pixel margins -> (64 - 2 + 1) // 7 = 9 rows, 63 // 9 = 7 columns
    shared = best_arrangement("l", (6, 8), (1, 1, 1, 1), (3, 3), (1, 1), (6, 8), kernels=3, tiles=500, groups=1,
                              device=SMALL, sign_passes=1)
    assert shared.tiles_per_pass == 63 and shared.passes == 8 * 3
    nonshared = best_arrangement("l", (6, 8), (1, 1, 1, 1), (3, 3), (1, 1), (6, 8), kernels=3, tiles=20, groups=25,
                                 device=SMALL, sign_passes=1)
    # one block of 20 maps per token position; 4 rows x 5 columns leave room for 2 kernel copies
    # (footprint 4*6 + 3 + 2 = 29 rows, twice 58 <= 64): ceil(3 / 2) filter settings
    assert (nonshared.tiles_per_pass, nonshared.kernels_per_pass) == (20, 2)
    assert nonshared.passes == 25 * 2


def test_pass_time_pipelines_the_faster_loop():
    dev = device(hz=(100.0, 1000.0, 1000.0))
    latency = 1 / 100 + 2 / 1000
    # 1 input block, 8 filter settings: the SLM holds still, the filter and camera run at 1 kHz
    assert pass_time(1, 8, dev) == pytest.approx(8 / 1000 + latency)
    # 8 blocks x 8 settings: filter inner at 1 kHz, the slow SLM changes every 8th pass (800 Hz) -> 800 Hz
    assert pass_time(8, 8, dev) == pytest.approx(64 / 800 + latency)


@pytest.mark.parametrize("encoding, passes", [("pseudo_negativity", 4), ("input_offset", 2), ("kernel_offset", 2), ("offset", 1)])
def test_a_hand_sized_layer_on_a_preset_takes_its_passes_times_the_frame_time(encoding, passes):
    """dmd-scmos: the ORCA camera (100 frames/s) is the slowest device; a 96x96 map with a whole-map kernel
    fits the 768x1024 DMD 8 x 10 times with its footprint (2 copies would need 2 x (8*96 + 95) > 768 rows),
    so 160 maps take 2 input blocks, 3 kernels 3 filter settings, each the encoding's passes."""
    from lightning_convshare.optics.speed import layer_passes  # noqa: F401  (the model-level entry, same arithmetic)

    dmd = DEVICES.get("dmd-scmos")
    lay = best_arrangement("l", (96, 96), (0, 0, 0, 0), (96, 96), (1, 1), (1, 1), kernels=3, tiles=160, groups=1,
                           device=dmd, sign_passes=passes)
    assert (lay.tiles_per_pass, lay.kernels_per_pass) == (80, 1)
    hand = 2 * 3 * passes  # input blocks x kernels x passes
    assert lay.passes == hand
    frame = 1 / 100  # the camera's frame time; the DMDs (1.9 kHz) keep pace
    latency = 2 / 1900 + 1 / 100
    assert lay.seconds == pytest.approx(hand * frame + latency)


def test_every_preset_documents_its_sources_and_old_names_still_resolve():
    for name in DEVICES.names():
        dev = DEVICES.get(name)
        assert dev.source and min(dev.slm.hz, dev.filter.hz, dev.camera.hz) > 0
    assert DEVICES.get("dmd-10khz") is DEVICES.get("paper") and DEVICES.get("lcos-60hz") is DEVICES.get("lcos-scmos")
    assert {"paper", "dmd-scmos", "lcos-scmos", "lcos-cmos", "miscuglio2020", "dmd-23khz"} <= set(DEVICES.names())
    changed = create_device("paper").replace({"camera": {"hz": 5000.0}, "slm": {"resolution": "100x200"}})
    assert changed.slm.resolution == (100, 200) and changed.camera.hz == 5000


def test_convshare_speed_prints_the_layer_table_and_the_speed_up(capsys, tmp_path):
    out = tmp_path / "speed.json"
    argv = ["speed", "--rounds", "1", "--batch-size", "4", "--json", str(out), "model.depth=1", "model.embed_dim=32",
            "model.num_heads=2", "surgery.padding=same", "surgery.kernel_size=3"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "blocks.0.attn.qkv" in text and "speed-up" in text
    result = json.loads(out.read_text())["configured"]
    assert len(result["layers"]) == 4 and result["optical_s"] > 0 and result["speedup"] > 0
    qkv = result["layers"][0]  # 68 small maps leave room for all 3 kernels side by side: 1 setting x 4 sign passes
    assert (qkv["tiles_per_pass"], qkv["kernels_per_pass"], qkv["passes"]) == (68, 3, 4)


def test_convshare_speed_takes_a_device_and_an_encoding(capsys, tmp_path):
    out = tmp_path / "speed.json"
    argv = ["speed", "--rounds", "1", "--batch-size", "4", "--device", "lcos-scmos", "--encoding", "all", "--json", str(out),
            "model.depth=1", "model.embed_dim=32", "model.num_heads=2", "surgery.padding=same", "surgery.kernel_size=3"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "lcos-scmos" in text and "offset (" in text and "pseudo_negativity (" in text  # a summary per encoding
    results = json.loads(out.read_text())
    passes = {key.split(", ")[-1]: r["layers"][0]["passes"] for key, r in results.items()}
    assert passes["pseudo_negativity"] == 4 * passes["offset"] == 2 * passes["input_offset"] == 2 * passes["kernel_offset"]
    # --preset is the old name of --device; --device cpu names the electronic device as before
    assert main(["speed", "--rounds", "1", "--batch-size", "2", "--preset", "dmd-23khz", "--device", "cpu", "--sign-passes", "2",
                 "model.depth=1", "model.embed_dim=32", "model.num_heads=2"]) == 0
    text = capsys.readouterr().out
    assert "dmd-23khz" in text and "input_offset" in text
    assert main(["speed", "--list-devices"]) == 0
    assert "miscuglio2020" in capsys.readouterr().out


def test_convshare_speed_rejects_models_without_convshare_layers(capsys):
    assert main(["speed", "surgery=vit", "--rounds", "1"]) == 2
    assert "needs ConvShare layers" in capsys.readouterr().err
