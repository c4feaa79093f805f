"""The :class:`Explanation` a ``camkit.explain`` call returns: plain data."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from torch import Tensor


class Explanation(Mapping[str, Tensor]):
    """The maps of one ``camkit.explain`` call.

    ``expl[name]`` is ``(B, K, H, W)`` float32 in [0, 1] on the input's device;
    ``expl.raw[name]`` the map before ReLU, upsampling and normalisation;
    ``expl.constant[name]`` a ``(B, K)`` bool tensor of maps that were constant (returned as
    zeros); ``expl.targets`` the ``(B, K)`` class indices (``None`` for custom scores);
    ``expl.scores`` the ``(B, K)`` target scores; ``expl.outputs`` the model output;
    ``expl.layer`` the target layer's name; ``expl.details`` what methods reported.

    With several layers (``layer=[...]``), ``expl[name]`` is the fused map, ``expl.raw[name]``
    the fusion before its min-max, ``expl.layer`` the names joined by ``+``, and
    ``expl.per_layer[layer_name]`` each layer's own :class:`Explanation`.

    Plain data: :func:`camkit.explanation_to_html` writes its HTML report and
    :func:`camkit.save_explanation` the report, PNG figures and maps.
    """

    def __init__(self, maps: dict[str, Tensor], raw: dict[str, Tensor],
                 constant: dict[str, Tensor], targets: Tensor | None, scores: Tensor,
                 outputs: Any, layer: str, details: dict[str, Any],
                 per_layer: dict[str, Explanation] | None = None) -> None:
        self.maps, self.raw, self.constant = maps, raw, constant
        self.targets, self.scores, self.outputs = targets, scores, outputs
        self.layer, self.details = layer, details
        self.per_layer = per_layer or {}

    @property
    def layers(self) -> tuple[str, ...]:
        """The names of the explained layers (one, or each fused layer)."""
        return tuple(self.per_layer) or (self.layer,)

    def __getitem__(self, method: str) -> Tensor:
        if method not in self.maps:
            raise KeyError(f"{method!r} was not computed; this explanation has {list(self.maps)}")
        return self.maps[method]

    def __iter__(self) -> Iterator[str]:
        return iter(self.maps)

    def __len__(self) -> int:
        return len(self.maps)

    @property
    def classes(self) -> Tensor:
        """:attr:`targets` where they must be class indices: ``(B, K)``, or a ``ValueError``
        for an explanation of custom score targets."""
        if self.targets is None:
            raise ValueError("these maps explain custom score targets, not classes")
        return self.targets

    def numpy(self, method: str) -> np.ndarray:
        """``expl[method]`` as a float32 numpy array on the CPU."""
        return self[method].detach().cpu().numpy()

    def __repr__(self) -> str:
        shape = tuple(next(iter(self.maps.values())).shape) if self.maps else ()
        return f"Explanation(methods={list(self.maps)}, shape={shape}, layer={self.layer!r})"
