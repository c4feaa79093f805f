"""Perturbation and decomposition methods against grad-cam and torchcam (CPU): Score-CAM speed
(fp32, bf16, max_channels) and maps, Score-CAM peak memory, Ablation-CAM speed and maps,
Eigen-CAM speed and maps.

Models: torchvision resnet18 and resnet50 with random weights (seed 0), layer ``layer4``;
inputs: real ImageNet photos shipped in ``foolbox`` (seeded noise when it is missing),
224×224. Run alone with ``python benchmarks/bench_perturbation.py``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torch.nn import functional as F

import camkit
from camkit import data, zoo
from camkit.capture import folding
from camkit.capture.batches import DEFAULT_MAX_BATCH_MEMORY, Batching, forward_bytes
from camkit.methods.score import channel_softmax_weights
from common import Row, interleaved_samples, nearer_sign, paired_ratio, row, setup

SCORE, MEMORY, ABLATION, EIGEN = ("scorecam-speed", "scorecam-memory", "ablationcam-speed",
                                  "eigencam-speed")
SAME = "<= 1e-4"

DESCRIPTIONS = {
    SCORE: (
        "Score-CAM on resnet18 `layer4` (512 channels, 7×7), one 224×224 image, its top-1 "
        "class: 512 masked forward passes for every library. camkit as called by default "
        "(`weight=\"class_prob\"`, batches from the 512 MiB budget, masked inputs and a "
        "batch-norm-folded copy of the model in channels-last layout); grad-cam `ScoreCAM` "
        "(default batch 16) and torchcam `ScoreCAM` (default batch 32) as their documentation "
        "shows. Times are medians of round-robin rounds; ratios are "
        "medians of per-round ratios. Map rows compare camkit's `channel_softmax` weighting "
        "(the one both libraries implement) through each library's post-processing; the "
        "`explained` rows feed each library's own masks (grad-cam: bilinear upsampling with "
        "`align_corners=True`; torchcam: normalise at 7×7, then upsample) through camkit's "
        "weighting and map functions. Quality rows use 4 photos (1 with `--quick`, where "
        "the resnet18 rows compare the timed maps). `layout` "
        "rows time one masked batch of camkit's default size through resnet18 per memory "
        "layout and precision."
    ),
    MEMORY: (
        "Peak resident memory added by one Score-CAM call on resnet50 `layer4` (2048 "
        "channels), one 224×224 image, measured in a child process (the model is "
        "loaded before the measurement starts and not counted). Each call runs in its own "
        "spawned interpreter. camkit with its default 512 MiB batch budget (and a folded copy "
        "of the model for the masked passes); grad-cam materialises all 2048 masked images at "
        "once."
    ),
    ABLATION: (
        "Ablation-CAM on resnet50 `layer4`, one 224×224 image, top-1 class: 2048 ablations. "
        "camkit re-runs only avgpool → fc after the layer (split path, torch.fx); grad-cam "
        "`AblationCAM` (default batch 32) re-runs the whole network for every ablation. Both "
        "ablate to 0 here: grad-cam switches to `min − 1e7` only when the layer's minimum "
        "activation is not 0, and a post-ReLU `layer4` has zeros."
    ),
    EIGEN: (
        "Eigen-CAM on resnet50 `layer4`, 8 images at 224×224, the whole call (forward pass and "
        "maps). camkit: one batched `torch.linalg.svd` (reduced); grad-cam: one numpy "
        "`svd(full_matrices=True)` per image. The SVD's sign is arbitrary; the map row "
        "compares up to sign and counts the maps whose sign agrees."
    ),
}


def photos(n: int) -> Tensor:
    """``(n, 3, 224, 224)`` normalised ImageNet photos (seeded noise without foolbox)."""
    try:
        files = data.imagenet_samples()[:n]
    except (ModuleNotFoundError, FileNotFoundError):
        return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    preprocess = data.Preprocess()
    return torch.stack([preprocess(data.load_image(f.path)) for f in files])


def resnet(name: str) -> nn.Module:
    setup(0)
    return getattr(torchvision.models, name)().eval()


def top1(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1)


def minmax(maps: Tensor, eps: float = 1e-7) -> Tensor:
    low = maps.amin(dim=(-2, -1), keepdim=True)
    return (maps - low) / (maps.amax(dim=(-2, -1), keepdim=True) - low + eps)


def resize(maps: Tensor) -> Tensor:
    """``(B, h, w)`` → ``(B, 224, 224)``, bilinear, ``align_corners=False``."""
    return F.interpolate(maps[:, None], size=(224, 224), mode="bilinear",
                         align_corners=False)[:, 0]


def as_gradcam_lib(raw: Tensor) -> Tensor:
    """grad-cam's post-processing of a ``(B, h, w)`` map: ReLU, min-max, resize, min-max."""
    return minmax(resize(minmax(raw.clamp(min=0))).clamp(min=0))


