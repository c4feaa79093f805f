"""Localisation: does the map fall on the object?

- Energy share inside a box or mask (ALGORITHMS §4.5: the embedding-Grad-CAM paper's "heat-map
  ratio", identical to Score-CAM's energy-based pointing game, Wang et al., CVPR-W 2020).
- Pointing game (Zhang et al., Top-down Neural Attention by Excitation Backprop, ECCV 2016 /
  IJCV 2018): a hit when the map's maximum lies on the object, within a tolerance of
  15 pixels.
- Grid pointing game (Böhle et al., Convolutional Dynamic Alignment Networks, CVPR 2021): on
  a grid of images of distinct classes, the share of the map's positive energy in the cell
  of the explained class.

Shapes: ``maps`` ``(B, K, H, W)`` (``expl[method]``); ``regions`` ``(B, K, H, W)`` bool (or
broadcastable to it); results are per-sample ``(B, K)``. A blank map (no positive energy, no
peak) scores 0: it shows nothing, so it finds nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

POINTING_TOLERANCE = 15  # pixels (Zhang et al.)


def _regions_for(maps: Tensor, regions: Tensor) -> Tensor:
    if maps.dim() != 4:
        raise ValueError(f"maps must be (B, K, H, W), got {tuple(maps.shape)}")
    if regions.shape[-2:] != maps.shape[-2:]:
        raise ValueError(
            f"regions {tuple(regions.shape)} must have the maps' resolution "
            f"{tuple(maps.shape[-2:])}; resize boxes and masks exactly as the image was resized"
        )
    try:
        return regions.to(maps.device, torch.bool).expand_as(maps)
    except RuntimeError:
        raise ValueError(f"regions {tuple(regions.shape)} do not broadcast to the maps "
                         f"{tuple(maps.shape)}") from None


def energy_share(maps: Tensor, regions: Tensor) -> Tensor:
    """``Σ_{p∈R} Ĥ(p) / Σ_p Ĥ(p)`` (ALGORITHMS §4.5) with ``Ĥ`` the map's positive part;
    ``(B, K, H, W)`` maps and regions → ``(B, K)`` in [0, 1]; 0 for a blank map."""
    regions = _regions_for(maps, regions)
    energy = maps.float().clamp(min=0).flatten(2)
    inside = (energy * regions.flatten(2)).sum(dim=2)
    total = energy.sum(dim=2)
    return inside / total.where(total > 0, 1.0)


def box_masks(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Boxes ``(..., 4)`` as ``(x1, y1, x2, y2)`` in pixels (x2, y2 exclusive) → bool masks
    ``(..., H, W)`` of the pixels whose centre lies in the box; a NaN box gives an empty mask."""
    if boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be (..., 4) as (x1, y1, x2, y2), got {tuple(boxes.shape)}")
    height, width = size
    boxes = boxes.float()
    ys = torch.arange(height, device=boxes.device) + 0.5
    xs = torch.arange(width, device=boxes.device) + 0.5
    x1, y1, x2, y2 = (c.unsqueeze(-1) for c in boxes.unbind(-1))
    inside_y = (ys >= y1) & (ys < y2)
    inside_x = (xs >= x1) & (xs < x2)
    return inside_y.unsqueeze(-1) & inside_x.unsqueeze(-2)


def dilate(regions: Tensor, radius: int) -> Tensor:
    """Regions ``(B, K, H, W)`` bool grown by every pixel within Euclidean distance
    ``radius`` (a disc-shaped convolution); ``radius = 0`` returns them unchanged."""
    if radius < 0:
        raise ValueError(f"the tolerance must be >= 0 pixels, got {radius}")
    if radius == 0:
        return regions
    offsets = torch.arange(-radius, radius + 1, device=regions.device, dtype=torch.float32)
    disc = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).float()
    flat = regions.flatten(0, 1).unsqueeze(1).float()
    grown = F.conv2d(flat, disc[None, None], padding=radius) > 0.5
    return grown.view(regions.shape)


def pointing_game(maps: Tensor, regions: Tensor,
                  tolerance: int = POINTING_TOLERANCE) -> Tensor:
    """Pointing game hits ``(B, K)`` of 1.0 or 0.0 (Zhang et al.): 1 when the map's
    maximum (the first in row-major order if tied) lies within ``tolerance`` pixels of the
    region; a constant map has no maximum and misses."""
    regions = _regions_for(maps, regions)
    flat = maps.flatten(2)
    peak = flat.argmax(dim=2, keepdim=True)
    near = dilate(regions, tolerance).flatten(2).gather(2, peak).squeeze(2)
    peaked = flat.amax(dim=2) > flat.amin(dim=2)
    return (near & peaked).float()


def grid_cell_masks(cells: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Masks ``(B, K, H, W)`` of grid cells ``cells`` ``(B, K)`` (``row · cols + col``; −1 for
    none) on a ``rows × cols`` grid over ``H × W``: pixel row ``y`` is in grid row
    ``⌊y · rows / H⌋``, likewise for columns."""
    rows, cols = grid
    height, width = size
    if not (1 <= rows <= height and 1 <= cols <= width):
        raise ValueError(f"a {rows}×{cols} grid does not fit an image of {height}×{width}")
    row_of = torch.arange(height, device=cells.device) * rows // height
    col_of = torch.arange(width, device=cells.device) * cols // width
    cell_of = row_of[:, None] * cols + col_of[None, :]
    return cell_of == cells[..., None, None]


def grid_pointing_game(maps: Tensor, cells: Tensor, grid: tuple[int, int]) -> Tensor:
    """Grid pointing game per sample ``(B, K)`` (Böhle et al. 2021): the
    :func:`energy_share` of each map inside the grid cell ``cells[b, k]`` of its class."""
    return energy_share(maps, grid_cell_masks(cells, grid, (maps.shape[-2], maps.shape[-1])))
