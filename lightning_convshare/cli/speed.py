"""Estimate a ConvShare model's inference time on a 4f system and its speed-up over this device.

Per ConvShare layer, counts the optical passes under the best arrangement found (token maps tiled on
the SLM with guard bands, kernels tiled in the filter, the signed-value encoding's passes), converts
them to time with the 4f device's frame rates, adds the electronic rest of the model (attention
products, softmax, norms, activations, the encoding's readout arithmetic) *measured* on this machine,
and compares with the whole model measured here with the electronic conv. See docs/optics.md.

The 4f device is a preset (`--list-devices`), by default the configured `optics.device` (with
`optics=optical`) or `paper`; the encoding likewise (`optics.encoding`, else pseudo_negativity).

examples:
  convshare speed                                    # default model, the paper's device, 4 passes, data batch size
  convshare speed --device lcos-scmos --encoding offset
  convshare speed --encoding all                     # every signed-value encoding side by side
  convshare speed --model vit_tiny --batch-size 32 --device dmd-scmos --camera-hz 400
  convshare speed surgery.padding=same surgery.kernel_size=3 optics=optical
  convshare speed --paper --encoding all             # the paper's setting, against its 3.04x headline
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

OVERRIDES = True
HOSTS = ("cpu", "cuda", "mps")
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model config (conf/model/NAME.yaml), e.g. vit_tiny")
    parser.add_argument("--device", default=None, help="4f device preset (--list-devices; default: optics.device, else paper)")
    parser.add_argument("--preset", default=None, help="the old name of --device")
    parser.add_argument("--encoding", default=None,
                        help="signed-value encoding: pseudo_negativity | input_offset | kernel_offset | offset | all "
                             "(default: optics.encoding, else pseudo_negativity)")
    parser.add_argument("--slm", default=None, help="SLM resolution HxW, e.g. 2160x3840")
    parser.add_argument("--slm-hz", type=float, default=None, help="SLM frame rate")
    parser.add_argument("--filter", default=None, help="Fourier-plane filter resolution HxW")
    parser.add_argument("--filter-hz", type=float, default=None, help="filter frame rate")
    parser.add_argument("--camera", default=None, help="camera resolution HxW")
    parser.add_argument("--camera-hz", type=float, default=None, help="camera frame rate")
    parser.add_argument("--sign-passes", type=int, default=None, choices=(1, 2, 4),
                        help="(old) passes per kernel: 4 pseudo_negativity, 2 input_offset, 1 offset; use --encoding")
    parser.add_argument("--batch-size", type=int, default=None, help="images per inference (default: data.batch_size)")
    parser.add_argument("--host", default=None, help="electronic device to measure on (default: cuda if available)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (median)")
    parser.add_argument("--paper", action="store_true", help="the paper's setting (experiment=paper_speed), several variants")
    parser.add_argument("--list-devices", action="store_true", help="print the 4f device presets and exit")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")


def build_network(cfg: Any, host: str) -> Any:
    """The configured network with ConvShare layers on the electronic conv, in eval mode on ``host``."""
    from ..models import ModelSpec, create_network

    spec = ModelSpec.from_hparams(cfg.model, {**cfg.surgery, "backend": "direct"})
    return create_network(spec).model.eval().to(host)


def _device_4f(name: Any, args: argparse.Namespace) -> Any:
    from ..optics.device import create_device

    def part(**fields: Any) -> dict[str, Any]:
        return {k: v for k, v in fields.items() if v is not None}

    overrides = {"slm": part(resolution=args.slm, hz=args.slm_hz), "filter": part(resolution=args.filter, hz=args.filter_hz),
                 "camera": part(resolution=args.camera, hz=args.camera_hz)}
    return create_device(name).replace(overrides)


def _encodings(args: argparse.Namespace, cfg: Any) -> list[str]:
    from ..optics.signed import SIGNED_ENCODINGS

    if args.sign_passes is not None and args.encoding is None:
        return [{4: "pseudo_negativity", 2: "input_offset", 1: "offset"}[args.sign_passes]]
    name = args.encoding or (cfg.optics.get("encoding") if "optics" in cfg else None) or "pseudo_negativity"
    return SIGNED_ENCODINGS.names() if name == "all" else [str(SIGNED_ENCODINGS.get(name)().name)]


def _layer_table(results: dict[str, dict[str, Any]]) -> Table:
    first = next(iter(results.values()))
    table = Table(title=f"4f passes per layer (batch {first['batch']}; {first['device_4f']})")
    for col in ("layer", "map", "kernel", "kernels", "tiles/pass", "kernels/pass"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for enc in results:
        tag = f" ({enc})" if len(results) > 1 else ""
        table.add_column(f"passes{tag}", justify="right")
        table.add_column(f"optical ms{tag}", justify="right")
    table.add_column("electronic ms", justify="right")
    for i, lay in enumerate(first["layers"]):
        el = lay["electronic_s"]
        cells = [lay["name"], "x".join(map(str, lay["map"])) + (" T" if lay["transposed"] else ""),
                 "x".join(map(str, lay["kernel"])), str(lay["kernels"]), f"{lay['tiles_per_pass']:,}",
                 str(lay["kernels_per_pass"])]
        for result in results.values():
            r = result["layers"][i]
            cells += [f"{r['passes']:,}", f"{1e3 * r['seconds']:.3f}"]
        table.add_row(*cells, "-" if el is None else f"{1e3 * el:.3f}")
    return table


def _summary(result: dict[str, Any]) -> str:
    return (
        f"{result['encoding']} ({result['passes']:,} passes): electronic model on {result['device']}: "
        f"{1e3 * result['electronic_model_s']:.2f} ms | 4f system: optics {1e3 * result['optical_s']:.2f} ms + electronic "
        f"rest {1e3 * result['electronic_rest_s']:.2f} ms = {1e3 * result['optical_system_s']:.2f} ms | [bold]speed-up "
        f"{result['speedup']:.2f}x[/] | with the readout arithmetic done off the host: {result['speedup_readout_free']:.2f}x "
        f"| bound if optics and readout were free (the model without its convs: "
        f"{1e3 * result['electronic_without_convs_s']:.2f} ms): {result['amdahl_bound']:.2f}x"
    )


def _describe_model(cfg: Any, model: Any) -> str:
    tokens = model.patch_embed.num_patches + model.num_prefix_tokens
    return (f"{cfg.model.name} img {cfg.model.img_size} patch {model.patch_embed.patch_size[0]} dim {model.embed_dim} "
            f"depth {len(model.blocks)} tokens {tokens}")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..config import compose
    from ..errors import ConfigError
    from ..optics.device import DEVICES
    from ..optics.estimate import estimate_speed

    console = Console()
    if not console.is_terminal:  # keep the table's columns whole in logs and pipes
        console = Console(width=160)
    if args.list_devices:
        for name in DEVICES.names():
            dev = DEVICES.get(name)
            alias = f" (alias of {dev.name})" if dev.name != name else ""
            console.print(f"[bold]{name}[/]{alias}: {dev.describe()}\n  source: {dev.source}")
        return 0
    for flag, value in (("--batch-size", args.batch_size), ("--rounds", args.rounds)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    host = args.host
    if args.device is not None and (args.device in HOSTS or args.device.startswith("cuda:")):
        log.warning("--device %s: --device names the 4f device now; measuring on %s (use --host)", args.device, args.device)
        host, args.device = host or args.device, None
    args.device = args.device or args.preset
    host = host or ("cuda" if torch.cuda.is_available() else "cpu")
    base = (["experiment=paper_speed"] if args.paper else []) + ([f"model={args.model}"] if args.model else [])
    cfg0 = compose([*base, *args.overrides])
    paper = cfg0.get("speed") if args.paper else None
    variants = {k: list(v) for k, v in paper.variants.items()} if paper else {"configured": []}
    configured = cfg0.optics.get("device") if "optics" in cfg0 else None
    dev4f = _device_4f(args.device or (paper.device if paper else None) or configured or "paper", args)
    results: dict[str, dict[str, Any]] = {}
    for label, extra in variants.items():
        cfg = compose([*base, *extra, *args.overrides])
        if cfg.surgery.name != "convshare":
            raise ConfigError(f"the speed model needs ConvShare layers; surgery={cfg.surgery.name} has none "
                              "(use surgery=convshare)")
        model = build_network(cfg, host)
        B = int(args.batch_size or cfg.data.batch_size)
        x = torch.randn(B, int(cfg.model.in_chans), int(cfg.model.img_size), int(cfg.model.img_size), device=host)
        by_encoding = {enc: estimate_speed(model, x, dev4f, enc, args.rounds) for enc in _encodings(args, cfg)}
        surgery = {k: cfg.surgery[k] for k in ("padding", "kernel_size", "shared")}
        console.print(_layer_table(by_encoding))
        console.print(f"[bold]{label}[/]: {_describe_model(cfg, model)}, {surgery}")
        for enc, result in by_encoding.items():
            console.print(_summary(result))
            key = label if len(by_encoding) == 1 else f"{label}, {enc}"
            results[key] = {"model": _describe_model(cfg, model), "surgery": surgery, **result}
    console.print(f"device source: {dev4f.source}")
    if paper:
        best_label, best = max(results.items(), key=lambda kv: kv[1]["speedup"])
        console.print(
            f"\n[bold]vs the paper:[/] best here {best['speedup']:.2f}x ({best_label}; "
            f"{best['speedup_readout_free']:.2f}x with the readout off the host, bound {best['amdahl_bound']:.2f}x "
            f"if optics and readout were free) against the paper's 'up to {paper.paper_speedup}x faster than a GPU'. "
            f"Differences: the electronic reference here is {host} (the paper's was a GPU); every signed layer costs "
            "the encoding's passes (4 for pseudo-negativity); kernel copies must not overlap on the camera; each layer "
            "pays pipeline latency; the electronic rest, including the readout arithmetic, is measured, not estimated. "
            "See docs/optics.md ('Speed model')."
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0