def as_torchcam(raw: Tensor) -> Tensor:
    """torchcam's post-processing at ``(h, w)``: ReLU, ``(M − min) / (max + 1e-8)``."""
    maps = raw.clamp(min=0)
    maps = maps - maps.amin(dim=(-2, -1), keepdim=True)
    return maps / (maps.amax(dim=(-2, -1), keepdim=True) + 1e-8)


def max_diff(a: Tensor, b: Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def spearman(a: Tensor, b: Tensor) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a.flatten().numpy(), b.flatten().numpy()).statistic)


@contextlib.contextmanager
def quiet() -> None:
    """Silence the peers' tqdm bars (stderr) and constant-map warnings."""
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# --- the peers, each as a user calls it -------------------------------------------------------

def gradcam_lib(method: str, model: nn.Module, x: Tensor, classes: Tensor) -> Tensor:
    """grad-cam: ``(B, 224, 224)`` maps in [0, 1]."""
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam_class = {"scorecam": pgc.ScoreCAM, "ablationcam": pgc.AblationCAM,
                 "eigencam": pgc.EigenCAM}[method]
    with quiet(), cam_class(model, target_layers=[model.layer4]) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in classes])
    return torch.from_numpy(maps)


def torchcam_scorecam(model: nn.Module, x: Tensor, classes: Tensor) -> Tensor:
    """torchcam: ``(B, 7, 7)`` Score-CAM maps, normalised."""
    from torchcam.methods import ScoreCAM

    with quiet(), ScoreCAM(model, "layer4") as extractor:
        with torch.no_grad():
            scores = model(x)
        (maps,) = extractor(class_idx=classes.tolist(), scores=scores)
    return maps


def camkit_call(model: nn.Module, x: Tensor, classes: Tensor, method: str,
                **options: object) -> camkit.Explanation:
    with quiet():
        return camkit.explain(model, x, classes, method, "layer4", **options)


# --- Score-CAM ----------------------------------------------------------------------------------

def library_mask_scorecam(model: nn.Module, x: Tensor, c: int, masks: Callable[[Tensor], Tensor],
                          acts: Tensor) -> Tensor:
    """Score-CAM with a library's masks ``(C, 224, 224)`` and camkit's weighting functions:
    ``channel_softmax_weights`` and the weighted sum, ``(1, 7, 7)``."""
    m = masks(acts)
    scores = []
    with torch.no_grad():
        for start in range(0, len(m), 32):
            scores.append(model(x * m[start:start + 32, None])[:, c])
        base = model(x)[:, c]
    channel_scores = torch.cat(scores)[None, None]
    selected = torch.ones(1, len(m), dtype=torch.bool)
    weights = channel_softmax_weights(channel_scores, base[:, None], selected)
    return torch.einsum("bc,bchw->bhw", weights[:, 0], acts[None])


def gradcam_lib_masks(acts: Tensor) -> Tensor:
    up = F.interpolate(acts[None], size=(224, 224), mode="bilinear", align_corners=True)[0]
    low = up.amin(dim=(1, 2), keepdim=True)
    return (up - low) / (up.amax(dim=(1, 2), keepdim=True) - low + 1e-8)


def torchcam_masks(acts: Tensor) -> Tensor:
    low = acts.amin(dim=(1, 2), keepdim=True)
    normalised = (acts - low) / ((acts - low).amax(dim=(1, 2), keepdim=True) + 1e-8)
    return F.interpolate(normalised[None], size=(224, 224), mode="bilinear",
                         align_corners=False)[0]


