"""CUDA checks (marker ``gpu``): what only a GPU can show, run by ``scripts/gpu_check.sh``.

Skipped without CUDA (the whole module), so the default suite only collects them; ``scripts/gpu_check.sh
--dry-run`` (in CI through tests/test_gpu_check.py) runs their bodies on the CPU
(``CONVSHARE_GPU_TESTS_DEVICE=cpu``, wave's left out) so that they cannot rot. On a GPU:
every conv backend and surgery variant trains (forward and backward) in float32 and under bf16
autocast (``trainer=gpu``'s ``bf16-mixed``) and, where it is exact, agrees with the CPU; the
compiled four-pass camera built by Triton equals the eager chain fed the same draws; the Philox
draws are the same on the CPU and the GPU; ``fourier`` keeps its memory budget on the device.
"""
from __future__ import annotations

import contextlib
import os

import pytest
import torch

from lightning_convshare.layers import ConvShareLinear
from lightning_convshare.optics import FourierConv, create_backend
from lightning_convshare.surgery import apply_surgery
from tests.conftest import tiny_vit

#: the device the checks run on: CUDA; ``CONVSHARE_GPU_TESTS_DEVICE=cpu`` runs their bodies on the CPU instead
#: (tests/test_gpu_check.py does, so that they cannot rot between the rare days a GPU is lent)
CUDA = os.environ.get("CONVSHARE_GPU_TESTS_DEVICE", "cuda")
ON_CUDA = CUDA.startswith("cuda")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(ON_CUDA and not torch.cuda.is_available(), reason="needs a CUDA device")]
NOISE = [{"name": "shot", "photons": 1e4}, {"name": "read", "sigma": 1e-3}, {"name": "adc", "bits": 8}]
#: name -> (backend spec, exact: equals the CPU up to float rounding)
BACKENDS = {
    "direct-auto": ({"name": "direct"}, True),
    "direct-conv": ({"name": "direct", "impl": "conv"}, True),
    "direct-matrix": ({"name": "direct", "impl": "matrix"}, True),
    "direct-gather": ({"name": "direct", "impl": "gather"}, True),
    "fourier": ({"name": "fourier", "slm_resolution": [64, 96]}, True),
    "fourier-intensity-noisy": ({"name": "fourier", "slm_resolution": [64, 96], "readout": "intensity", "noise": NOISE}, False),
    "optical-eager": ({"name": "optical", "noise": NOISE, "compile": False}, False),
    "optical-compiled": ({"name": "optical", "noise": NOISE, "compile": True}, False),
    "optical-pathwise": ({"name": "optical", "noise": NOISE, "grad": "pathwise"}, False),
    "wave": ({"name": "wave", "slm_resolution": [24, 32]}, False),
}
#: name -> surgery config
VARIANTS = {
    "vit": "vit",
    "convshare-valid-full": {"name": "convshare"},
    "convshare-same-k3": {"name": "convshare", "padding": "same", "kernel_size": 3},
    "convshare-valid-k3-crop": {"name": "convshare", "kernel_size": 3, "out_policy": "crop"},
    "convshare-same-k3-nonshared": {"name": "convshare", "padding": "same", "kernel_size": 3, "shared": False},
    "convshare-same-k3-optical": {"name": "convshare", "padding": "same", "kernel_size": 3,
                                  "backend": {"name": "optical", "noise": NOISE}},
    "castling": "castling",
    "castling-convshare": {"name": "castling", "convshare": {"padding": "same", "kernel_size": 3}},
    "cvt_proj": "cvt_proj",
    "cvt_proj-convshare": {"name": "cvt_proj", "kv_stride": 2, "convshare": {"kernel_size": 3, "out_policy": "crop"}},
}
PRECISIONS = ["float32", "bf16-mixed"]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    return float((a - b).norm() / b.norm())


def autocast(precision: str):
    return torch.autocast(torch.device(CUDA).type, dtype=torch.bfloat16) if precision == "bf16-mixed" else contextlib.nullcontext()


