"""Training throughput (images/s) of the baseline ViT and the surgery variants, side by side,
and how attention cost grows with the token count (castling linear-angular vs softmax).

All variants share the same composed config (default model and data shapes), are measured in
one process, interleaved round by round (so machine noise hits all of them alike), and the
median over rounds is reported with its ratio to the baseline; on the CPU also the ratio of
process CPU time, the steadier one on a shared machine (it does not count waiting for a core).

``--layers`` adds one ConvShare layer at a time (forward + backward, the default model's batch of
token maps and wider ones): ``nn.Linear`` against ``direct``'s ``gather``, ``matrix`` and ``conv``
implementations, and the one ``impl: auto`` picks (``layers.backend.auto_impl``).

    python bench/throughput.py                      # default model, CPU
    python bench/throughput.py --device cuda --batch-size 256 model.embed_dim=192
    python bench/throughput.py --variants vit,valid_full --no-scaling --layers
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from lightning_convshare.config import compose
from lightning_convshare.models import ModelSpec, create_network

#: name -> surgery overrides, applied on top of conf/surgery/convshare.yaml
VARIANTS: dict[str, dict] = {
    "vit": {"name": "vit"},
    "valid_full": {"padding": "valid", "kernel_size": "full"},
    "valid_k3": {"padding": "valid", "kernel_size": 3, "out_policy": "crop"},
    "same_k3": {"padding": "same", "kernel_size": 3},
    # the same layer through the literal per-token-map conv instead of the dense operator
    "same_k3_conv": {"padding": "same", "kernel_size": 3, "backend": {"name": "direct", "impl": "conv"}},
    "castling": {"name": "castling"},
    "cvt_proj": {"name": "cvt_proj"},
}
SCALING_TOKENS = (64, 256, 1024)


def build(cfg, overrides: dict, device: str) -> torch.nn.Module:
    surgery = {**cfg.surgery, **overrides} if overrides.get("name", "convshare") == "convshare" else overrides
    return create_network(ModelSpec.from_hparams(cfg.model, surgery)).model.to(device).train()


def train_steps(model, opt, x, y, steps: int) -> tuple[float, float]:
    """``(wall, process CPU)`` seconds for ``steps`` forward+backward+AdamW steps."""
    if x.is_cuda:
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0


#: (D_in, D_out, kernel_size, padding, out_policy) of the layers timed by --layers
LAYERS = [(64, 192, 3, "same", "exact"), (64, 256, 3, "same", "exact"), (256, 64, 3, "same", "exact"),
          (64, 192, 3, "valid", "crop"), (256, 64, 3, "valid", "crop"), (192, 576, 3, "same", "exact"),
          (384, 1536, 3, "same", "exact"), (768, 768, 3, "same", "exact")]


def layer_times(device: str, tokens: int, rounds: int) -> Table:
    """Forward + backward time of single layers: nn.Linear vs the direct implementations, side by side."""
    from lightning_convshare.layers import ConvShareLinear, DirectConv
    from lightning_convshare.layers.backend import auto_impl

    title = f"one layer, forward + backward on {tokens} token maps ({device}, median of {rounds} interleaved rounds)"
    table = Table(title=title)
    for col in ("layer", "linear us", "gather", "matrix", "conv", "auto picks"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for d_in, d_out, k, padding, policy in LAYERS:
        linear = torch.nn.Linear(d_in, d_out, device=device)
        conv = {impl: ConvShareLinear(d_in, d_out, kernel_size=k, padding=padding, out_policy=policy,
                                      backend=DirectConv(impl), device=device) for impl in ("gather", "matrix", "conv")}
        g = conv["gather"].geometry
        x = torch.randn(tokens, d_in, device=device, requires_grad=True)
        grad = torch.randn(tokens, d_out, device=device)
        modules = {"linear": linear, **conv}
        times: dict[str, list[float]] = {n: [] for n in modules}
        reps = max(2, int(1e9 // (tokens * d_in * d_out * 6)))  # about 1 GFLOP per sample
        for _ in range(rounds + 1):  # the first round warms up
            for name, module in modules.items():
                if x.is_cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(reps):
                    module(x).backward(grad)
                if x.is_cuda:
                    torch.cuda.synchronize()
                times[name].append((time.perf_counter() - t0) / reps)
        med = {n: statistics.median(t[1:]) for n, t in times.items()}
        picked = "gather" if auto_impl(g.padded_shape, g.kernel, g.stride, tokens) == "matrix" else "conv"
        (h, w), stride = g.map_shape, "" if g.stride == (1, 1) else f" /{g.stride[0]}"
        label = f"{d_in}->{d_out} {h}x{w} {padding} {k}x{k}{stride} m={g.num_kernels}"
        table.add_row(label, f"{1e6 * med['linear']:.0f}",
                      *(f"{med['linear'] / med[n]:.2f}x" for n in ("gather", "matrix", "conv")), picked)
    return table


def attention_scaling(device: str, dim: int, heads: int, batch: int, repeats: int) -> Table:
    """Inference time per image of one attention layer at growing token counts (patch grid + class token)."""
    from timm.layers import Attention as TimmAttention

    from lightning_convshare.layers import Attention, CastlingAttention

    table = Table(title=f"attention layer, inference time per image (dim {dim}, {heads} heads, batch {batch})")
    for col in ("tokens", "softmax (SDPA) us", "castling us", "castling / softmax"):
        table.add_column(col, justify="right")
    base = TimmAttention(dim, num_heads=heads, qkv_bias=True).to(device).eval()
    for n in SCALING_TOKENS:
        side = int(n**0.5)
        softmax = Attention.from_timm(base)
        castling = CastlingAttention.from_timm(base, grid_size=(side, side), num_prefix_tokens=1, aux_softmax=False)
        x = torch.randn(batch, n + 1, dim, device=device)
        times = {}
        for name, module in (("softmax", softmax), ("castling", castling)):
            samples = []
            with torch.inference_mode():
                module(x)
                for _ in range(repeats):
                    if x.is_cuda:
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    module(x)
                    if x.is_cuda:
                        torch.cuda.synchronize()
                    samples.append(time.perf_counter() - t0)
            times[name] = statistics.median(samples) / batch * 1e6
        ratio = times["castling"] / times["softmax"]
        table.add_row(str(n), f"{times['softmax']:.0f}", f"{times['castling']:.0f}", f"{ratio:.2f}x")
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-scaling", action="store_true", help="skip the attention token-scaling table")
    p.add_argument("--variants", default="vit,valid_full,valid_k3,same_k3,same_k3_conv,castling,cvt_proj",
                   help=f"comma list of {list(VARIANTS)}")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="training steps per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--layers", action="store_true", help="also time single layers: nn.Linear vs direct's impls "
                   "(ratios are linear time / impl time)")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. model.embed_dim=192")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = compose(args.overrides)
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    torch.manual_seed(0)
    c, s = cfg.model.in_chans, cfg.model.img_size
    x = torch.randn(args.batch_size, c, s, s, device=args.device)
    y = torch.randint(0, cfg.model.num_classes, (args.batch_size,), device=args.device)
    runs = {}
    for n in names:
        model = build(cfg, VARIANTS[n], args.device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        train_steps(model, opt, x, y, 3)  # warm-up
        runs[n] = (model, opt, sum(p.numel() for p in model.parameters()))
    times: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for n in names:
            model, opt, _ = runs[n]
            times[n].append(train_steps(model, opt, x, y, args.steps))
    images = args.batch_size * args.steps
    ips = {n: images / statistics.median(w for w, _ in t) for n, t in times.items()}
    cpu_ips = {n: images / statistics.median(c for _, c in t) for n, t in times.items()}
    first = next(iter(ips))
    base, cpu_base = ips.get("vit", ips[first]), cpu_ips.get("vit", cpu_ips[first])
    table = Table(title=f"training throughput on {args.device} (batch {args.batch_size}, "
                        f"{args.rounds} rounds x {args.steps} steps, median)")
    on_cpu = args.device == "cpu"
    for col in ("variant", "params", "images/s", "ratio vs vit", *(("ratio vs vit (CPU time)",) if on_cpu else ())):
        table.add_column(col, justify="right" if col != "variant" else "left")
    for n in names:
        cpu_col = (f"{cpu_ips[n] / cpu_base:.2f}x",) if on_cpu else ()
        table.add_row(n, f"{runs[n][2]:,}", f"{ips[n]:.0f}", f"{ips[n] / base:.2f}x", *cpu_col)
    Console().print(table)
    print(f"model: {cfg.model.name} img {s} patch {cfg.model.patch_size} dim {cfg.model.embed_dim} "
          f"depth {cfg.model.depth} heads {cfg.model.num_heads}; torch threads {torch.get_num_threads()}")
    if args.layers:
        Console().print(layer_times(args.device, args.batch_size * (1 + (s // cfg.model.patch_size) ** 2), args.rounds))
    if not args.no_scaling:
        Console().print(attention_scaling(args.device, 192, 3, batch=8, repeats=2 * args.rounds + 1))


if __name__ == "__main__":
    main()