def scorecam_speed(model: nn.Module, x: Tensor, warmup: int, repeats: int) -> list[Row]:
    """Timings and ratios, plus the Spearman ρ of the timed bf16 and max_channels=64 maps to
    the timed fp32 map (one photo)."""
    classes = top1(model, x)
    last: dict[str, Tensor] = {}
    first_batch: list[float] = []  # of the compiled calls: compilation, then a cached model

    def ours(label: str, **options: object) -> Callable[[], object]:
        def call() -> None:
            expl = camkit_call(model, x, classes, "scorecam", **options)
            last[label] = expl["scorecam"]
            first_batch.extend([expl.details["scorecam"].get("first_batch_seconds", 0.0)]
                               if options.get("compile") else [])
        return call

    calls: dict[str, Callable[[], object]] = {
        "camkit fp32": ours("fp32"),
        "camkit fp32 compile": ours("compile", compile=True),
        "camkit bf16": ours("bf16", precision="bf16"),
        "camkit max_channels=64": ours("max_channels=64", max_channels=64),
        "grad-cam": lambda: gradcam_lib("scorecam", model, x, classes),
        "torchcam": lambda: torchcam_scorecam(model, x, classes),
    }
    times = interleaved_samples(calls, warmup=warmup, repeats=repeats)
    ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
    fastest = min(("grad-cam", "torchcam"), key=ms.__getitem__)
    rows = [row(SCORE, f"resnet18 b1: {name}", value, "ms") for name, value in ms.items()]
    rows += [
        row(SCORE, f"camkit fp32 / fastest peer ({fastest})",
            paired_ratio(times["camkit fp32"], times[fastest]), "×", "", "<= 0.7"),
        row(SCORE, f"camkit bf16 / fastest peer ({fastest})",
            paired_ratio(times["camkit bf16"], times[fastest]), "×", "", "<= 0.3"),
        row(SCORE, "camkit compile=True / camkit fp32",
            paired_ratio(times["camkit fp32 compile"], times["camkit fp32"]), "×",
            f"compilation (first call, warm-up) {first_batch[0]:.1f} s; the compiled model is "
            "kept with the folded copy"),
        row(SCORE, "camkit bf16 / camkit fp32",
            paired_ratio(times["camkit bf16"], times["camkit fp32"]), "×"),
        row(SCORE, "camkit max_channels=64 speed-up over all 512 channels",
            paired_ratio(times["camkit fp32"], times["camkit max_channels=64"]), "×"),
    ]
    for label, goal in (("bf16", ">= 0.99"), ("max_channels=64", None)):
        rows.append(row(SCORE, f"resnet18 b1: {label} vs fp32 map, Spearman ρ",
                        spearman(last[label], last["fp32"]), "ρ",
                        f"the timed photo; max |Δ| {max_diff(last[label], last['fp32']):.2e}",
                        goal))
    return rows


def layout_effect(model: nn.Module, warmup: int, repeats: int) -> list[Row]:
    """One masked batch of the size camkit picks by default, through resnet18, per layout,
    batch-norm folding and precision, as ratios to the plain model on contiguous (NCHW) inputs
    in float32."""
    x = photos(1)
    size = Batching().size_for(forward_bytes((x,)))
    masks = torch.rand(size, 1, 224, 224, generator=torch.Generator().manual_seed(0))
    batch = x * masks
    channels_last = batch.contiguous(memory_format=torch.channels_last)
    plain_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    folded = folding.folded_copy(model)

    def forward(net: nn.Module, inputs: Tensor, bf16: bool) -> Callable[[], object]:
        def call() -> None:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                net(inputs)
        return call

    times = interleaved_samples({
        "plain, contiguous, fp32": forward(model, batch, False),
        "plain, channels-last input, fp32": forward(model, channels_last, False),
        "plain, channels-last input and weights, fp32": forward(plain_last, channels_last, False),
        "folded, channels-last, fp32 (camkit)": forward(folded, channels_last, False),
        "plain, contiguous, bf16": forward(model, batch, True),
        "plain, channels-last, bf16": forward(plain_last, channels_last, True),
        "folded, channels-last, bf16 (camkit)": forward(folded, channels_last, True),
    }, warmup, repeats)
    base = times["plain, contiguous, fp32"]
    return [row(SCORE, f"layout: {name} / plain contiguous fp32", paired_ratio(t, base), "×",
                f"one batch of {size} masked 224² images") for name, t in times.items()
            if t is not base]


