"""The packaged pretrained EfficientNet-Lite0 on a packaged real photo with a known box."""

from __future__ import annotations

import pytest
import torch

import camkit
from camkit.data import quokka, resize_annotated
from camkit.zoo import load_model

GRADIENT_METHODS = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"]


@pytest.fixture(scope="module")
def lite0():
    return load_model("efficientnet-lite0")


def test_gradcam_peak_lies_on_the_quokka(lite0):
    sample = quokka()
    view = resize_annotated(sample, lite0.input_size, lite0.preprocess.crop_fraction)
    x = lite0.preprocess(sample.image).unsqueeze(0)
    expl = camkit.explain(lite0.model, x, None, GRADIENT_METHODS, lite0.layer)
    x1, y1, x2, y2 = view.box
    mask = torch.from_numpy(view.mask)
    for method in GRADIENT_METHODS:
        heat = expl[method][0, 0]
        row, col = divmod(int(heat.argmax()), heat.shape[1])
        assert x1 <= col <= x2 and y1 <= row <= y2, f"{method} peak ({col}, {row}) off the box"
        inside, area = float(heat[mask].sum() / heat.sum()), float(mask.float().mean())
        assert inside > 1.5 * area, f"{method}: {inside:.0%} of the energy on {area:.0%} area"


def test_automatic_layer_gives_the_default_layer_maps(lite0):
    x = lite0.preprocess(quokka().image).unsqueeze(0)
    auto = camkit.explain(lite0.model, x, 0)
    default = camkit.explain(lite0.model, x, 0, layer=lite0.layer)
    torch.testing.assert_close(auto.raw["gradcam"], default.raw["gradcam"])
