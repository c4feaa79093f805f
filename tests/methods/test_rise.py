"""RISE against a mask-by-mask, image-by-image loop, and its identities: the masks keep a
``keep`` share of the input on average, and a model that ignores its input gets its own
score as saliency everywhere."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

import camkit
from camkit.methods import rise

TOL = dict(atol=1e-5, rtol=1e-5)


def slow_masks(grids: torch.Tensor, shifts: torch.Tensor, size: tuple[int, int]) -> list:
    """Each mask on its own: upsample its grid, slice the window at its shift."""
    s = grids.shape[-1]
    cell = (math.ceil(size[0] / s), math.ceil(size[1] / s))
    out = []
    for grid, (dy, dx) in zip(grids, shifts.tolist(), strict=True):
        up = F.interpolate(grid[None, None].float(), size=((s + 1) * cell[0], (s + 1) * cell[1]),
                           mode="bilinear", align_corners=False)[0, 0]
        out.append(up[dy:dy + size[0], dx:dx + size[1]])
    return out


def test_masks_match_a_slice_per_mask():
    gen = torch.Generator().manual_seed(0)
    grids = torch.rand(5, 3, 3, generator=gen) < 0.5
    shifts = torch.randint(0, 4, (5, 2), generator=gen)
    fast = rise.rise_masks(grids, shifts, (10, 11))
    for fast_mask, slow_mask in zip(fast, slow_masks(grids, shifts, (10, 11)), strict=True):
        torch.testing.assert_close(fast_mask, slow_mask)


def test_rise_matches_slow_loops(tiny, images):
    n, cells, keep, seed = 30, 3, 0.4, 7
    targets = [[0, 2], [1, 3], [4, 0]]
    expl = camkit.explain(tiny, images, targets, "rise", "features", seed=seed, num_masks=n,
                          cells=cells, keep=keep, batch_size=7)
    gen = torch.Generator().manual_seed(seed)  # the draws in the method's order
    grids = torch.rand((n, cells, cells), generator=gen) < keep
    shifts = torch.stack([torch.randint(0, math.ceil(8 / cells), (n,), generator=gen)
                          for _ in range(2)], dim=1)
    masks = slow_masks(grids, shifts, (8, 8))
    for b in range(3):
        for t, cls in enumerate(targets[b]):
            expected = torch.zeros(8, 8)
            for mask in masks:
                with torch.no_grad():
                    prob = tiny(images[b:b + 1] * mask).softmax(dim=1)[0, cls]
                expected += prob * mask
            torch.testing.assert_close(expl.raw["rise"][b, t], expected / (n * keep), **TOL)


class Constant(nn.Module):
    """Scores ``[2, -1]`` whatever the input; the conv only gives a layer to name."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(1, 2, 3))[:, None] * 0 + torch.tensor([2.0, -1.0])


def test_a_model_that_ignores_its_input_gets_its_score_everywhere(images):
    expl = camkit.explain(Constant(), images[:1], 0, "rise", "conv", num_masks=3000, cells=2,
                          probability=False)
    saliency = expl.raw["rise"][0, 0]
    assert abs(float(saliency.mean()) - 2.0) < 0.05  # E[M] = keep, so E[S] = f
    assert float(saliency.std()) < 0.1


def test_batches_do_not_change_the_maps(tiny, images):
    whole = camkit.explain(tiny, images, 1, "rise", "features", num_masks=20)
    small = camkit.explain(tiny, images, 1, "rise", "features", num_masks=20, batch_size=3)
    torch.testing.assert_close(whole.raw["rise"], small.raw["rise"], **TOL)
    assert small.details["rise"]["evaluations"] == 60
