"""Metrics that judge explanations; each returns per-sample ``(B, K)`` tensors on the device.

Faithfulness ``(model, x, maps, targets)``: :func:`average_drop`,
:func:`increase_in_confidence`, :func:`deletion_auc`, :func:`insertion_auc`.
Robustness: :func:`infidelity` ``(model, x, maps, targets)`` and :func:`max_sensitivity`
``(explainer, x, maps, targets)`` (:func:`method_explainer` makes the explainer).
Localisation ``(maps, regions)``: :func:`energy_share`, :func:`pointing_game`,
:func:`grid_pointing_game` (and :func:`box_masks` to turn boxes into regions).
``camkit.evaluate`` runs methods × metrics over a data set.
"""

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
)
from .localization import (
    box_masks,
    energy_share,
    grid_cell_masks,
    grid_pointing_game,
    pointing_game,
)
from .robustness import (
    Noise,
    infidelity,
    infidelity_from,
    map_distances,
    max_sensitivity,
    method_explainer,
)
from .scoring import ConfidenceScorer, confidence_function, make_scorer
from .stats import Summary, summarize

__all__ = [
    "ConfidenceScorer", "Noise", "Summary", "auc", "average_drop", "box_masks",
    "confidence_function",
    "deletion_auc", "deletion_curve", "drop_percent", "energy_share", "grid_cell_masks",
    "grid_pointing_game", "increase_in_confidence", "increase_percent", "infidelity",
    "infidelity_from", "insertion_auc", "insertion_curve", "make_scorer", "map_distances",
    "masked_confidence", "max_sensitivity", "method_explainer", "pointing_game", "summarize",
]
