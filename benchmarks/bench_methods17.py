"""Issue 17's methods side by side with the peers: map equality and speed on the same work.

Models, layers and images are bench_gradient's: torchvision resnet50 (random weights, seed 0,
``layer4``) and the pretrained EfficientNet-Lite0 (``_bn1``) on ImageNet photos from
``foolbox``, 224×224, batch of 8, the top-1 class of each image. The peers are grad-cam 1.5.7
(``pytorch_grad_cam``) and torchcam 0.5.0 (``pip install -e .[bench]``); they are imported here
only.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

import camkit
from bench_gradient import (
    Case,
    as_gradcam_lib,
    as_torchcam,
    cases,
    layer_pass,
    max_diff,
    minmax,
    weighted,
)
from camkit.targets import Finer
from common import Row, interleaved_samples, nearer_sign, paired_ratio, row, settings, setup

MAPS, SPEED = "methods17-maps", "methods17-speed"
SAME = "<= 1e-4"
SEED = 0  # camkit's explain(seed=...) and torch.manual_seed before torchcam: the same noise
SMOOTH = dict(num_samples=4, noise_std=0.3)  # torchcam's defaults
RISE_MASKS = 400
DFF_CONCEPTS = 5
SPEED_CASE = "efficientnet-lite0"  # the speed rows run on one model (2 shared cores)
ROUNDS_S = 30  # each speed row times as many rounds as fit in about this (3 to REPEATS)

DESCRIPTIONS = {
    MAPS: (
        "Each peer's output is compared with camkit's raw map put through that peer's own "
        "post-processing (bench_gradient's `gradient-maps` explains both): grad-cam normalises "
        "at the layer's resolution, resizes, normalises again; torchcam normalises at the "
        "layer's resolution. FullGrad's maps are at the input's resolution in both libraries "
        "and are compared as returned. SmoothGrad-CAM++ draws the same noise in both (camkit's "
        "seeded generator and torch's global one give the same normal draws, one (B, C, H, W) "
        "draw per sample). Where the definitions differ, an `explained` row recomputes the "
        "peer's variant from independently captured activations and gradients."
    ),
    SPEED: (
        "EfficientNet-Lite0 (DFF on both models): the same maps for the same batch of 8, each"
        " library called as its documentation shows (grad-cam: the CAM object in a `with` "
        "block, numpy maps at 224×224; torchcam: the extractor, a forward pass, the "
        "extractor's call; DFF: grad-cam's `DeepFeatureFactorization` object called on the "
        "batch and camkit's `factorize`, both scoring the concepts with the classifier). "
        "Times are medians, the ratio the median of per-round ratios, timed round-robin, as "
        "many rounds as fit in about 30 s after a warm-up round (3 to 15). "
        "RISE has no peer: its row compares its evaluations with plain no-grad forward "
        "passes of as many images."
    ),
}


def grad_cam_peer(cam_name: str, case: Case, x: Tensor, classes: Tensor,
                  target: str = "ClassifierOutputTarget", **smoothing: bool) -> Tensor:
    """grad-cam: ``(B, 224, 224)`` maps; FullGrad takes no target layer (it uses them all),
    FinerCAM chooses its own targets."""
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils import model_targets

    layers = [] if cam_name == "FullGrad" else [case.module]
    targets = None if cam_name == "FinerCAM" else [getattr(model_targets, target)(int(c))
                                                   for c in classes]
    with getattr(pgc, cam_name)(case.model, target_layers=layers) as cam:
        maps = cam(input_tensor=x, targets=targets, **smoothing)
    case.model.zero_grad(set_to_none=True)  # grad-cam accumulated parameter gradients
    return torch.from_numpy(maps)


def torchcam_smooth(case: Case, x: Tensor, classes: Tensor) -> Tensor:
    """torchcam's SmoothGradCAMpp: ``(B, h, w)`` maps, normalised at the layer's resolution."""
    from torchcam.methods import SmoothGradCAMpp

    with SmoothGradCAMpp(case.model, case.layer, num_samples=SMOOTH["num_samples"],
                         std=SMOOTH["noise_std"]) as extractor:
        scores = case.model(x)
        torch.manual_seed(SEED)
        (maps,) = extractor(classes.tolist(), scores)
    return maps.detach()


def rest(classes: Tensor) -> Callable[[Tensor], Tensor]:
    """Shapley-CAM's ReST score ``y_c + log p_c`` (grad-cam's ``ClassifierOutputReST``)."""
    return lambda out: (out.gather(1, classes[:, None]) + out.log_softmax(dim=1).gather(
        1, classes[:, None]))


@dataclass(frozen=True)
class Peer:
    """A camkit method and its targets, the peer that has it, the peer's call, and how
    camkit's map is brought to the peer's post-processing."""

    name: str
    method: str
    library: str
    call: Callable[[Case, Tensor, Tensor], Tensor]
    camkit_as_peer: Callable[[Tensor, Tensor], Tensor]  # (raw, public) first targets → peer's
    targets: Callable[[Tensor], object] = lambda classes: classes
    options: tuple[tuple[str, object], ...] = ()
    note: str = ""
    up_to_sign: bool = False  # a principal vector's sign is arbitrary: compare either sign


def _grad_cam(name: str, target: str = "ClassifierOutputTarget", **smoothing: bool
              ) -> Callable[[Case, Tensor, Tensor], Tensor]:
    return lambda case, x, classes: grad_cam_peer(name, case, x, classes, target, **smoothing)


def _as_grad_cam(raw: Tensor, public: Tensor) -> Tensor:
    return as_gradcam_lib(raw)


PEERS = [
    Peer("gradcam-elementwise", "gradcam-elementwise", "grad-cam",
         _grad_cam("GradCAMElementWise"), _as_grad_cam),
    Peer("fem", "fem", "grad-cam", _grad_cam("FEM"), _as_grad_cam),
    Peer("kpcacam", "kpcacam", "grad-cam", _grad_cam("KPCA_CAM"), _as_grad_cam,
         note="grad-cam runs scikit-learn's KernelPCA image by image"),
    Peer("fullgrad", "fullgrad", "grad-cam", _grad_cam("FullGrad"), lambda raw, public: public),
    Peer("shapleycam (ReST target)", "shapleycam", "grad-cam",
         _grad_cam("ShapleyCAM", "ClassifierOutputReST"), _as_grad_cam, rest,
         note="the score y_c + log p_c of the paper, so that the Hessian does not vanish"),
    Peer("finer-cam (gradcam, Finer target)", "gradcam", "grad-cam", _grad_cam("FinerCAM"),
         _as_grad_cam, lambda classes: Finer(),
         note="three nearest classes by logit, α = 1; grad-cam's default base method"),
    Peer("gradcam eigen_smooth", "gradcam", "grad-cam", _grad_cam("GradCAM", eigen_smooth=True),
         _as_grad_cam, options=(("eigen_smooth", True),), up_to_sign=True,
         note="up to the principal vector's sign: camkit turns it towards the strong features, "
              "grad-cam keeps the SVD's"),
    Peer("gradcam aug_smooth", "gradcam", "grad-cam", _grad_cam("GradCAM", aug_smooth=True),
         lambda raw, public: public, options=(("aug_smooth", True),),
         note="grad-cam averages its six normalised maps and stops; camkit normalises the "
              "mean again (its maps span [0, 1]), so grad-cam's mean is min-maxed here"),
    Peer("smoothgradcam++", "smoothgradcam++", "torchcam", torchcam_smooth,
         lambda raw, public: as_torchcam(raw, relu=True), options=tuple(SMOOTH.items()),
         note="torchcam's α sums A·D̄₃ over positions, its ReLU takes the last noisy sample's "
              "gradient and its map the last noisy sample's activations; see the explained row"),
]
DIFFERENT = {"smoothgradcam++"}


def camkit_call(peer: Peer, case: Case, x: Tensor, classes: Tensor) -> camkit.Explanation:
    return camkit.explain(case.model, x, peer.targets(classes), peer.method, case.layer,
                          seed=SEED, **dict(peer.options))


def torchcam_smooth_variant(case: Case, x: Tensor, classes: Tensor) -> Tensor:
    """torchcam's SmoothGrad-CAM++ recomputed: ``α = D̄₂ / (2 D̄₂ + Σ_ab A·D̄₃ + 1e-8)`` with
    the clean activations ``A``, ``w = Σ α ReLU(g_n)`` with the last sample's gradient, and
    the map ``Σ w A_n`` with the last sample's activations."""
    clean, _ = layer_pass(case, x, classes)
    torch.manual_seed(SEED)
    normal = torch.distributions.normal.Normal(0.0, SMOOTH["noise_std"])
    square = cube = torch.zeros(())
    for _ in range(int(SMOOTH["num_samples"])):
        acts, grads = layer_pass(case, x + normal.sample(x.shape), classes)
        square, cube = square + grads.pow(2), cube + grads.pow(3)
    square, cube = square / SMOOTH["num_samples"], cube / SMOOTH["num_samples"]
    alpha = square / (2 * square + (cube * clean).sum(dim=(-2, -1), keepdim=True) + 1e-8)
    return weighted((alpha * grads.clamp(min=0)).sum(dim=(-2, -1)), acts)


