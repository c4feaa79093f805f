"""P(M) through separable interpolation matrices equals min-max of ``F.interpolate``."""

import pytest
import torch
from torch.nn import functional as F

from camkit.postprocess import (
    extreme_rows,
    interpolation_matrix,
    postprocess,
    upsampled_range,
)

SIZES = [((7, 7), (224, 224)), ((4, 5), (16, 12)), ((3, 3), (7, 9)), ((10, 10), (5, 5)),
         ((2, 3), (224, 100)), ((13, 17), (200, 151)), ((1, 4), (9, 9))]


def batch(shape: tuple[int, int], seed: int) -> torch.Tensor:
    """Maps with flat stretches (ties at the extremes) and a range of scales."""
    torch.manual_seed(seed)
    maps = torch.randn(2, 3, *shape) * torch.logspace(-3, 3, 3)[None, :, None, None]
    maps[1] = maps[1].clamp(min=0.2)
    return maps


@pytest.mark.parametrize(("small", "size"), SIZES)
def test_the_matrix_is_torchs_bilinear_interpolation(small, size):
    maps = batch(small, 0)
    expected = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    along_h, along_w = (interpolation_matrix(n, m) for n, m in zip(small, size, strict=True))
    scale = maps.abs().amax(dim=(2, 3), keepdim=True)  # float32 rounding is relative to it
    torch.testing.assert_close((along_h @ maps @ along_w.T) / scale, expected / scale,
                               rtol=0, atol=2e-6)


@pytest.mark.parametrize(("small", "size"), SIZES)
def test_the_extremes_of_an_upsampled_map_lie_on_the_extreme_rows(small, size):
    maps = batch(small, 1)
    full = F.interpolate(maps, size=size, mode="bilinear", align_corners=False).flatten(2)
    along_h, along_w = (interpolation_matrix(n, m) for n, m in zip(small, size, strict=True))
    low, high = upsampled_range(maps, along_h[extreme_rows(along_h)],
                                along_w[extreme_rows(along_w)])
    scale = full.abs().amax(dim=2)
    torch.testing.assert_close(low.flatten(2)[..., 0] / scale, full.amin(dim=2) / scale,
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(high.flatten(2)[..., 0] / scale, full.amax(dim=2) / scale,
                               rtol=0, atol=1e-6)


def test_a_few_rows_suffice():
    rows = extreme_rows(interpolation_matrix(7, 224))
    assert len(rows) <= 2 * 8 and rows[0] == 0 and rows[-1] == 223


@pytest.mark.parametrize(("small", "size"), SIZES + [((6, 6), (6, 6))])
@pytest.mark.parametrize("relu", [True, False])
def test_postprocess_is_min_max_of_the_interpolated_map(small, size, relu):
    raw = batch(small, 2)
    before = raw.clone()
    maps, constant = postprocess(raw, size, relu)
    assert torch.equal(raw, before)
    clipped = raw.clamp(min=0) if relu else raw
    up = F.interpolate(clipped, size=size, mode="bilinear", align_corners=False).flatten(2)
    low, high = up.amin(dim=2, keepdim=True), up.amax(dim=2, keepdim=True)
    expected = ((up - low) / (high - low + 1e-7)).view_as(maps)
    expected[constant] = 0
    torch.testing.assert_close(maps, expected, rtol=0, atol=1e-5)
    assert float(maps.min()) >= 0 and float(maps.max()) <= 1
    flat = clipped.flatten(2)
    assert torch.equal(constant, flat.amax(dim=2) - flat.amin(dim=2)
                       <= 1e-5 * flat.abs().amax(dim=2))


@pytest.mark.parametrize("side", [1, 2])
def test_a_constant_small_map_is_flagged_before_upsampling_ripples(side):
    """A 1 × 1 or 2 × 2 layer (a ResNet on 32 × 32 images): the constant raw map must not
    become a full-scale striped map after bilinear upsampling and min-max."""
    raw = torch.full((1, 2, side, side), 4.8857)
    raw[0, 1, 0, 0] *= 1 + 1e-7  # a rounding-size difference is constant too
    maps, constant = postprocess(raw, (224, 224))
    assert constant.all() and torch.equal(maps, torch.zeros_like(maps))
    varying = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    maps, constant = postprocess(varying, (224, 224))
    assert not constant.any() and float(maps.max()) == pytest.approx(1.0, abs=1e-6)