def scorecam_quality(name: str, model: nn.Module, layer: str, x: Tensor) -> list[Row]:
    """bf16 and max_channels=64 maps against fp32 maps with all channels, per photo."""
    classes = top1(model, x)

    def maps(**options: object) -> Tensor:
        with quiet():
            return camkit.explain(model, x, classes, "scorecam", layer, **options)["scorecam"][:, 0]

    fp32 = maps()
    rows = []
    for label, options, goal in [("bf16", {"precision": "bf16"}, ">= 0.99"),
                                 ("max_channels=64", {"max_channels": 64}, None)]:
        other = maps(**options)
        rho = [spearman(a, b) for a, b in zip(other, fp32, strict=True)]
        rows.append(row(SCORE, f"{name}: {label} vs fp32 all channels, lowest Spearman ρ", min(rho),
                        "ρ", f"{len(x)} photos, mean {statistics.mean(rho):.4f}, max |Δ| "
                        f"{max_diff(other, fp32):.2e}", goal))
    return rows


def pretrained_lite0(n: int) -> tuple[nn.Module, str, Tensor]:
    """EfficientNet-Lite0 with its packaged ImageNet weights, default layer, ``n`` photos."""
    loaded = zoo.load_model("efficientnet-lite0")
    files = data.imagenet_samples()[:n]
    x = torch.stack([loaded.preprocess(data.load_image(f.path)) for f in files])
    return loaded.model, loaded.layer, x


def scorecam_maps(model: nn.Module) -> list[Row]:
    x = photos(1)
    c = int(top1(model, x)[0])
    expl = camkit_call(model, x, torch.tensor([c]), "scorecam", weight="channel_softmax")
    ours = expl.raw["scorecam"][:, 0]
    theirs = {"grad-cam": gradcam_lib("scorecam", model, x, torch.tensor([c])),
              "torchcam": torchcam_scorecam(model, x, torch.tensor([c]))}
    acts = model.layer4(model.layer3(model.layer2(model.layer1(model.maxpool(model.relu(
        model.bn1(model.conv1(x))))))))[0].detach()
    explained = {
        "grad-cam": as_gradcam_lib(library_mask_scorecam(model, x, c, gradcam_lib_masks, acts)),
        "torchcam": as_torchcam(library_mask_scorecam(model, x, c, torchcam_masks, acts)),
    }
    post = {"grad-cam": as_gradcam_lib, "torchcam": as_torchcam}
    rows = []
    for peer, maps in theirs.items():
        rows.append(row(SCORE, f"channel_softmax map vs {peer}", max_diff(post[peer](ours), maps),
                        "max |Δ|", "masks differ slightly (see the explained row)"))
        rows.append(row(SCORE, f"channel_softmax explained: {peer}'s masks", max_diff(
            explained[peer], maps), "max |Δ|", "camkit's weighting on the library's masks",
            SAME))
    return rows


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def _measure_peak(library: str) -> None:
    """In a fresh child process: build resnet50 and the input, reset the peak counter, run one
    Score-CAM call and print the growth of the peak RSS in MiB (Linux)."""
    model = resnet("resnet50")
    x = photos(1)
    classes = top1(model, x)
    calls = {"camkit": lambda: camkit_call(model, x, classes, "scorecam"),
             "grad-cam": lambda: gradcam_lib("scorecam", model, x, classes)}
    with open("/proc/self/clear_refs", "w") as refs:  # reset VmHWM to the current RSS
        refs.write("5")
    before = _rss_kib("VmRSS")
    calls[library]()
    print((_rss_kib("VmHWM") - before) / 1024)


def peak_rss_mib(library: str) -> float:
    """:func:`_measure_peak` in a spawned interpreter (a fork would inherit the OpenMP
    thread pool, which hangs)."""
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--peak-memory",
                           library], capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def scorecam_memory() -> list[Row]:
    ours, theirs = peak_rss_mib("camkit"), peak_rss_mib("grad-cam")
    budget = DEFAULT_MAX_BATCH_MEMORY / 2**20
    model_mib = sum(p.numel() * p.element_size()
                    for p in resnet("resnet50").parameters()) / 2**20
    return [
        row(MEMORY, "resnet50 b1: camkit Score-CAM peak RSS added", ours, "MiB",
            f"budget {budget:.0f} MiB + model {model_mib:.0f} MiB (the folded copy)",
            f"<= {budget + model_mib:.0f}"),
        row(MEMORY, "resnet50 b1: grad-cam Score-CAM peak RSS added", theirs, "MiB"),
        row(MEMORY, "camkit / grad-cam peak memory", ours / theirs, "×", "", "< 1"),
    ]