def dff_rows(case: Case) -> list[Row]:
    """camkit.factorize against grad-cam's DFF (scikit-learn's NMF). NMF is not convex and the
    solvers differ, so the factorisations of the same layer activations are compared by their
    reconstruction error (grad-cam's ``dff`` function); the time is that of the same work, each
    library called as it documents it: the forward pass to the layer, the factorisation, the
    maps at the input's size and the classifier's scores of the concepts."""
    from pytorch_grad_cam import DeepFeatureFactorization
    from pytorch_grad_cam.feature_factorization.deep_feature_factorization import dff

    from camkit.capture.features import layer_features
    from camkit.dff import relative_error

    acts = layer_features(case.model, case.layer, case.x).nan_to_num(0.0)
    c = acts.shape[1]
    v = acts.transpose(0, 1).reshape(c, -1)
    shifted = v - v.amin(dim=1, keepdim=True)
    concepts, heat = dff(acts.numpy().copy(), DFF_CONCEPTS)
    w = torch.from_numpy(concepts).float() - v.amin(dim=1, keepdim=True)
    h = torch.from_numpy(heat).float().transpose(0, 1).reshape(DFF_CONCEPTS, -1)
    error = relative_error(shifted, w, h)
    classifier = case.model.get_submodule(case.fc)

    def theirs() -> object:
        factorization = DeepFeatureFactorization(case.model, case.module,
                                                 computation_on_concepts=classifier)
        try:
            return factorization(case.x, DFF_CONCEPTS)
        finally:
            factorization.activations_and_grads.release()

    calls = {"camkit": lambda: camkit.factorize(case.model, case.x, DFF_CONCEPTS, case.layer,
                                                classifier=classifier),
             "grad-cam": theirs}
    ours = calls["camkit"]().error
    times = interleaved_samples(calls, 1, 5)
    return [
        row(MAPS, f"{case.name} dff ({DFF_CONCEPTS} concepts): error camkit / grad-cam",
            ours / error, "×", f"‖V − WH‖/‖V‖ = {ours:.4f} (camkit: HALS, stops when a round "
            f"lowers the squared error by ≤ 1e-4 of it) vs {error:.4f} (scikit-learn NMF, "
            "coordinate descent)", "<= 1.01"),
        row(SPEED, f"{case.name} b8: dff camkit / grad-cam",
            paired_ratio(times["camkit"], times["grad-cam"]), "×",
            f"{1000 * float(np.median(times['camkit'])):.0f} ms vs "
            f"{1000 * float(np.median(times['grad-cam'])):.0f} ms", "<= 1.0"),
    ]


