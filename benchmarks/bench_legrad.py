"""LeGrad side by side with torchcam's on torchvision's ViT-B/16: map equality and speed.

Model: torchvision ``vit_b_16`` with random weights (seed 0; its zero-initialised classifier
drawn from N(0, 0.02²), else every map is constant); ImageNet photos from ``foolbox`` scaled
to [0, 1], 224×224, batch of 4, the top-1 class of each image. torchcam 0.5.0 is imported here
only.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torchvision
from torch import Tensor, nn

import camkit
from bench_gradient import as_torchcam, max_diff, photos
from common import Row, interleaved_samples, paired_ratio, row, settings, setup

MAPS, SPEED = "legrad-maps", "legrad-speed"
BATCH = 4
BLOCKS = (12, 4)  # every block, and torchcam's documented example (the last four)

DESCRIPTIONS = {
    MAPS: (
        "camkit's raw LeGrad map put through torchcam's post-processing (min-max at the patch "
        "grid, `(M - min) / (max + 1e-8)`) against torchcam's `LeGrad(model, blocks)` map, "
        "same model, images and classes. Both read each block's tokens through the model's "
        "head as `heads(ln(mean of the tokens))`."
    ),
    SPEED: (
        "The same maps for the same batch, each library called as its documentation shows "
        "(torchcam: the extractor in a `with` block, a forward pass with autograd on, the "
        "extractor's call; camkit: `camkit.explain`). Medians, the ratio the median of "
        "per-round ratios, timed round-robin. camkit runs every block's attention fused, as "
        "the model does, keeps its output `O = PV` (its graph starts at the first block's "
        "attention output) and reads the gradient at the probabilities as `(∂s/∂O) Vᵀ`; "
        "torchcam has the chosen blocks' `nn.MultiheadAttention` return its probabilities "
        "(`need_weights`) and replays `P V` from them, and the model's parameters, which "
        "require gradients, put the whole forward pass in its graph."
    ),
}


def vit() -> nn.Module:
    model = torchvision.models.vit_b_16(weights=None).eval()
    nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


def torchcam_legrad(model: nn.Module, x: Tensor, classes: Tensor, blocks: int) -> Tensor:
    """torchcam's LeGrad: ``(B, 14, 14)`` maps, normalised at the patch grid."""
    from torchcam.methods import LeGrad

    with LeGrad(model, list(model.encoder.layers)[-blocks:]) as extractor:
        (maps,) = extractor(classes.tolist(), model(x))
    return maps.detach()


def run() -> list[Row]:
    setup(0)
    model = vit()
    x = photos(BATCH).float() / 255
    with torch.no_grad():
        classes = model(x).argmax(dim=1)
    warmup, repeats = settings()
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for blocks in BLOCKS:
            def ours(blocks: int = blocks) -> camkit.Explanation:
                return camkit.explain(model, x, classes, "legrad", blocks=blocks)

            def theirs(blocks: int = blocks) -> Tensor:
                return torchcam_legrad(model, x, classes, blocks)

            raw = ours().raw["legrad"][:, 0]
            rows.append(row(MAPS, f"vit_b_16 legrad ({blocks} blocks) vs torchcam",
                            max_diff(as_torchcam(raw, relu=False), theirs()), "max |Δ|",
                            goal="<= 1e-4"))
            times = interleaved_samples({"camkit": ours, "torchcam": theirs}, min(warmup, 1),
                                        max(3, repeats // 5))
            ms = {name: 1000 * float(np.median(t)) for name, t in times.items()}
            rows.append(row(SPEED, f"vit_b_16 b{BATCH}: legrad ({blocks} blocks) camkit / "
                            "torchcam", paired_ratio(times["camkit"], times["torchcam"]), "×",
                            f"{ms['camkit']:.0f} ms vs {ms['torchcam']:.0f} ms", "<= 1.0"))
    return rows
