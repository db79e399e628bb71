import pytest

from lightning_convshare.errors import GeometryError
from lightning_convshare.layers import default_map_shape, resolve_geometry, working_kernel_sizes


@pytest.mark.parametrize("d, shape", [(64, (8, 8)), (192, (12, 16)), (256, (16, 16)), (768, (24, 32)), (48, (6, 8)), (7, (1, 7))])
def test_default_map_shape_is_most_square(d, shape):
    assert default_map_shape(d) == shape


def test_valid_whole_map_is_linear():
    g = resolve_geometry(64, 192, kernel_size="full", padding="valid")
    assert (g.map_shape, g.kernel, g.out_shape, g.num_kernels, g.whole_map) == ((8, 8), (8, 8), (1, 1), 192, True)


def test_valid_small_kernel_counts_positions():
    g = resolve_geometry(64, 64, kernel_size=5, padding="valid")  # 4x4 = 16 positions -> 4 kernels
    assert (g.out_shape, g.positions, g.num_kernels, g.cropped) == ((4, 4), 16, 4, 0)


@pytest.mark.parametrize("d_out, m", [(192, 3), (256, 4), (64, 1)])  # qkv, fc1, proj
def test_same_padding_kernel_counts(d_out, m):
    g = resolve_geometry(64, d_out, kernel_size=3, padding="same")
    assert (g.out_shape, g.stride, g.num_kernels, g.pad) == ((8, 8), (1, 1), m, (1, 1, 1, 1))


def test_same_padding_reducing_layer_uses_stride():
    g = resolve_geometry(256, 64, kernel_size=3, padding="same")  # fc2: 16x16 -> 8x8 at stride 2
    assert (g.map_shape, g.stride, g.out_shape, g.num_kernels) == ((16, 16), (2, 2), (8, 8), 1)


def test_even_kernel_same_padding_pads_bottom_right():
    g = resolve_geometry(64, 64, kernel_size=4, padding="same")
    assert g.pad == (1, 2, 1, 2) and g.out_shape == (8, 8)


def test_crop_policy_rounds_kernels_up():
    g = resolve_geometry(64, 64, kernel_size=3, padding="valid", out_policy="crop")  # 36 positions
    assert (g.num_kernels, g.raw_out_features, g.cropped) == (2, 72, 8)


def test_non_square_map_and_rectangular_kernel():
    g = resolve_geometry(48, 96, kernel_size=[6, 5], padding="valid")  # 6x8 map -> 1x4 positions
    assert (g.map_shape, g.out_shape, g.num_kernels) == ((6, 8), (1, 4), 24)


def test_working_kernel_sizes():
    assert working_kernel_sizes(64, 64, (8, 8), "valid") == [1, 5, 7, 8]
    assert working_kernel_sizes(256, 64, (16, 16), "valid") == [9, 13, 15, 16]


@pytest.mark.parametrize(
    "kwargs, needles",
    [
        (dict(kernel_size=3, padding="valid"), ["blocks.0.attn.proj", "8x8 token map", "36 positions", "[1, 5, 7, 8]", "out_policy=crop"]),
        (dict(kernel_size=9, padding="valid"), ["blocks.0.attn.proj", "larger than the 8x8 map", "[1, 5, 7, 8]"]),
        (dict(kernel_size=9, padding="same"), ["larger than the 8x8 map"]),
        (dict(padding="causal"), ["padding 'causal' is not supported", "valid", "same"]),
        (dict(out_policy="pad"), ["out_policy 'pad'", "exact", "crop"]),
        (dict(map_shape=[4, 8]), ["map_shape [4, 8] does not hold 64 features", "8x8"]),
        (dict(kernel_size="big"), ["kernel_size 'big' is not understood"]),
        (dict(kernel_size=0), ["at least 1x1"]),
    ],
)
def test_bad_combinations_raise_documented_errors(kwargs, needles):
    with pytest.raises(GeometryError) as e:
        resolve_geometry(64, 64, name="blocks.0.attn.proj", **kwargs)
    for needle in needles:
        assert needle in str(e.value)


def test_same_padding_without_any_stride_raises():
    # fc2-like 16x16 -> 64 with a 1x1 kernel: stride 1 gives 256 positions; larger strides would skip inputs
    with pytest.raises(GeometryError, match=r"no stride s <= 1 .*Kernel sizes that work here: \[2, 3"):
        resolve_geometry(256, 64, kernel_size=1, padding="same", name="x")
