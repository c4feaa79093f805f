"""The randomisation sanity checks: does a map depend on what the model learned?

- Model-parameter randomisation (Adebayo et al., Sanity Checks for Saliency Maps, NeurIPS 2018,
  §3.1): the network's parameter groups (its blocks by default, see
  :func:`camkit.capture.randomise.parameter_groups`) are re-initialised from the top down,
  cumulatively (cascading) or one at a time (independent), on a deep copy of the model, and the
  maps for the same targets are compared with the original ones. A method whose maps stay alike
  while the weights that produced the decision are destroyed explains the input, not the model.
- Random logit (Sixt, Granz, Landgraf, When Explanations Lie, ICML 2020; Quantus's
  ``RandomLogit``): the similarity between the map of the target class and the map of a random
  other class. A class-sensitive method gives dissimilar maps. Lower is better.

Maps are compared by :data:`~camkit.metrics.similarity.SIMILARITIES` (Spearman's ρ of ``|map|``
and of the signed map, SSIM of ``|map|`` normalised to [0, 1]) on what the explainer returns;
:func:`model_explainer` returns camkit's map before ReLU and normalisation, upsampled to the
input, so that the signed comparison sees negative evidence too.

A method passes the cascading test (:func:`passes`) when the median Spearman ρ of ``|map|`` is
below :data:`PASS_THRESHOLD` = 0.5 once the top half of the groups is randomised. Why these
numbers: with half of the network replaced by random weights the model's decision is gone, so a
map that still shares more than a quarter of its rank variance with the original (ρ² > 0.25)
is reading the image rather than the model; Adebayo et al. (Fig. 2, 4) find the methods they
flag (guided backpropagation, guided Grad-CAM) at ρ ≈ 0.6-1 there, and the gradient and
Grad-CAM near 0-0.3.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..api import explain
from ..capture.randomise import ParameterGroup, forward_order, parameter_groups, randomised_copies
from ..postprocess import upsample
from ..progress import Progress
from .robustness import Explainer, Keys, mixed_seed
from .similarity import SIMILARITIES, similarity

ModelExplainer = Callable[[nn.Module, Tensor, Tensor], Tensor]
"""``(model, x (B, C, H, W), targets (B, K)) -> maps (B, K, H, W)``: a method on any model."""
PASS_THRESHOLD, PASS_FRACTION = 0.5, 0.5
VERDICT_SIMILARITY = "spearman-abs"


def model_explainer(method: str, layer: str | Sequence[str] | None = None, *,
                    maps: str = "raw", seed: int = 0, **options: Any) -> ModelExplainer:
    """``camkit.explain`` with one method on any model (the randomised copies), seeded the same
    on every call. ``maps="raw"``: the map before ReLU and normalisation, upsampled bilinearly
    to the input; ``"normalised"``: ``expl[method]``. ``layer`` is a dotted name, a list of
    them, or ``None`` for the automatic choice: names mean the same layer in every copy."""
    if maps not in ("raw", "normalised"):
        raise ValueError(f"maps must be 'raw' or 'normalised', got {maps!r}")
    if isinstance(layer, nn.Module) or (isinstance(layer, (list, tuple))
                                        and any(isinstance(p, nn.Module) for p in layer)):
        raise TypeError("give the layer by its dotted name: a module belongs to one model, "
                        "and the checks explain copies of it")

    def run(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*maps were constant",
                                    category=RuntimeWarning)
            expl = explain(model, images, targets, (method,), layer, seed=seed, **options)
        if maps == "normalised":
            return expl[method]
        size = (images.shape[-2], images.shape[-1])
        return upsample(expl.raw[method].float().nan_to_num(0.0), size)

    return run


def top_down_groups(model: nn.Module, x: Tensor, layers: str | Sequence[str] | None = None
                    ) -> list[ParameterGroup]:
    """The parameter groups the forward pass of ``x[:1]`` reaches, output side first."""
    return forward_order(model, parameter_groups(model, layers), (x[:1],))[::-1]


@dataclass
class RandomisationCurves:
    """What :func:`parameter_randomisation` measured: ``steps`` (``"original"``, then the
    group randomised at each step, top down), and per similarity name a ``(B, K, S)`` tensor,
    the similarity of each step's maps to the original maps (step 0: an unrandomised copy, so
    1 up to the method's own determinism); with ``keep_maps``, ``maps`` ``(B, K, S, H, W)``;
    ``groups``: how many groups the model has (more than the steps when stopped early)."""

    steps: list[str]
    order: str
    similarity: dict[str, Tensor]
    maps: Tensor | None = None
    groups: int = 0

    def __post_init__(self) -> None:
        self.groups = self.groups or len(self.steps) - 1


def verdict_step(groups: int, fraction: float = PASS_FRACTION) -> int:
    """The step at which ``fraction`` of ``groups`` top-down groups are randomised:
    ``⌈fraction · groups⌉`` (at least 1)."""
    return max(1, math.ceil(fraction * groups))


def parameter_randomisation(
    model: nn.Module, x: Tensor, targets: Tensor, explainer: ModelExplainer, *,
    order: str = "cascading", layers: str | Sequence[str] | None = None, seed: int = 0,
    until: float = 1.0, similarities: Sequence[str] = tuple(SIMILARITIES),
    keep_maps: bool = False, progress: bool | None = False,
) -> RandomisationCurves:
    """The model-parameter randomisation test (Adebayo et al. 2018, §3.1) for one method.

    ``explainer`` makes the maps on the original model and on each randomised copy, for the
    same ``targets`` ``(B, K)``; ``order`` is ``"cascading"`` (top-down, cumulative) or
    ``"independent"`` (one group at a time); ``layers`` chooses the groups
    (:func:`~camkit.capture.randomise.parameter_groups`); ``until`` stops once that fraction of
    the groups (top down) is done. The model itself is never modified."""
    for name in similarities:
        similarity(name)
    if not 0 < until <= 1:
        raise ValueError(f"until must be in (0, 1], got {until}")
    groups = top_down_groups(model, x, layers)
    if not groups:
        raise ValueError("the forward pass reaches no parameters to randomise")
    total, groups = len(groups), groups[:verdict_step(len(groups), until)]
    original = explainer(model, x, targets)
    found: list[Tensor] = []
    with Progress(len(groups) + 1, f"randomisation ({order})", progress) as bar:
        for _, copy in randomised_copies(model, groups, order=order, seed=seed,
                                         include_original=True):
            found.append(explainer(copy, x, targets))
            bar.update(1)
    stacked = torch.stack(found, dim=2)  # (B, K, S, H, W)
    reference = original.unsqueeze(2).expand_as(stacked)
    return RandomisationCurves(
        ["original", *(g.label for g in groups)], order,
        {name: similarity(name)(reference, stacked) for name in similarities},
        stacked if keep_maps else None, total)


def passes(curves: RandomisationCurves, threshold: float = PASS_THRESHOLD,
           fraction: float = PASS_FRACTION) -> tuple[bool, float]:
    """The cascading verdict: ``(median ρ of |map| at the step where ``fraction`` of the groups
    are randomised < threshold, that median)``; NaN values (constant maps) are left out, and a
    method with none left does not pass."""
    if curves.order != "cascading" or VERDICT_SIMILARITY not in curves.similarity:
        raise ValueError("the verdict reads the cascading curves of 'spearman-abs'")
    step = verdict_step(curves.groups, fraction)
    if step >= len(curves.steps):
        raise ValueError(f"the verdict reads step {step}, but the curves stop at step "
                         f"{len(curves.steps) - 1}")
    values = curves.similarity[VERDICT_SIMILARITY][..., step]
    finite = values[values.isfinite()]
    if finite.numel() == 0:
        return False, math.nan
    median = float(finite.float().quantile(0.5))  # the mean of the middle two for an even n
    return median < threshold, median


def random_classes(targets: Tensor, n_classes: int, seed: int = 0, keys: Keys = None) -> Tensor:
    """``(B, K)``: for each target a class drawn uniformly from the ``n_classes − 1`` others,
    image ``b``'s from a generator seeded by ``(seed, keys[b])``."""
    if n_classes < 2:
        raise ValueError(f"random logit needs at least 2 classes, got {n_classes}")
    keys = list(range(targets.shape[0])) if keys is None else [int(k) for k in keys]
    draws = torch.empty(targets.shape, dtype=torch.long)
    for b, key in enumerate(keys):  # one small generator per image, as Noise.sample
        generator = torch.Generator().manual_seed(mixed_seed(seed, key))
        draws[b] = torch.randint(0, n_classes - 1, targets.shape[1:], generator=generator)
    draws = draws.to(targets.device)
    return draws + (draws >= targets).long()  # skip the target itself


def random_logit(explainer: Explainer, x: Tensor, maps: Tensor, targets: Tensor, *,
                 n_classes: int | None = None, others: Tensor | None = None, seed: int = 0,
                 keys: Keys = None, measure: str = "ssim") -> Tensor:
    """Random logit per sample ``(B, K)``, lower is better: the similarity ``measure`` between
    ``maps`` (the explainer's maps of ``targets``) and the explainer's maps of ``others``
    ``(B, K)``, by default one random other class per target (:func:`random_classes`, which
    needs ``n_classes``)."""
    if others is None:
        if n_classes is None:
            raise ValueError("random_logit needs n_classes to draw the other classes")
        others = random_classes(targets, n_classes, seed, keys)
    if others.shape != targets.shape or bool((others == targets).any()):
        raise ValueError("others must be (B, K) classes, each different from its target")
    return similarity(measure)(maps, explainer(x, others))