def _grads_ok(named: dict[str, torch.Tensor | None]) -> None:
    for name, grad in named.items():
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", list(BACKENDS))
def test_every_conv_backend_trains_on_cuda(name, precision):
    spec, exact = BACKENDS[name]
    torch.manual_seed(0)
    cpu = ConvShareLinear(48, 144, kernel_size=3, padding="same", backend=create_backend(spec)).train()
    layer = ConvShareLinear(48, 144, kernel_size=3, padding="same", backend=create_backend(spec)).to(CUDA).train()
    layer.load_state_dict(cpu.state_dict())
    x = torch.randn(4, 17, 48, device=CUDA, requires_grad=True)
    with autocast(precision):
        out = layer(x)
    out.float().square().mean().backward()
    assert out.device == x.device and torch.isfinite(out).all()
    _grads_ok({"input": x.grad, "weight": layer.weight.grad, "bias": layer.bias.grad})
    if exact:  # convolutions may use TF32 on the GPU; bf16 rounds the inputs
        tol = 2e-3 if precision == "float32" else 3e-2
        assert rel(out, cpu(x.detach().cpu())) <= tol


@pytest.mark.parametrize("native", [True, False], ids=["index_select", "tap-gather"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-token"])
def test_gathered_weight_equals_the_literal_conv_on_cuda(shared, native, monkeypatch):
    """Both backward paths of impl gather (tests/layers/test_gather.py on the GPU), in float64."""
    import lightning_convshare.layers.backend as backend
    from lightning_convshare.layers import DirectConv

    monkeypatch.setattr(backend, "NATIVE_GATHER_MAX", 1 << 30 if native else 0)
    torch.manual_seed(0)
    kw = dict(kernel_size=3, padding="same", shared=shared, num_tokens=5, device=CUDA, dtype=torch.float64)
    gather, conv = ConvShareLinear(192, 48, backend=DirectConv("gather"), **kw), ConvShareLinear(192, 48, backend=DirectConv("conv"), **kw)
    conv.load_state_dict(gather.state_dict())
    x = torch.randn(3, 5, 192, device=CUDA, dtype=torch.float64)
    grad = torch.randn(3, 5, 48, device=CUDA, dtype=torch.float64)
    results = []
    for layer in (gather, conv):
        xi = x.clone().requires_grad_()
        out = layer(xi)
        out.backward(grad)
        results.append((out, xi.grad, layer.weight.grad, layer.bias.grad))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_surgery_variant_trains_on_cuda(name, precision):
    torch.manual_seed(0)
    model = tiny_vit(depth=2)
    apply_surgery(model, VARIANTS[name])
    model.train()
    model.to(CUDA)
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 5, (8,))
    with autocast(precision):
        logits = model(x.to(CUDA))
    loss = torch.nn.functional.cross_entropy(logits.float(), y.to(CUDA))
    loss.backward()
    assert torch.isfinite(loss)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not missing, missing
    if precision == "float32" and "optical" not in name:  # eval mode: no dropout, no auxiliary branches, no noise
        reference = tiny_vit(depth=2)
        apply_surgery(reference, VARIANTS[name])
        reference.load_state_dict(model.state_dict())  # the same weights and normalisation statistics, on the CPU
        model.eval()
        reference.eval()
        with torch.no_grad():
            assert rel(model(x.to(CUDA)), reference(x)) <= 2e-3


def test_compiled_four_pass_camera_on_triton_equals_the_eager_chain_with_the_same_draws():
    """tests/optics/test_noise.py's CPU check of ``optical`` ``compile: true``, built by Triton on the GPU."""
    from lightning_convshare.optics import camera

    gen = torch.Generator(device=CUDA).manual_seed(3)
    torch.manual_seed(0)
    y = torch.rand(2, 1, 40, 2, 24, 1, 1, dtype=torch.float64, device=CUDA).requires_grad_()  # A, G, T, Bk, m, oh, ow
    fs = y.detach().amax(dim=(1, 2), keepdim=True).square()
    a, b, levels = 1 / 1e3, 1e-3**2, 256
    out = camera.camera_recombined(y, fs, a, b, levels, gen=gen)
    grad_out = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, y, grad_out)

    seed = torch.randint(0, 2**62, (), generator=torch.Generator(device=CUDA).manual_seed(3), device=CUDA)
    eps = camera._four_pass_noise(out.shape, CUDA, seed)
    expected, expected_grad = 0, torch.zeros_like(y)
    for (i, j), e, sign in zip([(0, 0), (0, 1), (1, 0), (1, 1)], eps, (1, -1, -1, 1), strict=True):
        yi, fi = y.detach()[i, :, :, j], fs[i, :, :, j].expand_as(out)
        o, std = camera._camera_forward_eager(yi, fi, e.double(), a, b, levels)
        expected = expected + sign * o
        ratio = torch.where(o > 0, yi / o.clamp_min(1e-12), 0.0)
        expected_grad[i, :, :, j] = sign * grad_out * ratio * (e / std * (a / 2) + 1)
    # the draws are float32: Triton's log/cos may differ from eager CUDA's in the last bit, which the noise
    # (std ~0.03 of a reading) scales to ~1e-9 of the value
    torch.testing.assert_close(out.detach(), expected, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=1e-9)
    assert {"_recombined_forward", "_recombined_backward"} <= {name for name, _ in camera._COMPILED}  # compiled
    assert (out.detach() - (y[0, :, :, 0] - y[0, :, :, 1] - y[1, :, :, 0] + y[1, :, :, 1]).detach()).abs().max() > 1e-3


