"""Score-CAM and its smoothed (SS-CAM) and integrated (IS-CAM) variants (ALGORITHMS §3.4).

Every channel ``k`` of the target layer becomes a mask over the input,
``H^k = minmax(Up(A^k))``; the model scores the masked input ``X ∘ H^k`` and those scores weight
the channels. Two weightings exist in the literature:

- ``weight="class_prob"`` (default; the authors' released code, ALGORITHMS C3): the
  class-softmax probability of the target on the masked input, and the map is the weighted
  sum of the *upsampled, un-normalised* activations at input resolution;
- ``weight="channel_softmax"`` (the paper's Algorithm 1, pytorch-grad-cam, torch-cam): a
  softmax over channels of the target logit's increase over a baseline, summed over the
  activations at the layer's resolution.

Cost (DESIGN principle 5): one masked forward pass per informative channel and per noise or
integration sample, in memory-bounded batches (:mod:`camkit.capture.batches`). A channel
whose activation is constant has the empty mask (``minmax`` of a constant is 0, as in C1/C2):
the empty-masked input is evaluated once per image and shared by all such channels.
``max_channels=N`` keeps the ``N`` channels of largest spatial variance (Faster Score-CAM).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..capture import LayerPass
from ..capture.batches import (
    BATCH_OPTIONS,
    DEFAULT_MAX_BATCH_MEMORY,
    Batching,
    Scorer,
    forward_bytes,
    input_scorer,
    run_items,
)
from ..postprocess import minmax, upsample
from ..targets import logits_of
from .gradient import weighted_sum
from .registry import Method, register

WEIGHTS = ("class_prob", "channel_softmax")
SCORE_OPTIONS = ("weight", "max_channels", "precision", "compile", *BATCH_OPTIONS)

# A mask variant: (masks (n, H, W), sample index (n,)) -> the masks actually applied.
Variant = Callable[[Tensor, Tensor], Tensor]


def channel_masks(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Score-CAM masks ``H^k = minmax(Up(A^k))`` (Wang et al. 2020, Algorithm 1):
    ``(n, h, w)`` activation maps → ``(n, H, W)`` masks in [0, 1]; a constant map gives the
    empty (all-zero) mask."""
    return minmax(upsample(maps[:, None], size))[0][:, 0]


def channel_softmax_weights(channel_scores: Tensor, baseline: Tensor, selected: Tensor) -> Tensor:
    """Paper weights (Definition 2 and Algorithm 1): ``α^c_k = softmax_k(s_c(X ∘ H^k) − s_c(X_b))``
    over the selected channels (0 elsewhere).

    ``channel_scores`` ``(B, K, C)`` target logits on the masked inputs, ``baseline``
    ``(B, K)`` the baseline scores, ``selected`` ``(B, C)`` bool → ``(B, K, C)``."""
    increase = channel_scores - baseline[..., None]
    return increase.masked_fill(~selected[:, None], float("-inf")).softmax(dim=2)


def class_prob_map(class_probs: Tensor, activations: Tensor, size: tuple[int, int]) -> Tensor:
    """Official-code map (C3): ``Σ_k p_c(X ∘ H^k) · Up(A^k)`` at input resolution.

    Bilinear upsampling is linear, so this equals ``Up(Σ_k p_k A^k)``, computed without the C
    upsampled maps. ``class_probs`` ``(B, K, C)`` (0 for unselected channels), ``activations``
    ``(B, C, h, w)`` → ``(B, K, H, W)``."""
    return upsample(weighted_sum(class_probs, activations), size)


def top_variance_channels(activations: Tensor, max_channels: int | None) -> Tensor:
    """Faster Score-CAM's selection: the ``max_channels`` channels of each image with the largest
    spatial variance of ``A^k`` (all channels for ``None``). ``(B, C, h, w)`` → ``(B, C)`` bool."""
    b, c = activations.shape[:2]
    if max_channels is None or max_channels >= c:
        return torch.ones(b, c, dtype=torch.bool, device=activations.device)
    top = activations.flatten(2).var(dim=2).topk(max_channels, dim=1).indices
    return torch.zeros(b, c, dtype=torch.bool, device=activations.device).scatter_(1, top, True)


