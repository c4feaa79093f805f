"""One map from the maps of several layers, for ``camkit.explain(layer=[...])``.

Each layer's map is first post-processed on its own (ReLU, upsampling to the input size,
min-max to [0, 1]: ``P(M_l)``), so layers of different resolutions and scales count alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

FUSIONS = ("mean", "layercam")


def check_fusion(fusion: str) -> None:
    """A ``ValueError`` naming the choices unless ``fusion`` is one of :data:`FUSIONS`."""
    if fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {fusion!r}; choose one of {FUSIONS}")


def fuse(maps: Sequence[Tensor], fusion: str = "mean", gamma: float = 2.0) -> Tensor:
    """Fuse ``L`` post-processed maps ``(B, K, H, W)`` in [0, 1] into one ``(B, K, H, W)``,
    to be min-max normalised again.

    ``"mean"``: ``1/L Σ_l P(M_l)``, the mean of the normalised maps (the fusion of
    pytorch-grad-cam's list of target layers).
    ``"layercam"``: ``max_l tanh(γ · P(M_l))``, Layer-CAM's multi-stage fusion (Jiang et al.
    2021, §III-C): the tanh scaling with ``γ = 2`` lifts the weak, fine-grained maps of shallow
    layers before the element-wise maximum.
    """
    check_fusion(fusion)
    stack = torch.stack(list(maps))
    return stack.mean(0) if fusion == "mean" else torch.tanh(gamma * stack).amax(0)
