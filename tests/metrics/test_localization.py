"""Energy share, boxes, pointing game and grid pointing game on hand-made maps."""

from __future__ import annotations

import math

import pytest
import torch

from camkit.metrics import (
    box_masks,
    energy_share,
    grid_cell_masks,
    grid_pointing_game,
    pointing_game,
)
from camkit.metrics.localization import dilate


def square_mask(size=6, top=1, left=2, side=3):
    mask = torch.zeros(1, 1, size, size, dtype=torch.bool)
    mask[..., top : top + side, left : left + side] = True
    return mask


def test_energy_share_by_hand():
    mask = square_mask()
    inside = mask.float()
    assert energy_share(inside, mask).item() == 1.0  # a map that is 1 inside the mask
    assert energy_share(1 - inside, mask).item() == 0.0
    assert energy_share(torch.ones(1, 1, 6, 6), mask).item() == pytest.approx(9 / 36)
    assert energy_share(torch.zeros(1, 1, 6, 6), mask).item() == 0.0  # blank map: nothing found
    signed = inside * 2 - 1  # −1 outside: only the positive part counts
    assert energy_share(signed, mask).item() == 1.0
    half = torch.zeros(1, 1, 6, 6)
    half[..., 1, 2], half[..., 0, 0] = 3.0, 1.0
    assert energy_share(half, mask).item() == pytest.approx(0.75)


def test_energy_share_broadcasts_one_region_over_targets_and_checks_size():
    maps = torch.rand(2, 3, 6, 6)
    assert energy_share(maps, square_mask()).shape == (2, 3)
    with pytest.raises(ValueError, match="resolution"):
        energy_share(maps, torch.ones(1, 1, 5, 5, dtype=torch.bool))


def test_box_masks_by_hand():
    masks = box_masks(torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.4, 0.0, 1.6, 1.0],
                                    [math.nan] * 4]), (5, 5))
    expected = torch.zeros(5, 5, dtype=torch.bool)
    expected[2:4, 1:3] = True  # rows y1..y2−1, columns x1..x2−1
    assert torch.equal(masks[0], expected)
    assert masks[1].nonzero().tolist() == [[0, 0], [0, 1]]  # pixel centres 0.5 and 1.5
    assert not masks[2].any()
    with pytest.raises(ValueError, match="x1, y1, x2, y2"):
        box_masks(torch.zeros(3), (4, 4))


def test_pointing_game_on_hand_made_maps():
    mask = square_mask()
    on = torch.zeros(1, 1, 6, 6)
    on[..., 2, 3] = 1.0
    off = torch.zeros(1, 1, 6, 6)
    off[..., 5, 0] = 1.0
    maps = torch.cat([on, off, torch.zeros(1, 1, 6, 6)], dim=1)
    assert pointing_game(maps, mask, tolerance=0).tolist() == [[1.0, 0.0, 0.0]]  # blank: miss
    # (5, 0) is at distance √(2² + 2²) ≈ 2.83 from the mask's nearest pixel (3, 2)
    assert pointing_game(off, mask, tolerance=2).item() == 0.0
    assert pointing_game(off, mask, tolerance=3).item() == 1.0
    tie = torch.zeros(1, 1, 6, 6)
    tie[..., 0, 0] = tie[..., 2, 3] = 1.0  # tied maxima: the first in row-major order counts
    assert pointing_game(tie, mask, tolerance=0).item() == 0.0


def test_dilate_equals_a_distance_loop():
    regions = torch.rand(2, 1, 9, 9, generator=torch.Generator().manual_seed(0)) > 0.9
    for radius in (0, 1, 2, 3):
        grown = dilate(regions, radius)
        for b in range(2):
            points = regions[b, 0].nonzero().tolist()
            for y in range(9):
                for x in range(9):
                    near = any((y - py) ** 2 + (x - px) ** 2 <= radius**2 for py, px in points)
                    assert bool(grown[b, 0, y, x]) == near
    with pytest.raises(ValueError, match="tolerance"):
        dilate(regions, -1)


def test_grid_cells_by_hand():
    cells = grid_cell_masks(torch.tensor([[0, 5, -1]]), (2, 3), (4, 6))
    assert cells[0, 0].nonzero().tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert cells[0, 1].nonzero().tolist() == [[2, 4], [2, 5], [3, 4], [3, 5]]
    assert not cells[0, 2].any()
    uneven = grid_cell_masks(torch.tensor([[3]]), (2, 2), (5, 5))  # rows ⌊2y/5⌋: 0,0,0,1,1
    assert uneven[0, 0].nonzero().tolist() == [[3, 3], [3, 4], [4, 3], [4, 4]]
    with pytest.raises(ValueError, match="does not fit"):
        grid_cell_masks(torch.tensor([[0]]), (5, 1), (4, 4))


def test_grid_pointing_game_by_hand():
    maps = torch.zeros(1, 2, 4, 4)
    maps[0, 0, :2, :2] = 1.0  # all energy in the top-left cell
    maps[0, 1, :2, :2], maps[0, 1, 2:, 2:] = 1.0, 3.0
    value = grid_pointing_game(maps, torch.tensor([[0, 3]]), (2, 2))
    assert value.tolist() == [[1.0, 0.75]]
