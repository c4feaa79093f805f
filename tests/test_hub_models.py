"""timm and Hugging Face transformers classifiers, random weights: valid maps with the
automatic layer choice, which is the one docs/tasks.md's table names, and with the layer it
recommends for transformers.

Skipped when timm or transformers is not installed (``pip install camkit[hub]``)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn

import camkit
from camkit.capture import find_layer

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

SIZE = 64

# family: (timm name, small-config overrides, recommended layer or None when the automatic
# choice is the one to use)
TIMM = {
    "ResNet": ("resnet18", {}, None),
    "ConvNeXt": ("convnext_atto", {}, None),
    "EfficientNet": ("efficientnet_b0", {}, None),
    "RegNet": ("regnetx_002", {}, None),
    "ViT": ("vit_tiny_patch16_224", {"img_size": SIZE, "depth": 2}, "blocks.-1.norm1"),
    "DeiT (distilled)": ("deit_tiny_distilled_patch16_224", {"img_size": SIZE, "depth": 2},
                         "blocks.-1.norm1"),
    "Swin": ("swin_tiny_patch4_window7_224",
             {"img_size": SIZE, "window_size": 2, "depths": (1, 1, 1, 1)},
             "layers.-1.blocks.-1.norm1"),
    "hybrid ViT (ResNet stem)": ("vit_tiny_r_s16_p8_224", {"img_size": SIZE, "depth": 2},
                                 "blocks.-1.norm1"),
}


def timm_model(name: str, overrides: dict) -> nn.Module:
    return timm.create_model(name, pretrained=False, num_classes=7, **overrides)


def hf_vit() -> nn.Module:
    config = transformers.ViTConfig(image_size=SIZE, patch_size=16, hidden_size=32,
                                    num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=64, num_labels=7)
    return transformers.ViTForImageClassification(config)


def hf_swin() -> nn.Module:
    config = transformers.SwinConfig(image_size=SIZE, patch_size=4, embed_dim=16, depths=[1, 1],
                                     num_heads=[1, 2], window_size=4, num_labels=7)
    return transformers.SwinForImageClassification(config)


def hf_convnext() -> nn.Module:
    config = transformers.ConvNextConfig(image_size=SIZE, num_stages=2, hidden_sizes=[8, 16],
                                         depths=[1, 1], num_labels=7)
    return transformers.ConvNextForImageClassification(config)


# transformers 5 calls ViT's blocks vit.layers, 4.x vit.encoder.layer: the test takes either.
HF: dict[str, tuple[Callable[[], nn.Module], str | None]] = {
    "ViTForImageClassification": (hf_vit, "vit.layers.-1.layernorm_before|"
                                          "vit.encoder.layer.-1.layernorm_before"),
    "SwinForImageClassification": (hf_swin, "swin.encoder.layers.-1.blocks.-1.layernorm_before"),
    "ConvNextForImageClassification": (hf_convnext, None),
}

# Where the automatic choice must be the recommended layer (the last block's first norm).
AUTO_IS_RECOMMENDED = {"ViT", "DeiT (distilled)", "hybrid ViT (ResNet stem)",
                       "ViTForImageClassification", "SwinForImageClassification"}

# The automatic layer of each family, as docs/tasks.md's table gives it.
AUTOMATIC = {
    "ResNet": "layer4", "ConvNeXt": "norm_pre", "EfficientNet": "bn2", "RegNet": "final_conv",
    "ViT": "blocks.-1.norm1", "DeiT (distilled)": "blocks.-1.norm1", "Swin": "norm",
    "hybrid ViT (ResNet stem)": "blocks.-1.norm1",
    "ViTForImageClassification": HF["ViTForImageClassification"][1],
    "SwinForImageClassification": HF["SwinForImageClassification"][1],
    "ConvNextForImageClassification": "convnext.encoder.stages.-1",
}

CASES = ([(family, lambda n=name, o=over: timm_model(n, o), layer)
          for family, (name, over, layer) in TIMM.items()]
         + [(family, make, layer) for family, (make, layer) in HF.items()])


def existing(model: nn.Module, names: list[str]) -> str:
    """The first of ``names`` that the model has."""
    for name in names:
        try:
            find_layer(model, name)
            return name
        except ValueError:
            continue
    raise AssertionError(f"the model has none of {names}")


def assert_valid(expl: camkit.Explanation, batch: int) -> None:
    for method in expl:
        maps = expl[method]
        assert maps.shape == (batch, 1, SIZE, SIZE)
        assert torch.isfinite(maps).all()
        assert float(maps.min()) >= 0 and float(maps.max()) <= 1
    assert not expl.constant["gradcam"].all(), f"every map of {expl.layer} is constant"


@pytest.mark.parametrize(("family", "make", "layer"), CASES, ids=[c[0] for c in CASES])
def test_valid_maps_with_automatic_and_recommended_layers(family, make, layer) -> None:
    torch.manual_seed(0)
    model = make().eval()
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    recommended = None if layer is None else existing(model, layer.split("|"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a constant map of random weights
        automatic = camkit.explain(model, x, None, ["gradcam", "eigencam"])
        assert_valid(automatic, 2)
        if recommended is not None:
            assert_valid(camkit.explain(model, x, None, ["gradcam", "eigencam"],
                                        layer=recommended), 2)
    assert automatic.scores.shape == (2, 1)
    documented = existing(model, str(AUTOMATIC[family]).split("|"))
    assert find_layer(model, automatic.layer) is find_layer(model, documented)
    if family in AUTO_IS_RECOMMENDED:
        assert find_layer(model, automatic.layer) is find_layer(model, recommended)
