"""Models by name: packaged EfficientNet-Lite0, torchvision models from local files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from camkit.capture.layers import choose_layer
from camkit.data import imagenet_samples, load_image
from camkit.targets import class_index
from camkit.zoo import LoadedModel, available_archs, imagenet_classes, load_model

CLASSES = imagenet_classes()


@pytest.fixture(scope="module")
def lite() -> LoadedModel:
    return load_model()


@pytest.fixture(scope="module")
def resnet18() -> LoadedModel:
    torch.manual_seed(0)
    return load_model("resnet18", random_init=True)


def test_lite0_loads_silently(capsys: pytest.CaptureFixture[str]) -> None:
    loaded = load_model("efficientnet-lite0")
    assert capsys.readouterr().out == ""
    assert not loaded.model.training
    assert loaded.input_size == 224 and len(loaded.class_names) == 1000
    assert loaded.layer == "_bn1.act"


def test_lite0_classifies_the_imagenet_samples(lite: LoadedModel) -> None:
    files = imagenet_samples()
    x = torch.stack([lite.preprocess(load_image(f.path)) for f in files])
    labels = torch.tensor([f.label for f in files])
    assert x.shape == (20, 3, 224, 224)
    with torch.no_grad():
        top5 = lite.model(x).topk(5, dim=1).indices
    # Measured: 20/20 in the top 5, 17/20 top-1.
    assert (top5 == labels[:, None]).any(dim=1).sum() >= 18
    assert (top5[:, 0] == labels).sum() >= 15


def test_lite0_default_layer_is_the_post_activation_head(lite: LoadedModel) -> None:
    from efficientnet_lite_pytorch import EfficientNet

    captured: list[torch.Tensor] = []
    layer = dict(lite.model.named_modules())[lite.layer]
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    x = torch.randn(2, 3, 224, 224)
    try:
        with torch.no_grad():
            logits = lite.model(x)
    finally:
        handle.remove()
    (head,) = captured  # called once per forward, unlike the package's shared ``_swish``
    assert head.shape == (2, 1280, 7, 7) and head.min() >= 0 and head.max() <= 6
    # CAM's premise: the logits are the classifier applied to this map's spatial mean.
    torch.testing.assert_close(lite.model._fc(head.mean((2, 3))), logits)
    # And the separate activation changes nothing: same outputs as the package's own model.
    original = EfficientNet.from_name("efficientnet-lite0").eval()
    original.load_state_dict(lite.model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(original(x), logits)
    # The automatic choice (last spatial output) lands on the same features.
    assert choose_layer(lite.model, (x,)) == "_bn1"
    assert "_swish" not in dict(lite.model.named_children())  # no module fires twice


def test_lite0_runs_through_the_folded_copy(lite: LoadedModel) -> None:
    """The head's batch norm + activation module traces (torch.fx), so explain's forward pass
    runs the folded channels-last copy, with the maps of the model itself."""
    from camkit import explain
    from camkit.capture import folding

    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    fast = explain(lite.model, x, None, "gradcam", lite.layer)
    kept = folding._kept[lite.model]
    assert kept.model is not None and not kept.problem
    plain = explain(lite.model, x, None, "gradcam", lite.layer, fast=False)
    torch.testing.assert_close(fast["gradcam"], plain["gradcam"], rtol=0, atol=1e-4)


def test_torchvision_random_init(resnet18: LoadedModel) -> None:
    assert resnet18.layer == "layer4" and resnet18.input_size == 224
    assert not resnet18.model.training
    assert resnet18.class_names == CLASSES
    assert resnet18.preprocess.crop_fraction == pytest.approx(224 / 256)
    assert resnet18.preprocess.mean == pytest.approx((0.485, 0.456, 0.406))


def test_torchvision_needs_weights() -> None:
    with pytest.raises(ValueError, match="random_init=True"):
        load_model("resnet18")


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, msg=name)


def test_state_dict_file_round_trip(resnet18: LoadedModel, tmp_path: Path) -> None:
    state = resnet18.model.state_dict()
    plain, wrapped, safe = tmp_path / "r.pth", tmp_path / "ckpt.pt", tmp_path / "r.safetensors"
    torch.save(state, plain)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    save_file({k: v.contiguous() for k, v in state.items()}, safe)
    for path in (plain, wrapped, safe):
        _assert_same_weights(load_model("resnet18", weights=path).model, resnet18.model)


def test_weights_of_another_arch_or_no_file(resnet18: LoadedModel, tmp_path: Path) -> None:
    path = tmp_path / "r18.pth"
    torch.save(resnet18.model.state_dict(), path)
    with pytest.raises(ValueError, match="do not fit mobilenet_v3_small"):
        load_model("mobilenet_v3_small", weights=path)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_model("resnet18", weights=tmp_path / "missing.pth")


def test_unknown_arch_suggests_close_names() -> None:
    with pytest.raises(ValueError, match="resnet50"):
        load_model("resnet5O")
    assert "efficientnet-lite0" in available_archs() and "vgg16" in available_archs()


@pytest.mark.parametrize(
    ("query", "index"),
    [("golden retriever", 207), ("Golden Retriever", 207), ("207", 207), (207, 207),
     ("tabby", 281), ("goldfish", 1), ("dalmat", 251),
     ("crane", 517), ("Crane Bird", 134)],  # an exact name wins over a longer one
)  # fmt: skip
def test_class_index(query: str | int, index: int) -> None:
    assert class_index(query, CLASSES) == index


@pytest.mark.parametrize(
    ("query", "message"),
    [("retriever", r"ambiguous: 205 \(flat-coated retriever\), 206 \(curly-coated"),
     ("goldn retriever", r"207 \(golden retriever\)"),
     ("zzzzqq", "pass the index"), ("1000", "out of range 0..999"), (-1, "out of range")],
)  # fmt: skip
def test_class_index_errors(query: str | int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        class_index(query, CLASSES)
