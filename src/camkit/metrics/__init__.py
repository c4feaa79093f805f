"""Metrics that judge explanations; each returns per-sample ``(B, K)`` tensors on the device.

Faithfulness ``(model, x, maps, targets)``: :func:`average_drop`,
:func:`increase_in_confidence`, :func:`deletion_auc`, :func:`insertion_auc`,
:func:`pixel_flipping`, :func:`faithfulness_correlation`, and ROAD (:func:`road`,
:func:`road_morf`, :func:`road_lerf`, :func:`road_curve`).
Robustness: :func:`infidelity` ``(model, x, maps, targets)`` and :func:`max_sensitivity`
``(explainer, x, maps, targets)`` (:func:`method_explainer` makes the explainer).
Complexity ``(maps)``: :func:`sparseness`, :func:`complexity`.
Randomisation (sanity checks): :func:`parameter_randomisation` ``(model, x, targets,
model_explainer)`` and :func:`random_logit` ``(explainer, x, maps, targets)``.
Localisation ``(maps, regions)``: :func:`energy_share`, :func:`pointing_game`,
:func:`grid_pointing_game` (and :func:`box_masks` to turn boxes into regions).
``camkit.evaluate`` runs methods × metrics over a data set.
"""

from .complexity import complexity, sparseness
from .correlation import faithfulness_correlation, random_subsets
from .faithfulness import (
    auc,
    average_drop,
    deletion_auc,
    deletion_curve,
    drop_percent,
    increase_in_confidence,
    increase_percent,
    insertion_auc,
    insertion_curve,
    masked_confidence,
    pixel_flipping,
    pixel_flipping_curve,
)
from .imputation import linear_imputation
from .localization import (
    box_masks,
    energy_share,
    grid_cell_masks,
    grid_pointing_game,
    pointing_game,
)
from .randomisation import (
    RandomisationCurves,
    model_explainer,
    parameter_randomisation,
    passes,
    random_logit,
)
from .road import road, road_curve, road_lerf, road_morf, top1_confidence
from .robustness import (
    Noise,
    infidelity,
    infidelity_from,
    map_distances,
    max_sensitivity,
    method_explainer,
)
from .scoring import ConfidenceScorer, confidence_function, make_scorer
from .similarity import pearson, spearman, ssim
from .stats import Summary, summarize

__all__ = [
    "ConfidenceScorer", "Noise", "RandomisationCurves", "Summary", "auc", "average_drop",
    "box_masks", "complexity", "confidence_function", "deletion_auc", "deletion_curve",
    "drop_percent", "energy_share", "faithfulness_correlation", "grid_cell_masks",
    "grid_pointing_game", "increase_in_confidence", "increase_percent", "infidelity",
    "infidelity_from", "insertion_auc", "insertion_curve", "linear_imputation", "make_scorer",
    "map_distances", "masked_confidence", "max_sensitivity", "method_explainer",
    "model_explainer", "parameter_randomisation", "passes", "pearson", "pixel_flipping",
    "pixel_flipping_curve", "pointing_game", "random_logit", "random_subsets", "road",
    "road_curve", "road_lerf", "road_morf", "sparseness", "spearman", "ssim", "summarize",
    "top1_confidence",
]
