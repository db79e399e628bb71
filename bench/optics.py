"""4f backends on the default model, measured side by side in one run.

1. Training-step time (forward, backward, AdamW) of ``optics=optical`` as configured in
   ``conf/optics/optical.yaml`` (its 4f device with its noise on, its signed-value encoding, grad
   ideal, compile) over ``direct`` (target <= 2x), interleaved round by round (median), with a
   breakdown of where the time goes (the default switched on piece by piece: the one-pass field
   readout; the encoding's passes noise-free through an ideal filter; the device's quantised filter;
   the device's noise stages, eager; compiled: the conf default), then every signed-value encoding with
   the same device, noise and compile, and the former default (four-pass pseudo-negativity with
   explicit shot + read + 8-bit ADC noise and an ideal filter).
2. ``fourier`` (the literal plane-by-plane FFT simulation): its training-step time over ``direct`` and
   its peak memory against ``--memory-budget-mb``, which it keeps by chunking the planes x kernels
   product (and recomputing chunks in the backward pass); the naive ``[planes, kernels, plane
   spectrum]`` intermediate of the largest layer is printed for comparison.

    python bench/optics.py                              # default model (conf/), CPU, batch 64
    python bench/optics.py --device cuda --batch-size 256
    python bench/optics.py --skip-fourier optics.device.preset=lcos-cmos   # another device for the optical rows
    python bench/optics.py --memory-budget-mb 128 --threads 1 model.embed_dim=192
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from lightning_convshare.config import compose
from lightning_convshare.models import ModelSpec, create_network
from lightning_convshare.optics import FourierConv, set_backend
from lightning_convshare.optics.signed import SIGNED_ENCODINGS

OLD_NOISE = [{"name": "shot", "photons": 1e4}, {"name": "read", "sigma": 1e-3}, {"name": "adc", "bits": 8}]
DEFAULT = "optics=optical as configured (conf default)"


def configurations(optical: dict) -> dict[str, dict | str]:
    """The rows: ``direct``, the conf default built up piece by piece, every encoding, the former default."""
    enc = optical["encoding"]
    no_device = {k: v for k, v in optical.items() if k not in ("device", "noise")}
    rows: dict[str, dict | str] = {
        "direct": "direct",
        "optical, field readout (1 signed pass, no camera)": {**no_device, "readout": "field", "compile": False},
        f"{enc}, noise-free, ideal filter": {**no_device, "compile": False},
        f"{enc}, + the device's quantised filter": {**optical, "noise": [], "compile": False},
        f"{enc}, + the device's noise stages (eager)": {**optical, "compile": False},
        DEFAULT: optical,
    }
    for name in SIGNED_ENCODINGS.names():
        if name != enc:
            rows[f"{name}, the same device, noise, compile"] = {**optical, "encoding": name}
    rows["former default: pseudo_negativity, shot 1e4 + read 1e-3 + 8-bit adc, ideal filter"] = {
        **no_device, "encoding": "pseudo_negativity", "noise": OLD_NOISE}
    return rows


def build(cfg, backend, device: str) -> torch.nn.Module:
    spec = ModelSpec.from_hparams(cfg.model, {**cfg.surgery, "backend": backend})
    return create_network(spec).model.to(device).train()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Stepper:
    """One model with its optimiser; times full training steps and forward passes."""

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        self.model, self.x, self.y = model, x, y
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(self) -> None:
        loss = torch.nn.functional.cross_entropy(self.model(self.x), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def forward(self) -> None:
        self.model(self.x)


def timed(fn, n: int, device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / n


def peak_memory_mb(fn, device: str) -> float:
    """Peak tensor memory of ``fn`` above what was allocated when it started.

    CUDA: the caching allocator's statistics. CPU: allocations minus frees, in time order, from the
    torch profiler's memory events (the process's RSS would also count buffers that the allocator and
    the FFT library keep after tensors are freed).
    """
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.time_range.start, e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage) for e in prof.events()
    )
    current = peak = 0
    for _, change in events:
        current += change
        peak = max(peak, current)
    return peak / 2**20


MATMUL_OPS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::convolution", "aten::_convolution",
              "aten::mkldnn_convolution", "aten::convolution_backward", "aten::_fft_r2c", "aten::_fft_c2r")
RNG_OPS = ("aten::normal_", "aten::uniform_", "aten::poisson")


def op_times(stepper: Stepper, device: str, steps: int = 3) -> dict[str, float]:
    """Per-step self time (ms) of the matrix products, the ``torch.randn`` draws and the compiled
    kernels of a training step, from the torch profiler (CPU ops; on a GPU, the device kernels are
    asynchronous and this is only indicative)."""
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            stepper.step()
        sync(device)
    table = {e.key: e.self_cpu_time_total / 1e3 / steps for e in prof.key_averages()}
    pick = lambda names: sum(v for k, v in table.items() if k in names)  # noqa: E731
    return {"matmul": pick(MATMUL_OPS), "rng": pick(RNG_OPS),
            "compiled": sum(v for k, v in table.items() if k.startswith("## Call CompiledFxGraph"))}


def tune_malloc() -> bool:
    """Keep freed buffers of up to 32 MiB in glibc's heap instead of returning them to the OS, so the
    many same-sized temporaries of a training step are not page-faulted in again every time (what
    jemalloc/tcmalloc do by default; PyTorch's CPU tuning guide recommends them). Applies to every
    configuration alike."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20) and libc.mallopt(M_TRIM_THRESHOLD, 2**30)
                    and libc.mallopt(M_TOP_PAD, 64 * 2**20))
    except (OSError, AttributeError):
        return False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=None, help="default: data.batch_size")
    p.add_argument("--steps", type=int, default=3, help="training steps per round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    p.add_argument("--fourier-steps", type=int, default=2, help="timed fourier steps (each takes seconds on a CPU)")
    p.add_argument("--memory-budget-mb", type=float, default=512, help="fourier's chunking budget")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--skip-fourier", action="store_true")
    p.add_argument("--no-malloc-tuning", action="store_true", help="leave glibc's allocator at its defaults")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. model.embed_dim=192 optics.encoding=offset")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tuned = False if args.no_malloc_tuning else tune_malloc()
    cfg = compose(["optics=optical", *args.overrides])
    B = args.batch_size or int(cfg.data.batch_size)
    torch.manual_seed(0)
    s, c = int(cfg.model.img_size), int(cfg.model.in_chans)
    x = torch.randn(B, c, s, s, device=args.device)
    y = torch.randint(0, int(cfg.model.num_classes), (B,), device=args.device)
    optical = OmegaConf.to_container(cfg.optics, resolve=True)
    rows = configurations(optical)
    base = build(cfg, "direct", args.device)
    steppers = {}
    for name, backend in rows.items():
        model = copy.deepcopy(base)
        if backend != "direct":
            set_backend(model, backend)
        steppers[name] = Stepper(model, x, y)
        for _ in range(2):  # warm-up (and compilation)
            steppers[name].step()
    step_t = {n: [] for n in steppers}
    fwd_t = {n: [] for n in steppers}
    for _ in range(args.rounds):
        for name, st in steppers.items():
            step_t[name].append(timed(st.step, args.steps, args.device))
            fwd_t[name].append(timed(st.forward, args.steps, args.device))
    step = {n: statistics.median(v) for n, v in step_t.items()}
    fwd = {n: statistics.median(v) for n, v in fwd_t.items()}
    console = Console(width=150)
    device = optical["device"]
    preset = device if isinstance(device, str) else device.get("preset")
    head = (f"{cfg.model.name}: img {s}, patch {cfg.model.patch_size}, dim {cfg.model.embed_dim}, depth {cfg.model.depth}; "
            f"surgery {cfg.surgery.padding}/{cfg.surgery.kernel_size}; batch {B}; {args.device}, "
            f"{torch.get_num_threads()} threads{', malloc tuned' if tuned else ''}; "
            f"{args.rounds} rounds x {args.steps} steps, median; optics=optical: device {preset}, "
            f"encoding {optical['encoding']}, noise {optical['noise']}, grad {optical['grad']}, compile {optical['compile']}")
    console.print(head)
    table = Table(title="training step: optical vs direct (rows 2-6 build the conf default up piece by piece)")
    for col in ("configuration", "step ms", "vs direct", "forward ms", "backward+opt ms", "added by this piece"):
        table.add_column(col, justify="left" if col == "configuration" else "right")
    names = list(steppers)
    for i, name in enumerate(names):
        added = f"{1e3 * (step[name] - step[names[i - 1]]):+.1f} ms" if 1 <= i <= names.index(DEFAULT) else "-"
        table.add_row(name, f"{1e3 * step[name]:.1f}", f"{step[name] / step['direct']:.2f}x", f"{1e3 * fwd[name]:.1f}",
                      f"{1e3 * (step[name] - fwd[name]):.1f}", added)
    console.print(table)
    d_ms = 1e3 * step["direct"]
    direct_mm = op_times(steppers["direct"], args.device)["matmul"]
    console.print(f"Profiled per step (direct's matrix products: {direct_mm:.1f} ms; its whole step {d_ms:.1f} ms, unprofiled):")
    for name in [*names[1 : names.index(DEFAULT) + 1], names[-1]]:
        t = op_times(steppers[name], args.device)
        console.print(f"  {name}: matrix products {t['matmul']:.1f} ms, torch.randn draws {t['rng']:.1f} ms, "
                      f"compiled camera kernels {t['compiled']:.1f} ms")
    ratio = step[DEFAULT] / step["direct"]
    console.print(f"[bold]optics=optical (conf default: {preset}, {optical['encoding']}, device noise, grad ideal, compile) "
                  f"/ direct training step: {ratio:.2f}x[/] (target <= 2x: {'met' if ratio <= 2 else 'not met'})")
    for name in names:
        if name.endswith("compile") or name.startswith("former"):
            console.print(f"  {name}: {step[name] / step['direct']:.2f}x")

    if args.skip_fourier:
        return
    model = copy.deepcopy(base)
    set_backend(model, {"name": "fourier", "memory_budget_mb": args.memory_budget_mb})
    four = Stepper(model, x, y)
    direct = steppers["direct"]
    four.step()  # warm-up (FFT plans, buffers)
    t_four, t_direct = [], []
    for _ in range(args.fourier_steps):  # interleaved with direct
        t_four.append(timed(four.step, 1, args.device))
        t_direct.append(timed(direct.step, args.steps, args.device))
    t_four, t_direct = statistics.median(t_four), statistics.median(t_direct)
    peak = peak_memory_mb(four.step, args.device)
    plans = {n: m.last_plan for n, m in model.named_modules() if isinstance(m, FourierConv) and m.last_plan}
    name, plan = max(plans.items(), key=lambda kv: kv[1].naive_bytes)
    console.print(
        f"\n[bold]fourier[/] training step {t_four:.2f} s = {t_four / t_direct:.0f}x direct ({1e3 * t_direct:.1f} ms, "
        f"interleaved). Peak tensor memory of the step: {peak:.0f} MiB above what was allocated before it "
        f"(budget {args.memory_budget_mb:.0f} MiB: {'under' if peak <= args.memory_budget_mb else 'OVER'}). "
        f"Largest layer {name.removesuffix('.backend')}: {plan.planes} plane(s) x {plan.kernels} kernels on a "
        f"{plan.fft_shape[0]}x{plan.fft_shape[1]} FFT grid; the naive complex product would be "
        f"{plan.naive_bytes / 2**20:.0f} MiB, chunked into {plan.chunks} chunk(s) of <= {plan.chunk_bytes / 2**20:.0f} MiB."
    )
    console.print("Timings on a shared machine are inflated by contention; compare the ratios, not the milliseconds.")


if __name__ == "__main__":
    main()
