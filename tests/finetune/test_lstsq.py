import copy

import pytest
import torch
from torch import nn

from lightning_convshare.layers import ConvShareLinear
from lightning_convshare.surgery import LAYER_INITS, apply_surgery
from lightning_convshare.surgery.init import approximation_error, conv_matrix, crop_kernels, lstsq_kernels
from tests.conftest import tiny_vit

# (in, out, options): valid k < map (with crop), same padding, the strided fc2 geometry, rectangular kernels
GEOMETRIES = {
    "valid_k3_crop": (64, 192, dict(kernel_size=3, out_policy="crop")),
    "valid_k5": (64, 64, dict(kernel_size=5)),
    "valid_3x5_crop": (48, 48, dict(kernel_size=[3, 5], out_policy="crop")),
    "same_k3": (64, 192, dict(kernel_size=3, padding="same")),
    "same_k4_even": (64, 256, dict(kernel_size=4, padding="same")),
    "same_k3_stride2": (256, 64, dict(kernel_size=3, padding="same")),
}


def _layer(case, **extra):
    d_in, d_out, opts = GEOMETRIES[case]
    return ConvShareLinear(d_in, d_out, **opts, **extra).double()


def _linear(d_in, d_out):
    return nn.Linear(d_in, d_out).double()


@pytest.mark.parametrize("case", GEOMETRIES)
def test_conv_matrix_is_the_layer(case):
    layer = _layer(case)
    x = torch.randn(2, 3, layer.in_features, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ conv_matrix(layer.weight, layer.geometry).T + layer.bias)


@pytest.mark.parametrize("case", ["valid_k3_crop", "valid_3x5_crop", "same_k3", "same_k3_stride2"])  # small designs: fast
def test_lstsq_kernels_solve_the_least_squares_problem(case):
    """Same kernels as a generic solver on the explicit design matrix (columns = the conv of each one-tap kernel)."""
    layer = _layer(case)
    g = layer.geometry
    W = torch.randn(layer.out_features, layer.in_features, dtype=torch.float64)
    shape = (g.num_kernels, *g.kernel)
    n = g.num_kernels * g.kernel[0] * g.kernel[1]
    design = torch.stack([conv_matrix(torch.eye(n, dtype=torch.float64)[j].reshape(shape), g).flatten() for j in range(n)], 1)
    reference = torch.linalg.lstsq(design, W.flatten()[:, None], driver="gelsd").solution.reshape(shape)
    torch.testing.assert_close(lstsq_kernels(W, g), reference, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case", GEOMETRIES)
def test_lstsq_beats_naive_cropping_and_zero_kernels(case):
    layer = _layer(case)
    linear = _linear(layer.in_features, layer.out_features)
    errors = {}
    for init in ("lstsq", "crop"):
        LAYER_INITS.get(init)(layer, linear)
        errors[init] = approximation_error(layer, linear)
        torch.testing.assert_close(layer.bias, linear.bias)  # biases are copied by both
    with torch.no_grad():
        layer.weight.zero_()
    errors["zero"] = approximation_error(layer, linear)
    assert errors["zero"] == pytest.approx(1.0)
    assert errors["lstsq"] < errors["crop"] and errors["lstsq"] < errors["zero"], errors


@pytest.mark.parametrize("case", GEOMETRIES)
def test_lstsq_recovers_a_linear_map_that_is_a_convolution(case):
    """When W is itself this conv's matrix, least squares finds kernels with the same matrix (error 0)."""
    source = _layer(case)
    linear = _linear(source.in_features, source.out_features)
    with torch.no_grad():
        linear.weight.copy_(conv_matrix(source.weight, source.geometry))
    layer = _layer(case)
    LAYER_INITS.get("lstsq")(layer, linear)
    assert approximation_error(layer, linear) < 1e-12
    x = torch.randn(2, 3, layer.in_features, dtype=torch.float64)
    torch.testing.assert_close(layer(x), linear(x))


def test_whole_map_lstsq_is_exact_and_non_shared_banks_get_the_shared_fit():
    linear = nn.Linear(48, 144)
    layer = ConvShareLinear(48, 144)
    LAYER_INITS.get("lstsq")(layer, linear)
    assert approximation_error(layer, linear) == 0.0
    shared = _layer("same_k3")
    per_token = _layer("same_k3", shared=False, num_tokens=5)
    linear = _linear(64, 192)
    LAYER_INITS.get("lstsq")(shared, linear)
    LAYER_INITS.get("lstsq")(per_token, linear)
    torch.testing.assert_close(per_token.weight, shared.weight.expand_as(per_token.weight))
    assert approximation_error(per_token, linear) == pytest.approx(approximation_error(shared, linear))


def test_crop_kernels_reproduce_the_chosen_output_exactly_for_a_local_map():
    """A linear map whose rows are local windows is cropped back exactly at the centre output."""
    source = _layer("valid_k5")
    g = source.geometry
    W = conv_matrix(source.weight, g)
    torch.testing.assert_close(crop_kernels(W, g), source.weight.detach())


def test_surgery_init_lstsq_on_a_vit_lowers_every_layer_error():
    ref = tiny_vit(embed_dim=64)  # 8x8 maps
    errors = {}
    for init in ("lstsq", "crop", "transfer"):
        model = copy.deepcopy(ref)
        apply_surgery(model, dict(name="convshare", kernel_size=3, out_policy="crop", init=init))
        errors[init] = [approximation_error(model.get_submodule(n), ref.get_submodule(n))
                        for n, m in ref.named_modules() if isinstance(m, nn.Linear) and n.startswith("blocks.")]
    assert len(errors["lstsq"]) == 8
    assert all(a < b for a, b in zip(errors["lstsq"], errors["crop"], strict=True))
    assert all(a < b for a, b in zip(errors["lstsq"], errors["transfer"], strict=True))
