"""Where token maps sit on the SLM plane and where their outputs are read on the camera.

A 4f pass images the whole input plane (the SLM) convolved with one kernel onto the camera. The
token maps of a ConvShare layer (all samples, all tokens: the kernels are shared) are tiled on the
plane in a regular grid; between neighbouring tiles lies a zero *guard band*. Each camera pixel
``p`` sees the correlation ``sum_a plane[p + a] * kernel[a]`` (the filter holds the kernel's
conjugate spectrum, a matched filter, so the camera shows a correlation; the image inversion of
the two lenses is a relabelling of camera pixels, see :mod:`lightning_convshare.optics.wave`).

Per axis, with the layer's zero padding ``pad_before`` (same padding), an effective kernel of
``k + 2 * halo`` pixels (``halo``: spread of the aperture band-limit) and stride ``s``:

* the read-back pixels of a tile reach ``before = pad_before + halo`` pixels before the tile and
  ``after = (out - 1) * s + k - pad_before - tile + halo`` pixels after it;
* no light of a neighbour reaches them when ``guard >= max(before, after)`` (the *leak-free*
  guard, ``guard="auto"``); the layer's same padding therefore costs ``max(pad_before, pad_after)``
  dark pixels between tiles, not ``k - 1``, and valid padding none at all;
* the plane keeps margins ``before + context`` and ``after + context`` at its edges, where
  ``context`` is the camera neighbourhood a PSF stage needs, so no read pixel or its
  neighbourhood falls off the camera (and the FFT simulation never wraps around);
* ``rows = (H - lead - trail + guard) // (tile + guard)`` tiles fit along an axis of ``H`` pixels.

Tiles are assigned row-major, plane by plane: tile ``t`` is on plane ``t // (rows * cols)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

import torch
import torch.nn.functional as F

from ..errors import GeometryError

__all__ = ["GuardSpec", "PlaneLayout", "pair"]

GuardSpec = Union[str, int, Sequence[int]]


def pair(value: int | Sequence[int], what: str = "value") -> tuple[int, int]:
    """``7 -> (7, 7)``, ``[4, 8] -> (4, 8)``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value), int(value)
    values = tuple(int(v) for v in value)
    if len(values) != 2:
        raise GeometryError(f"{what} must be an int or a pair [h, w], got {list(value)}")
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class PlaneLayout:
    """Tile grid of one ConvShare layer on an SLM plane (all sizes in pixels, ``(rows, cols)`` pairs).

    Attributes:
        tile: content token map ``(h, w)`` (the layer's zero padding removed).
        pad: the layer's zero padding ``(top, bottom, left, right)``.
        kernel: effective kernel ``(kh + 2 halo, kw + 2 halo)``.
        halo: pixels the effective kernel extends the layer's kernel on every side.
        stride: ``(sh, sw)``.
        out: ``(oh, ow)`` read-back pixels per tile and kernel.
        context: camera pixels needed around read pixels (PSF radius).
        guard: zero pixels between neighbouring tiles.
        plane: SLM resolution ``(H, W)``.
        grid: tiles per plane ``(rows, cols)``.
    """

    tile: tuple[int, int]
    pad: tuple[int, int, int, int]
    kernel: tuple[int, int]
    halo: int
    stride: tuple[int, int]
    out: tuple[int, int]
    context: int
    guard: tuple[int, int]
    plane: tuple[int, int]
    grid: tuple[int, int]

    @classmethod
    def create(
        cls,
        tile: Sequence[int],
        pad: Sequence[int],
        kernel: Sequence[int],
        stride: Sequence[int],
        out: Sequence[int],
        plane: int | Sequence[int],
        guard: GuardSpec = "auto",
        halo: int = 0,
        context: int = 0,
    ) -> PlaneLayout:
        """Solve the grid for a layer's geometry.

        Args:
            tile: content map ``(h, w)``.
            pad: layer padding ``(top, bottom, left, right)``.
            kernel: the *layer's* kernel ``(kh, kw)`` (the halo is added here).
            stride: ``(sh, sw)``.
            out: ``(oh, ow)``.
            plane: SLM resolution, int or ``(H, W)``.
            guard: ``"auto"`` (the leak-free guard), an int or ``(gh, gw)``.
            halo: effective-kernel halo.
            context: PSF radius on the camera.

        Raises:
            GeometryError: when not even one tile fits the plane (says what size would).
        """
        tile, stride, out, plane = pair(tile), pair(stride), pair(out), pair(plane, "slm_resolution")
        kh, kw = pair(kernel)
        pad = tuple(int(p) for p in pad)
        eff = (kh + 2 * halo, kw + 2 * halo)
        before = (pad[0] + halo, pad[2] + halo)
        after = tuple(
            (o - 1) * s + k - pb - t + halo for o, s, k, pb, t in zip(out, stride, (kh, kw), (pad[0], pad[2]), tile, strict=True)
        )
        if guard == "auto":
            g = tuple(max(b, a) for b, a in zip(before, after, strict=True))
        elif isinstance(guard, str):
            raise GeometryError(f"guard {guard!r} is not understood: use 'auto', an int or [gh, gw]")
        else:
            g = pair(guard, "guard")
            if min(g) < 0:
                raise GeometryError(f"guard {list(g)} must be >= 0")
        grid = []
        for axis in range(2):
            lead, trail = before[axis] + context, after[axis] + context
            n = (plane[axis] - lead - trail + g[axis]) // (tile[axis] + g[axis])
            if n < 1:
                need = lead + tile[axis] + trail
                raise GeometryError(
                    f"an SLM plane of {plane[0]}x{plane[1]} pixels cannot hold one {tile[0]}x{tile[1]} token map "
                    f"with its margins ({need} pixels along {'rows' if axis == 0 else 'columns'}); "
                    f"use slm_resolution >= {need}"
                )
            grid.append(int(n))
        return cls(tile, pad, eff, halo, stride, out, context, g, plane, (grid[0], grid[1]))  # type: ignore[arg-type]

    # --- derived sizes ------------------------------------------------------------------
    @property
    def tiles_per_plane(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def pitch(self) -> tuple[int, int]:
        return self.tile[0] + self.guard[0], self.tile[1] + self.guard[1]

    @property
    def before(self) -> tuple[int, int]:
        """Reach of read pixels before the tile's first row/column."""
        return self.pad[0] + self.halo, self.pad[2] + self.halo

    @property
    def after(self) -> tuple[int, int]:
        """Reach of read pixels after the tile's last row/column."""
        k = (self.kernel[0] - 2 * self.halo, self.kernel[1] - 2 * self.halo)
        return tuple(  # type: ignore[return-value]
            (o - 1) * s + kk - pb - t + self.halo
            for o, s, kk, pb, t in zip(self.out, self.stride, k, (self.pad[0], self.pad[2]), self.tile, strict=True)
        )

    @property
    def lead(self) -> tuple[int, int]:
        """Plane margin before the first tile."""
        return self.before[0] + self.context, self.before[1] + self.context

    @property
    def dense(self) -> tuple[int, int]:
        """Camera pixels per tile that a PSF stage needs (read span plus context)."""
        return tuple((o - 1) * s + 1 + 2 * self.context for o, s in zip(self.out, self.stride, strict=True))  # type: ignore[return-value]

    @property
    def window(self) -> tuple[int, int]:
        """Input pixels that light the dense camera region of one tile."""
        return self.dense[0] + self.kernel[0] - 1, self.dense[1] + self.kernel[1] - 1

    @property
    def leak_free(self) -> bool:
        """No neighbour's light reaches a read pixel (before any PSF)."""
        return all(g >= max(b, a) for g, b, a in zip(self.guard, self.before, self.after, strict=True))

    @property
    def isolated(self) -> bool:
        """A tile's window holds no neighbour pixels (then tiles can be processed one by one)."""
        return all(g >= max(b, a) + self.context for g, b, a in zip(self.guard, self.before, self.after, strict=True))

    def num_planes(self, tiles: int) -> int:
        return max(1, math.ceil(tiles / self.tiles_per_plane))

    def used_grid(self, tiles: int) -> tuple[int, int]:
        """Rows and columns in use when ``tiles`` tiles go on one plane (all of the grid for more)."""
        rows, cols = self.grid
        if tiles >= rows * cols:
            return rows, cols
        return math.ceil(tiles / cols), (cols if tiles > cols else tiles)

    def extent(self, grid: tuple[int, int]) -> tuple[int, int]:
        """Plane pixels a grid of tiles occupies, margins included (at most the SLM)."""
        return tuple((n - 1) * p + w for n, p, w in zip(grid, self.pitch, self.window, strict=True))  # type: ignore[return-value]

    # --- tensors --------------------------------------------------------------------------
    def to_planes(self, x: torch.Tensor, fit: bool = False) -> torch.Tensor:
        """Tile maps onto planes.

        Args:
            x: ``(..., T, h, w)`` content maps.
            fit: when all tiles fit on one plane, return only the occupied part of it (the
                rest of the SLM is dark, so any simulation of the plane is unchanged).

        Returns:
            ``(..., P, H, W)`` planes (``H, W`` the SLM, or the occupied extent with ``fit``).
        """
        *lead, T, h, w = x.shape
        grid = self.plane_grid(T) if fit else self.grid
        per = grid[0] * grid[1]
        P = math.ceil(T / per)
        H, W = self.extent(grid) if (fit and P == 1) else self.plane
        (ph, pw), (lh, lw) = self.pitch, self.lead
        x = F.pad(x, (0, 0, 0, 0, 0, P * per - T))  # ..., P*per, h, w
        x = F.pad(x, (0, pw - w, 0, ph - h))  # ..., P*per, ph, pw (guard below / right of each tile)
        x = x.reshape(*lead, P, grid[0], grid[1], ph, pw).transpose(-3, -2)  # ..., P, rows, ph, cols, pw
        x = x.reshape(*lead, P, grid[0] * ph, grid[1] * pw)  # ..., P, rows*ph, cols*pw
        return F.pad(x, (lw, W - lw - grid[1] * pw, lh, H - lh - grid[0] * ph))  # ..., P, H, W (crops spare guard)

    def plane_grid(self, tiles: int) -> tuple[int, int]:
        """The grid :meth:`to_planes` uses with ``fit=True`` for ``tiles`` tiles."""
        return self.used_grid(tiles) if tiles <= self.tiles_per_plane else self.grid

    def read(self, camera: torch.Tensor, grid: tuple[int, int], offset: int | None = None) -> torch.Tensor:
        """Read every tile's output pixels from camera planes laid out like :meth:`to_planes`.

        Args:
            camera: ``(..., P, H, W)`` camera planes.
            grid: the tile grid of the planes (:meth:`plane_grid`).
            offset: camera row/column of tile 0's first read pixel (default ``context``).

        Returns:
            ``(..., P * rows * cols, oh, ow)`` (tiles in plane order, including empty slots).
        """
        *lead, P, H, W = camera.shape
        (ph, pw), (oh, ow), (sh, sw) = self.pitch, self.out, self.stride
        o = self.context if offset is None else offset
        need_h, need_w = o + grid[0] * ph, o + grid[1] * pw
        if need_h > H or need_w > W:  # the last tile's guard may lie beyond the simulated plane
            camera = F.pad(camera, (0, max(0, need_w - W), 0, max(0, need_h - H)))
        cam = camera[..., o:need_h, o:need_w]
        cam = cam.unflatten(-2, (grid[0], ph)).unflatten(-1, (grid[1], pw))  # ..., P, rows, ph, cols, pw
        cam = cam[..., : (oh - 1) * sh + 1 : sh, :, : (ow - 1) * sw + 1 : sw]  # ..., P, rows, oh, cols, ow
        return cam.transpose(-3, -2).reshape(*lead, P * grid[0] * grid[1], oh, ow)  # ..., P*per, oh, ow

    def windows(self, x: torch.Tensor) -> torch.Tensor:
        """Every tile's input window ``(..., T, win_h, win_w)`` from content maps ``(..., T, h, w)``.

        The window of a tile holds whatever the plane holds there: its own map, guard zeros and,
        when the guard is narrower than the window's reach, the edges of neighbouring tiles.
        """
        *lead, T, h, w = x.shape
        (wh, ww), (lh, lw) = self.window, self.lead
        if self.isolated:  # only zeros around each tile: pad, no plane needed
            return F.pad(x, (lw, ww - lw - w, lh, wh - lh - h))
        planes = self.to_planes(x, fit=True)  # ..., P, H, W
        grid = self.plane_grid(T)
        (ph, pw) = self.pitch
        need_h, need_w = (grid[0] - 1) * ph + wh, (grid[1] - 1) * pw + ww
        planes = F.pad(planes, (0, max(0, need_w - planes.shape[-1]), 0, max(0, need_h - planes.shape[-2])))
        win = planes.unfold(-2, wh, ph).unfold(-2, ww, pw)  # ..., P, rows, cols, wh, ww
        win = win[..., : grid[0], : grid[1], :, :]
        return win.reshape(*lead, -1, wh, ww)[..., :T, :, :]  # ..., T, wh, ww

    def describe(self) -> str:
        (h, w), (r, c), (H, W) = self.tile, self.grid, self.plane
        return f"{h}x{w} tiles, guard {self.guard[0]}x{self.guard[1]}, {r}x{c} = {r * c} per {H}x{W} plane"