def test_philox_words_are_bit_identical_and_the_normals_agree_on_cpu_and_cuda():
    """The counter-based generator is a pure function of (seed, counter) on every device: the 32-bit
    words are bit for bit the same; the Box-Muller normals apply float32 log/cos/sin, whose last bit
    may differ between the CPU's and the GPU's libraries."""
    from lightning_convshare.optics.rng import MASK32, philox2x32, philox_normal_pair

    counter = torch.arange(1 << 20)
    seed = torch.tensor(123_456_789_012)
    words = [philox2x32(counter.to(dev) & MASK32, (seed.to(dev) >> 32) & MASK32, seed.to(dev) & MASK32) for dev in ("cpu", CUDA)]
    for cpu_word, gpu_word in zip(*words, strict=True):
        assert torch.equal(cpu_word, gpu_word.cpu())
    for cpu_z, gpu_z in zip(philox_normal_pair(counter, seed), philox_normal_pair(counter.to(CUDA), seed.to(CUDA)), strict=True):
        torch.testing.assert_close(gpu_z.cpu(), cpu_z, rtol=4e-7, atol=4e-7)


@pytest.mark.skipif(not ON_CUDA, reason="measures CUDA's peak allocation")
def test_fourier_stays_under_its_memory_budget_on_cuda():
    """The planes x kernels product is chunked under ``memory_budget_mb``: the device's peak allocation
    of a training step stays near the budget, far below the unchunked product."""
    torch.manual_seed(0)
    budget = 32
    layer = ConvShareLinear(64, 192, backend=FourierConv(slm_resolution=[512, 512], memory_budget_mb=budget)).to(CUDA)
    x = torch.randn(64, 17, 64, device=CUDA, requires_grad=True)

    def peak_mib() -> float:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        layer(x).square().sum().backward()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20

    peak_mib()  # warm-up: cuFFT plans
    peak = peak_mib()
    plan = layer.backend.last_plan
    naive = plan.naive_bytes / 2**20
    assert plan.chunks > 1 and naive > 4 * budget, (plan, naive)
    assert peak <= 1.25 * budget, f"peak {peak:.1f} MiB over the {budget} MiB budget (naive product {naive:.0f} MiB)"