def top1(case: Case, x: Tensor) -> Tensor:
    with torch.no_grad():
        return case.model(x).argmax(dim=1)


def maps(case: Case) -> list[Row]:
    x = case.x
    classes = top1(case, x)
    rows, theirs = [], {}
    for peer in PEERS:
        expl = camkit_call(peer, case, x, classes)
        method = expl.raw[peer.method][:, 0]
        ours = peer.camkit_as_peer(method, expl[peer.method][:, 0])
        theirs[peer.name] = peer.call(case, x, classes)
        if peer.name == "gradcam aug_smooth":
            theirs[peer.name] = minmax(theirs[peer.name])
        note = peer.note
        if peer.up_to_sign:
            ours, flipped = nearer_sign(ours, peer.camkit_as_peer(-method, ours),
                                        theirs[peer.name])
            note += f" ({flipped} of {len(ours)} maps of the other sign)"
        goal = None if peer.name in DIFFERENT else SAME
        rows.append(row(MAPS, f"{case.name} {peer.name} vs {peer.library}",
                        max_diff(ours, theirs[peer.name]), "max |Δ|", note, goal))
    variant = as_torchcam(torchcam_smooth_variant(case, x, classes), True)
    rows.append(row(MAPS, f"{case.name} smoothgradcam++ explained: torchcam's variant",
                    max_diff(variant, theirs["smoothgradcam++"]), "max |Δ|",
                    "the same noise, torchcam's three choices recomputed", SAME))
    return rows


