"""The randomisation sanity check on a real network: does each method's map depend on the
learned weights? (Adebayo et al. 2018 report that guided backpropagation's maps survive the
cascading randomisation of a trained network while Grad-CAM's do not; this measures it.)

Model: the pretrained EfficientNet-Lite0 (camkit.zoo, layer ``_bn1.act``, 21 parameter
groups: stem, 16 blocks, head, classifier), the first 8 of the bundled ImageNet sample photos
(224 × 224), each explained for its labelled class; ``camkit.evaluate.sanity.sanity_check``
with seed 0.
"""

from __future__ import annotations

import warnings

from camkit.data.files import evaluation_data
from camkit.evaluate.sanity import sanity_check
from camkit.metrics.randomisation import PASS_THRESHOLD
from camkit.zoo import load_model
from common import Row, row, settings, setup

GROUP = "sanity-lite0"
METHODS = ("gradcam", "gradcam++", "layercam", "guided-backprop", "guided-gradcam")
IMAGES = 8

DESCRIPTIONS = {
    GROUP: (
        "Cascading model-parameter randomisation of the pretrained EfficientNet-Lite0 on 8 "
        "ImageNet sample photos (labelled classes), the blocks re-initialised from the "
        "classifier down on a copy of the model. Value: the median over the images of "
        "Spearman's ρ between |map| and the original |map| once the top half of the groups "
        f"(11 of 21, down to `_blocks.8`) is randomised; a method passes below {PASS_THRESHOLD}."
        " The note gives the mean ρ of |map| at a few steps of the cascade (0 = unrandomised "
        "copy) and the mean SSIM at the verdict step."),
}


def run() -> list[Row]:
    setup(0)
    quick = settings()[1] < 5
    loaded = load_model("efficientnet-lite0")
    data, _ = evaluation_data("imagenet-samples", loaded.preprocess, loaded.class_names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = sanity_check(loaded.model, data, list(METHODS), loaded.layer,
                             images=2 if quick else IMAGES, batch_size=IMAGES,
                             targets="label", seed=0, progress=False)
    step = found.verdict_step
    rows = []
    for method, m in found.methods.items():
        rho = m.mean_curve("cascading", "spearman-abs")
        shown = ", ".join(f"{s}: {rho[s]:.2f}" for s in (0, 1, 3, 6, step, len(rho) - 1))
        ssim = m.mean_curve("cascading", "ssim")[step]
        verdict = "passes" if m.passed else "fails"
        rows.append(row(GROUP, f"{method}: median ρ |map| at step {step} ({verdict})", m.median,
                        "ρ", f"mean ρ by step {shown}; SSIM {ssim:.2f} at step {step}"))
    return rows