# --- Ablation-CAM and Eigen-CAM -----------------------------------------------------------------

def ablationcam(warmup: int, repeats: int) -> list[Row]:
    model = resnet("resnet50")
    x = photos(1)
    classes = top1(model, x)
    expl = camkit_call(model, x, classes, "ablationcam")
    ours_ms = 1000 * statistics.median(interleaved_samples(
        {"camkit": lambda: camkit_call(model, x, classes, "ablationcam")}, warmup,
        repeats)["camkit"])
    start = time.perf_counter()
    theirs = gradcam_lib("ablationcam", model, x, classes)  # minutes: timed once
    theirs_ms = 1000 * (time.perf_counter() - start)
    note = expl.details["ablationcam"]
    return [
        row(ABLATION, "resnet50 b1: camkit ablationcam", ours_ms, "ms",
            f"path {note['path']}, {note['evaluations']} evaluations"),
        row(ABLATION, "resnet50 b1: grad-cam AblationCAM", theirs_ms, "ms", "one run"),
        row(ABLATION, "grad-cam / camkit speed-up", theirs_ms / ours_ms, "×", "", ">= 50"),
        row(ABLATION, "map vs grad-cam", max_diff(as_gradcam_lib(expl.raw["ablationcam"][:, 0]),
                                                  theirs), "max |Δ|", "both ablate to 0", SAME),
    ]


def eigencam(warmup: int, repeats: int) -> list[Row]:
    model = resnet("resnet50")
    x = photos(8)
    classes = top1(model, x)
    times = interleaved_samples({
        "camkit": lambda: camkit_call(model, x, classes, "eigencam"),
        "grad-cam": lambda: gradcam_lib("eigencam", model, x, classes),
    }, warmup, repeats)
    ours = camkit_call(model, x, classes, "eigencam").raw["eigencam"][:, 0]
    theirs = gradcam_lib("eigencam", model, x, classes)
    nearer, flipped = nearer_sign(as_gradcam_lib(ours), as_gradcam_lib(-ours), theirs)
    return [
        row(EIGEN, "resnet50 b8: camkit eigencam", 1000 * statistics.median(times["camkit"]),
            "ms"),
        row(EIGEN, "resnet50 b8: grad-cam EigenCAM", 1000 * statistics.median(times["grad-cam"]),
            "ms"),
        row(EIGEN, "camkit / grad-cam", paired_ratio(times["camkit"], times["grad-cam"]), "×",
            "", "< 1"),
        row(EIGEN, "map vs grad-cam, up to sign", max_diff(nearer, theirs), "max |Δ|",
            f"same sign as grad-cam in {len(nearer) - flipped} of {len(nearer)} maps", SAME),
    ]


def run() -> list[Row]:
    """All rows, each printed as soon as its group is measured. Timings: one warm-up round and
    3 timed rounds, quality rows on 4 photos; with ``--quick`` (``BENCH_QUICK=1``): no warm-up,
    one round, 1 photo, and the resnet18 quality rows only from the timed photo. The slow
    grad-cam Ablation-CAM runs once."""
    setup(0)
    quick = os.environ.get("BENCH_QUICK") == "1"
    warmup, repeats, n_photos = (0, 1, 1) if quick else (1, 3, 4)
    resnet18 = resnet("resnet18")
    steps: list[Callable[[], list[Row]]] = [
        lambda: scorecam_speed(resnet18, photos(1), warmup, repeats),
        lambda: ablationcam(warmup, repeats),
        lambda: eigencam(warmup, repeats),
        scorecam_memory,
        lambda: scorecam_maps(resnet18),
        lambda: scorecam_quality("efficientnet-lite0 (pretrained)", *pretrained_lite0(n_photos)),
        lambda: layout_effect(resnet18, warmup, repeats),
    ]
    if not quick:
        steps.insert(5, lambda: scorecam_quality("resnet18 (random weights)", resnet18, "layer4",
                                                 photos(n_photos)))
    rows: list[Row] = []
    for step in steps:
        for r in step():
            print(json.dumps(r, ensure_ascii=False), flush=True)
            rows.append(r)
    return rows


if __name__ == "__main__":
    if sys.argv[1:2] == ["--peak-memory"]:
        setup(0)
        _measure_peak(sys.argv[2])
        sys.exit()
    run()
