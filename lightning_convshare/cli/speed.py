"""Estimate a ConvShare model's inference time on a 4f system and its speed-up over this device.

Per ConvShare layer, counts the optical passes under the best arrangement found (token maps tiled on
the SLM with guard bands, kernels tiled in the filter, four pseudo-negative passes), converts them to
time with the 4f device's frame rates, adds the electronic rest of the model (attention products,
softmax, norms, activations, the optical readout arithmetic) *measured* on this machine, and
compares with the whole model measured here with the electronic conv. See docs/optics.md.

examples:
  convshare speed                                    # default model, dmd-10khz device, data batch size
  convshare speed --model vit_tiny --batch-size 32 --preset lcos-60hz
  convshare speed surgery.padding=same surgery.kernel_size=3 --camera-hz 20000
  convshare speed --paper                            # the paper's setting, against its 3.04x headline
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

OVERRIDES = True
PAPER_SPEEDUP = 3.04
#: surgery settings compared under --paper (the paper's valid/same, whole-map/small-kernel families)
PAPER_VARIANTS = {
    "valid, whole-map kernels": [],
    "same, 3x3": ["surgery.padding=same", "surgery.kernel_size=3"],
    "same, 5x5 (fc2 9x9)": ["surgery.padding=same", "surgery.kernel_size={qkv: 5, proj: 5, fc1: 5, fc2: 9}"],
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model config (conf/model/NAME.yaml), e.g. vit_tiny")
    parser.add_argument("--preset", default="dmd-10khz", help="4f device preset (dmd-10khz, lcos-60hz, dmd-23khz)")
    parser.add_argument("--slm", default=None, help="SLM resolution HxW, e.g. 2160x3840")
    parser.add_argument("--slm-hz", type=float, default=None, help="SLM frame rate")
    parser.add_argument("--filter", default=None, help="Fourier-plane filter resolution HxW")
    parser.add_argument("--filter-hz", type=float, default=None, help="filter frame rate")
    parser.add_argument("--camera", default=None, help="camera resolution HxW")
    parser.add_argument("--camera-hz", type=float, default=None, help="camera frame rate")
    parser.add_argument("--sign-passes", type=int, default=4, choices=(1, 2, 4),
                        help="pseudo-negativity passes per kernel (4: signed inputs and kernels)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per inference (default: data.batch_size)")
    parser.add_argument("--device", default=None, help="electronic device to measure on (default: cuda if available)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (median)")
    parser.add_argument("--paper", action="store_true", help="the paper's setting (experiment=paper_speed), several variants")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")


def estimate(
    overrides: list[str], device_4f: Any, batch_size: int | None, device: str, sign_passes: int, rounds: int
) -> dict[str, Any]:
    """Build the configured model, count its passes and measure its electronic parts."""
    import torch

    from ..config import compose
    from ..errors import ConfigError
    from ..models import ModelSpec, create_network
    from ..optics import set_backend
    from ..optics.speed import ElectronicReadout, FreeConv, layer_passes, measure_forward, per_layer_times

    cfg = compose(overrides)
    if cfg.surgery.name != "convshare":
        raise ConfigError(f"the speed model needs ConvShare layers; surgery={cfg.surgery.name} has none (use surgery=convshare)")
    spec = ModelSpec.from_hparams(cfg.model, {**cfg.surgery, "backend": "direct"})
    model = create_network(spec).model.eval().to(device)
    B = int(batch_size or cfg.data.batch_size)
    x = torch.randn(B, int(cfg.model.in_chans), int(cfg.model.img_size), int(cfg.model.img_size), device=device)
    layers = layer_passes(model, B, device_4f, sign_passes)
    conv_times = per_layer_times(model, x, [lay.name for lay in layers], rounds=rounds)
    rest, free = copy.deepcopy(model), copy.deepcopy(model)
    set_backend(rest, ElectronicReadout(sign_passes))
    set_backend(free, FreeConv())
    t = measure_forward({"model": lambda: model(x), "rest": lambda: rest(x), "free": lambda: free(x)}, x.device, rounds=rounds)
    optical = sum(lay.seconds for lay in layers)
    return {
        "model": f"{cfg.model.name} img {cfg.model.img_size} patch {model.patch_embed.patch_size[0]} dim {model.embed_dim} "
                 f"depth {len(model.blocks)} tokens {model.patch_embed.num_patches + model.num_prefix_tokens}",
        "surgery": {k: cfg.surgery[k] for k in ("padding", "kernel_size", "shared")},
        "batch": B, "device": str(x.device), "device_4f": device_4f.describe(), "source": device_4f.source,
        "layers": [{**lay.to_dict(), "electronic_s": conv_times.get(lay.name)} for lay in layers],
        "electronic_model_s": t["model"], "electronic_rest_s": t["rest"], "optical_s": optical,
        "optical_system_s": optical + t["rest"], "speedup": t["model"] / (optical + t["rest"]),
        "electronic_without_convs_s": t["free"], "amdahl_bound": t["model"] / t["free"],
        "speedup_readout_free": t["model"] / (optical + t["free"]),
    }


def _layer_table(result: dict[str, Any]) -> Table:
    table = Table(title=f"4f passes per layer (batch {result['batch']}; {result['device_4f']})")
    for col in ("layer", "map", "kernel", "kernels", "tiles/pass", "kernels/pass", "passes", "optical ms", "electronic ms"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for lay in result["layers"]:
        el = lay["electronic_s"]
        table.add_row(
            lay["name"], "x".join(map(str, lay["map"])) + (" T" if lay["transposed"] else ""),
            "x".join(map(str, lay["kernel"])), str(lay["kernels"]), f"{lay['tiles_per_pass']:,}",
            str(lay["kernels_per_pass"]), f"{lay['passes']:,}", f"{1e3 * lay['seconds']:.3f}",
            "-" if el is None else f"{1e3 * el:.3f}",
        )
    return table


def _summary(result: dict[str, Any]) -> str:
    return (
        f"electronic model on {result['device']}: {1e3 * result['electronic_model_s']:.2f} ms | 4f system: "
        f"optics {1e3 * result['optical_s']:.2f} ms + electronic rest {1e3 * result['electronic_rest_s']:.2f} ms "
        f"= {1e3 * result['optical_system_s']:.2f} ms | [bold]speed-up {result['speedup']:.2f}x[/] | with the readout "
        f"arithmetic done off the host: {result['speedup_readout_free']:.2f}x | bound if optics and readout were free "
        f"(the model without its convs: {1e3 * result['electronic_without_convs_s']:.2f} ms): {result['amdahl_bound']:.2f}x"
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from ..optics.speed import DEVICES

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dev4f = DEVICES.get(args.preset).with_overrides(
        slm=args.slm, slm_hz=args.slm_hz, filter=args.filter, filter_hz=args.filter_hz,
        camera=args.camera, camera_hz=args.camera_hz,
    )
    base = (["experiment=paper_speed"] if args.paper else []) + ([f"model={args.model}"] if args.model else [])
    console = Console()
    if not console.is_terminal:  # keep the table's columns whole in logs and pipes
        console = Console(width=160)
    variants = PAPER_VARIANTS if args.paper else {"configured": []}
    results = {}
    for label, extra in variants.items():
        result = estimate([*base, *extra, *args.overrides], dev4f, args.batch_size, device, args.sign_passes, args.rounds)
        results[label] = result
        console.print(_layer_table(result))
        console.print(f"[bold]{label}[/]: {result['model']}, {result['surgery']}")
        console.print(_summary(result))
    console.print(f"device source: {dev4f.source}")
    if args.paper:
        best = max(results.items(), key=lambda kv: kv[1]["speedup"])
        console.print(
            f"\n[bold]vs the paper:[/] best here {best[1]['speedup']:.2f}x ({best[0]}; "
            f"{best[1]['speedup_readout_free']:.2f}x with the readout off the host, bound {best[1]['amdahl_bound']:.2f}x "
            f"if optics and readout were free) against the paper's 'up to "
            f"{PAPER_SPEEDUP}x faster than a GPU'. Differences: the electronic reference here is {device} (the "
            "paper's was a GPU); every signed layer costs 4 pseudo-negative passes; kernel copies must not overlap "
            "on the camera; each layer pays pipeline latency; the electronic rest, including the readout "
            "arithmetic, is measured, not estimated. See docs/optics.md ('Speed model')."
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0
