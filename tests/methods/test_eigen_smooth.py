"""``explain(eigen_smooth=True)``: the first principal component of each method's channel
terms, which must add up to the method's own map."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import camkit
from camkit.methods import get_method

TOL = dict(atol=1e-5, rtol=1e-5)
WITH_TERMS = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam",
              "gradcam-elementwise", "fem", "shapleycam", "smoothgradcam++"]


def slow_first_component(terms: torch.Tensor) -> torch.Tensor:
    """``(C, h, w)`` terms → ``(h, w)``: centre the positions × channels matrix, project on its
    top right singular vector (numpy's SVD in float64)."""
    c, h, w = terms.shape
    matrix = terms.reshape(c, -1).T.double().numpy()
    matrix = matrix - matrix.mean(axis=0)
    _, _, vt = np.linalg.svd(matrix, full_matrices=False)
    return torch.from_numpy(matrix @ vt[0]).float().reshape(h, w)


@pytest.mark.parametrize("method", WITH_TERMS)
def test_channel_terms_add_up_to_the_map(deep, images, method):
    expl = camkit.explain(deep, images, [[0, 2]] * 3, method, "body")
    captured: dict = {}
    original = get_method(method).channel_terms

    def spy(layer_pass, **options):
        captured["terms"] = original(layer_pass, **options)
        return captured["terms"]

    object.__setattr__(get_method(method), "channel_terms", spy)
    try:
        smoothed = camkit.explain(deep, images, [[0, 2]] * 3, method, "body", eigen_smooth=True)
    finally:
        object.__setattr__(get_method(method), "channel_terms", original)
    terms = captured["terms"]
    torch.testing.assert_close(terms.sum(dim=2), expl.raw[method], **TOL)
    for b in range(3):
        for t in range(2):
            expected = slow_first_component(terms[b, t])
            got = smoothed.raw[method][b, t]
            sign = 1.0 if float((got * expected).sum()) >= 0 else -1.0  # an SVD's sign is free
            torch.testing.assert_close(got, sign * expected, atol=1e-4, rtol=1e-4)


def test_methods_without_channel_terms_are_refused(tiny, images):
    with pytest.raises(ValueError, match="eigen_smooth needs maps that are sums"):
        camkit.explain(tiny, images, None, ["gradcam", "guided-backprop"], "features",
                       eigen_smooth=True)