def speed(case: Case) -> list[Row]:
    x = case.x
    classes = top1(case, x)
    _, repeats = settings()
    rows = []
    for peer in PEERS:
        calls = {"camkit": lambda peer=peer: camkit_call(peer, case, x, classes),
                 peer.library: lambda peer=peer: peer.call(case, x, classes)}
        start = time.perf_counter()
        for call in calls.values():  # the warm-up round, which also sets the rounds
            call()
        rounds = round(ROUNDS_S / (time.perf_counter() - start))
        times = interleaved_samples(calls, 0, min(repeats, max(3, rounds)))
        ms = {name: 1000 * float(np.median(t)) for name, t in times.items()}
        rows.append(row(SPEED, f"{case.name} b8: {peer.name} camkit / {peer.library}",
                        paired_ratio(times["camkit"], times[peer.library]), "×",
                        f"{ms['camkit']:.0f} ms vs {ms[peer.library]:.0f} ms", "<= 1.0"))
    return rows + [rise_throughput(case)]


def rise_throughput(case: Case) -> Row:
    x = case.x[:1]
    plain = case.x[:1].expand(RISE_MASKS, -1, -1, -1).contiguous()

    def forwards() -> None:
        with torch.no_grad():
            for chunk in plain.split(64):
                case.model(chunk)

    calls = {"rise": lambda: camkit.explain(case.model, x, None, "rise", case.layer,
                                            num_masks=RISE_MASKS),
             "forwards": forwards}
    times = interleaved_samples(calls, 1, 3)
    return row(SPEED, f"{case.name} b1: rise ({RISE_MASKS} masks) / {RISE_MASKS} no-grad "
               "forwards", paired_ratio(times["rise"], times["forwards"]), "×",
               f"{1000 * float(np.median(times['rise'])):.0f} ms; masked inputs run the folded "
               "channels-last copy of the model in memory-bounded batches")


def run() -> list[Row]:
    setup(0)
    rows: list[Row] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant-map warnings of random-weight maps
        for case in cases():
            rows += maps(case) + dff_rows(case)
            if case.name == SPEED_CASE:
                rows += speed(case)
    return sorted(rows, key=lambda r: r["group"])
