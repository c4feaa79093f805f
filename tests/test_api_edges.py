"""``camkit.explain`` at its edges: an empty batch, text targets, a ViT without a layer, and a
model explained in training mode (its BatchNorm statistics stay as they were)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import camkit
from tests.models import TinyCNN


def test_a_batch_of_no_images_is_refused():
    with pytest.raises(ValueError, match="no images"):
        camkit.explain(TinyCNN(), torch.rand(0, 3, 8, 8), layer="features")


@pytest.mark.parametrize("targets", ["cat", ["cat", "dog"], [[0, "dog"]]])
def test_text_targets_point_to_class_index(targets):
    with pytest.raises(TypeError, match="class_index"):
        camkit.explain(TinyCNN(), torch.rand(2, 3, 8, 8), targets, layer="features")


def test_the_automatic_layer_of_a_vit_is_its_last_block_input():
    """Not the patch embedding (the last spatial output), nor the final norm (whose patch
    tokens get no gradient through the class token): the last block's first norm."""
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2,
                                               num_heads=2, hidden_dim=16, mlp_dim=32,
                                               num_classes=3)
    torch.nn.init.normal_(vit.heads.head.weight)
    x = torch.rand(1, 3, 32, 32)
    auto = camkit.explain(vit, x)
    assert auto.layer == "encoder.layers.encoder_layer_1.ln_1"
    explicit = camkit.explain(vit, x, layer="encoder.layers.-1.ln_1")
    torch.testing.assert_close(auto["gradcam"], explicit["gradcam"])
    assert auto.raw["gradcam"].abs().sum() > 0


def test_training_mode_leaves_batchnorm_statistics_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for methods in (["gradcam"], ["scorecam"], ["guided-backprop"]):
        camkit.explain(model, torch.rand(3, 3, 10, 10), 0, methods, "2", eval_mode=False)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert model.training
