"""Plane layout: tiling, read-back and windows are consistent; errors name what would fit."""
import pytest
import torch

from lightning_convshare.errors import GeometryError
from lightning_convshare.optics import PlaneLayout


def test_tiles_round_trip_through_planes():
    layout = PlaneLayout.create(tile=(3, 5), pad=(0, 0, 0, 0), kernel=(1, 1), stride=(1, 1), out=(3, 5), plane=(16, 20), guard=2)
    assert layout.grid == (3, 3) and layout.tiles_per_plane == 9
    x = torch.randn(2, 20, 3, 5)  # 20 tiles: 3 planes
    planes = layout.to_planes(x)
    assert planes.shape == (2, 3, 16, 20)
    assert planes.abs().sum() == pytest.approx(x.abs().sum().item(), rel=1e-6)  # tiles do not overlap
    read = layout.read(planes, layout.grid)[:, :20]  # a 1x1 identity kernel reads every map back
    assert torch.equal(read, x)


def test_partial_plane_fits_and_windows_match_planes():
    layout = PlaneLayout.create(tile=(4, 4), pad=(1, 1, 1, 1), kernel=(3, 3), stride=(1, 1), out=(4, 4), plane=64, guard=0)
    x = torch.randn(5, 4, 4)
    planes = layout.to_planes(x, fit=True)
    assert planes.shape[-3] == 1 and planes.shape[-1] < 64  # only the occupied extent
    win = layout.windows(x)  # guard 0 < reach 1: windows include the neighbours' edges
    assert win.shape == (5, 6, 6)
    torch.testing.assert_close(win[1, 1:5, 1:5], x[1])
    torch.testing.assert_close(win[1, 1:5, 0], x[0][:, -1])  # the left neighbour's last column


def test_auto_guard_is_the_padding_reach():
    same = PlaneLayout.create((8, 8), (1, 2, 1, 2), (4, 4), (1, 1), (8, 8), plane=100)
    assert same.guard == (2, 2) and same.leak_free
    strided = PlaneLayout.create((16, 16), (0, 1, 0, 1), (3, 3), (2, 2), (8, 8), plane=100)
    assert strided.guard == (1, 1)
    valid = PlaneLayout.create((8, 8), (0, 0, 0, 0), (8, 8), (1, 1), (1, 1), plane=100)
    assert valid.guard == (0, 0) and valid.grid == (12, 12)


def test_plane_too_small_names_the_size_that_fits():
    with pytest.raises(GeometryError, match="slm_resolution >= 18"):
        PlaneLayout.create((16, 16), (1, 1, 1, 1), (3, 3), (1, 1), (16, 16), plane=12)
