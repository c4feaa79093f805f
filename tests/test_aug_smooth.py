"""``explain(aug_smooth=True)``: the mean over flipped and brightened copies, each map flipped
back, for the classes of the clean input; it works for every map method."""

from __future__ import annotations

import pytest
import torch

import camkit

TOL = dict(atol=1e-5, rtol=1e-5)


def minmax(maps: torch.Tensor) -> torch.Tensor:
    low = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - low
    return (maps - low) / (span + 1e-7)


@pytest.mark.parametrize("method", ["gradcam", "fem", "guided-backprop"])
def test_aug_smooth_is_the_mean_of_flipped_back_maps(deep, images, method):
    smoothed = camkit.explain(deep, images, None, method, "body", aug_smooth=True)
    classes = deep(images).argmax(dim=1)
    total = torch.zeros_like(smoothed[method])
    for flip in (False, True):
        for factor in (0.9, 1.0, 1.1):
            x = images.flip(-1) if flip else images
            maps = camkit.explain(deep, x * factor, classes, method, "body")[method]
            total += maps.flip(-1) if flip else maps
    torch.testing.assert_close(smoothed[method], minmax(total / 6), **TOL)
    assert smoothed.targets[:, 0].tolist() == classes.tolist()


def test_aug_smooth_keeps_the_clean_scores_and_reports_its_augmentations(tiny, images):
    plain = camkit.explain(tiny, images, [1, 2, 3], "gradcam", "features")
    smoothed = camkit.explain(tiny, images, [1, 2, 3], "gradcam", "features", aug_smooth=True)
    torch.testing.assert_close(smoothed.scores, plain.scores)
    assert len(smoothed.details["aug_smooth"]["augmentations"]) == 6
    assert smoothed.raw["gradcam"].shape == plain.raw["gradcam"].shape