def smoothed(noise: Tensor) -> Variant:
    """SS-CAM (Wang, Naidu et al. 2020): sample ``i`` adds ``noise[i]`` ``(S, H, W)``, i.e.
    ``X ∘ (H^k + δ_i)`` with ``δ_i ~ N(0, σ²)``. The same draws serve every channel and image
    (common random numbers), so channels are compared under identical noise."""
    return lambda masks, sample: masks + noise[sample]


def integrated(n_samples: int) -> Variant:
    """IS-CAM (Naidu et al. 2020): sample ``i`` scales the mask by ``(i + 1) / N``, a Riemann
    sum of ``∫₀¹ s(X ∘ t·H^k) dt`` along the path from the empty mask to ``H^k``."""
    return lambda masks, sample: masks * ((sample + 1).to(masks.dtype) / n_samples)[:, None, None]


def masked_channel_scores(layer_pass: LayerPass, selected: Tensor, score: Scorer,
                          batching: Batching, method: str, variant: Variant | None = None,
                          n_samples: int = 1) -> Tensor:
    """The ``(B, K, C)`` scores of ``X ∘ variant(H^k)``, averaged over ``n_samples`` variants,
    for the selected channels (0 elsewhere): the shared machinery of the Score-CAM family.

    Work items are (image, informative channel, sample) triples plus, per image with constant
    selected channels, one empty-mask slot shared by all of them; masks are built batch by
    batch. Reports the evaluation count in ``layer_pass.notes[method]``."""
    acts = layer_pass.activations
    b, c = acts.shape[:2]
    k = layer_pass.scores.shape[1]
    flat = acts.flatten(2)
    constant = flat.amax(dim=2) == flat.amin(dim=2)
    informative = (selected & ~constant).nonzero()  # (n_i, 2): image, channel
    empty = (selected & constant).any(dim=1).nonzero()[:, 0]  # images with an empty mask
    slots = torch.cat([informative, torch.stack([empty, torch.full_like(empty, -1)], dim=1)])
    x = layer_pass.inputs[0]

    def evaluate(items: Tensor) -> Tensor:
        image, channel = slots[items // n_samples].unbind(dim=1)
        maps = acts[image, channel.clamp(min=0)]
        maps = torch.where((channel >= 0)[:, None, None], maps, maps.new_zeros(()))
        masks = channel_masks(maps, layer_pass.input_size)
        if variant is not None:
            masks = variant(masks, items % n_samples)
        return score(x[image] * masks[:, None].to(x.dtype), image)

    size = batching.size_for(forward_bytes(layer_pass.inputs))
    n_items = len(slots) * n_samples
    scores = run_items(n_items, evaluate, size, device=acts.device, desc=method,
                       progress=batching.progress)
    per_slot = scores.view(len(slots), n_samples, k).mean(dim=1)
    n_informative = len(informative)
    out = acts.new_zeros(b, c, k)
    out[informative[:, 0], informative[:, 1]] = per_slot[:n_informative]
    empty_scores = acts.new_zeros(b, k)
    empty_scores[empty] = per_slot[n_informative:]
    out = torch.where((selected & constant)[..., None], empty_scores[:, None], out)
    layer_pass.notes.setdefault(method, {}).update(
        evaluations=n_items, batch_size=size, channels=int(selected.sum()),
        empty_mask_images=len(empty),
    )
    return out.transpose(1, 2)


def class_probabilities(layer_pass: LayerPass) -> Callable[[Any, Tensor | None], Tensor]:
    """Reads the class-softmax probability of each target class from a model output."""
    indices = layer_pass.target_indices
    if indices is None:
        raise ValueError(
            "weight='class_prob' needs class targets (it reads the softmax probability of a "
            "class); for custom score targets use weight='channel_softmax'"
        )

    def probabilities(outputs: Any, rows: Tensor | None) -> Tensor:
        idx = indices if rows is None else indices[rows.to(indices.device)]
        probs = logits_of(outputs).float().softmax(dim=1)
        return probs.gather(1, idx.to(probs.device))

    return probabilities


def score_family(layer_pass: LayerPass, method: str, variant: Variant | None = None,
                 n_samples: int = 1, *, weight: str = "class_prob",
                 max_channels: int | None = None, precision: str = "fp32", compile: bool = False,
                 batch_size: int | None = None, max_batch_memory: float = DEFAULT_MAX_BATCH_MEMORY,
                 progress: bool | None = None) -> Tensor:
    """Score-CAM (and its variants) on one layer pass: raw maps ``(B, K, H, W)`` for
    ``class_prob``, ``(B, K, h, w)`` for ``channel_softmax``."""
    if weight not in WEIGHTS:
        raise ValueError(f"weight must be one of {WEIGHTS}, got {weight!r}")
    if max_channels is not None and not (isinstance(max_channels, int) and max_channels >= 1):
        raise ValueError(f"max_channels must be a positive int or None, got {max_channels!r}")
    batching = Batching(batch_size, max_batch_memory, progress)
    class_prob = weight == "class_prob"
    read = class_probabilities(layer_pass) if class_prob else layer_pass.output_scorer
    score = input_scorer(layer_pass, read, precision, method, compile)
    acts = layer_pass.activations
    selected = top_variance_channels(acts, max_channels)
    scores = masked_channel_scores(layer_pass, selected, score, batching, method, variant,
                                   n_samples)
    if class_prob:
        weights = scores * selected[:, None]
        layer_pass.notes[method]["weights"] = weights
        return class_prob_map(weights, acts, layer_pass.input_size)
    weights = channel_softmax_weights(scores, layer_pass.scores, selected)
    layer_pass.notes[method]["weights"] = weights
    return weighted_sum(weights, acts)


def _check_samples(num_samples: int) -> None:
    if not (isinstance(num_samples, int) and num_samples >= 1):
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")


def _scorecam(layer_pass: LayerPass, **options: Any) -> Tensor:
    return score_family(layer_pass, "scorecam", **options)


def _sscam(layer_pass: LayerPass, num_samples: int = 35, noise_std: float = 2.0,
           **options: Any) -> Tensor:
    _check_samples(num_samples)
    device = layer_pass.inputs[0].device
    seed = layer_pass.generator.initial_seed() if layer_pass.generator is not None else 0
    generator = torch.Generator(device=device).manual_seed(seed)
    noise = noise_std * torch.randn((num_samples, *layer_pass.input_size), generator=generator,
                                    device=device)
    return score_family(layer_pass, "sscam", smoothed(noise), num_samples, **options)


def _iscam(layer_pass: LayerPass, num_samples: int = 10, **options: Any) -> Tensor:
    _check_samples(num_samples)
    return score_family(layer_pass, "iscam", integrated(num_samples), num_samples, **options)


register(Method(
    "scorecam", "channels weighted by the model's score of the input masked by each channel",
    "Wang et al., Score-CAM, CVPR-W 2020 (arXiv:1910.01279)", _scorecam, options=SCORE_OPTIONS,
    maths=(channel_masks, channel_softmax_weights, class_prob_map, top_variance_channels),
))
register(Method(
    "sscam", "Score-CAM with scores averaged over noisy masks",
    "Wang, Naidu et al., SS-CAM: Smoothed Score-CAM, 2020 (arXiv:2006.14255)", _sscam,
    options=("num_samples", "noise_std", *SCORE_OPTIONS),
    maths=(smoothed, channel_masks, channel_softmax_weights, class_prob_map),
))
register(Method(
    "iscam", "Score-CAM with scores integrated along masks scaled from 0 to 1",
    "Naidu et al., IS-CAM: Integrated Score-CAM, 2020 (arXiv:2010.03023)", _iscam,
    options=("num_samples", *SCORE_OPTIONS),
    maths=(integrated, channel_masks, channel_softmax_weights, class_prob_map),
))
