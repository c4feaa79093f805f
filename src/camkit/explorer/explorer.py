"""The Explain tab's logic, without any web framework: images in, cached maps and pictures out.

One :class:`Explorer` holds a loaded model and, per image and layer, one merged
:class:`camkit.Explanation` of the image's top-k classes. The first explanation of an image
computes the asked method together with every method that needs only the layer gradients
(they share the one forward and backward pass); a method asked later is computed once for
all k classes and merged in. Switching class, method (once computed), view or opacity is a
look-up and an overlay: no model call.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from camkit import api, metrics, zoo
from camkit.data import imagenet_samples, quokka
from camkit.data.images import PathLike, load_image
from camkit.methods.registry import GRADIENTS
from camkit.targets import TopK, logits_of
from camkit.viz import colorize, overlay
from camkit.viz.report import SavedExplanation, save_explanation

VIEWS = ("overlay", "map")
# On-demand metrics: label → (function, higher is better).
METRICS: dict[str, tuple[Callable[..., Tensor], bool]] = {
    "Average Drop %": (metrics.average_drop, False),
    "Increase in Confidence %": (metrics.increase_in_confidence, True),
    "Deletion AUC": (metrics.deletion_auc, False),
    "Insertion AUC": (metrics.insertion_auc, True),
}


@dataclass
class ClassChoice:
    """One of an image's top-k classes: its index, name and softmax probability."""

    index: int
    name: str
    probability: float

    @property
    def label(self) -> str:
        return f"{self.name} ({self.probability:.1%})"


@dataclass
class ImageEntry:
    """One image as the explorer holds it: the ``(S, S, 3)`` uint8 view the network sees,
    its ``(1, 3, S, S)`` input and, per layer, its merged explanation."""

    name: str
    view: np.ndarray
    x: Tensor
    by_layer: dict[str, api.Explanation] = field(default_factory=dict)


def merged(first: api.Explanation, second: api.Explanation) -> api.Explanation:
    """The maps of two explanations of the same images, targets and layer, as one."""
    return api.Explanation(
        {**first.maps, **second.maps}, {**first.raw, **second.raw},
        {**first.constant, **second.constant}, first.targets, first.scores, first.outputs,
        first.layer, {**first.details, **second.details})


def gradient_family() -> list[str]:
    """The methods that need nothing but the layer gradients: one backward pass serves all."""
    return [name for name in api.available_methods()
            if api.registry.get_method(name).needs == frozenset({GRADIENTS})
            and api.registry.needed_artifact(name) is None]


def bundled_samples() -> dict[str, Callable[[], Image.Image]]:
    """The sample photos shipped with camkit's dependencies, by name: the quokka and
    foolbox's 20 labelled ImageNet photos."""
    names = zoo.imagenet_classes()
    found: dict[str, Callable[[], Image.Image]] = {"quokka": lambda: quokka().image}
    for sample in imagenet_samples():
        found[f"{names[sample.label]} ({sample.path.name})"] = partial(load_image, sample.path)
    return found


def image_key(image: Image.Image) -> str:
    """A short digest of the pixels: the same picture uploaded twice is explained once."""
    digest = hashlib.sha256(f"{image.size}{image.mode}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()[:16]


class Explorer:
    """Explain images with one model and keep their maps.

    Args:
        loaded: the model (:func:`camkit.zoo.load_model`).
        out: the only folder the explorer writes to (downloads).
        artifacts: trained artefacts as :func:`camkit.explain` options (``memory=``,
            ``bank=``); each is passed only to the methods that take it.
        top_k: how many of an image's best classes are explained.
    """

    def __init__(self, loaded: zoo.LoadedModel, out: PathLike, *,
                 artifacts: dict[str, Any] | None = None, top_k: int = 5) -> None:
        self.loaded, self.out = loaded, Path(out)
        self.artifacts = dict(artifacts or {})
        self.top_k = min(top_k, len(loaded.class_names))
        self.images: dict[str, ImageEntry] = {}

    @property
    def methods(self) -> list[str]:
        """The methods this explorer can run (M-CAM with a memory, embedding Grad-CAM with a
        bank)."""
        return [m for m in api.available_methods()
                if api.registry.needed_artifact(m) in (None, *self.artifacts)]

    @property
    def layers(self) -> list[str]:
        """Every named submodule of the model, the default layer first."""
        names = [n for n, _ in self.loaded.model.named_modules() if n]
        return [self.loaded.layer, *(n for n in names if n != self.loaded.layer)]

    def reload(self, arch: str, weights: PathLike | None) -> None:
        """Switch to another model (same rules as :func:`camkit.zoo.load_model`); the cache
        is emptied. On an error the current model stays."""
        self.loaded = zoo.load_model(arch, weights)
        self.top_k = min(self.top_k, len(self.loaded.class_names))
        self.images.clear()

    def add_file(self, path: PathLike, name: str | None = None) -> str:
        """Read an image file (``ValueError`` when it is not one); returns its key."""
        return self.add_image(load_image(path), name or Path(path).name)

    def add_image(self, image: Image.Image, name: str = "image") -> str:
        """Hold ``image`` for explaining; returns its key."""
        key = image_key(image)
        if key not in self.images:
            view = self.loaded.preprocess.view(image)
            x = self.loaded.preprocess(image).unsqueeze(0)
            self.images[key] = ImageEntry(name, np.asarray(view), x)
        return key

    def missing(self, key: str, layer: str, method: str) -> list[str]:
        """The methods a request for ``method`` at ``layer`` would compute now (empty when
        its maps are cached)."""
        done = self.images[key].by_layer.get(layer)
        if done is None:
            return list(dict.fromkeys([method, *gradient_family()]))
        return [] if method in done else [method]

    def explanation(self, key: str, layer: str, method: str) -> api.Explanation:
        """The merged explanation of image ``key`` at ``layer``, computing ``method`` (and,
        for a new image or layer, the gradient family) when needed."""
        api.registry.get_method(method)  # an unknown name: the registry's message
        entry = self.images[key]
        todo = self.missing(key, layer, method)
        if todo:
            done = entry.by_layer.get(layer)
            targets = TopK(self.top_k) if done is None else done.classes
            fresh = api.explain(self.loaded.model, entry.x, targets, todo, layer,
                                **self._options(todo))
            entry.by_layer[layer] = fresh if done is None else merged(done, fresh)
        return entry.by_layer[layer]

    def _options(self, methods: list[str]) -> dict[str, Any]:
        accepted = {o for m in methods for o in api.registry.get_method(m).options}
        return {k: v for k, v in self.artifacts.items() if k in accepted}

    def classes(self, key: str, layer: str) -> list[ClassChoice]:
        """The image's top-k classes (explained at ``layer``), best first."""
        expl = self.images[key].by_layer[layer]
        probabilities = torch.softmax(logits_of(expl.outputs).float(), dim=1)[0]
        names = self.loaded.class_names
        return [ClassChoice(i, names[i], float(probabilities[i]))
                for i in expl.classes[0].tolist()]

    def picture(self, key: str, layer: str, method: str, k: int, view: str = "overlay",
                alpha: float = 0.5) -> np.ndarray:
        """The ``(S, S, 3)`` uint8 picture of the map of the image's ``k``-th class: drawn
        over the image (``view="overlay"``, opacity ``alpha``) or alone (``"map"``)."""
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
        entry = self.images[key]
        map_hw = self.explanation(key, layer, method)[method][0, k]
        return overlay(entry.view, map_hw, alpha) if view == "overlay" else colorize(map_hw)

    def is_constant(self, key: str, layer: str, method: str, k: int) -> bool:
        """Whether that map came out constant (shown as zeros)."""
        return bool(self.images[key].by_layer[layer].constant[method][0, k])

    def measure(self, key: str, layer: str, k: int, methods: Sequence[str] | None = None
                ) -> list[dict[str, Any]]:
        """The faithfulness metrics of the maps of the ``k``-th class by ``methods`` (default
        every computed one): one row per method (``{"method": name, label: value, ...}``),
        one batch per metric."""
        entry = self.images[key]
        methods = list(methods or entry.by_layer[layer])
        for m in methods:
            self.explanation(key, layer, m)
        expl = entry.by_layer[layer]
        maps = torch.stack([expl[m][:, k] for m in methods])  # (M, 1, H, W)
        x = entry.x.expand(len(methods), -1, -1, -1)
        targets = expl.classes[:, k : k + 1].expand(len(methods), 1)
        rows: list[dict[str, Any]] = [{"method": m} for m in methods]
        for label, (metric, _) in METRICS.items():
            values = metric(self.loaded.model, x, maps, targets)[:, 0].tolist()
            for row, value in zip(rows, values, strict=True):
                row[label] = value
        return rows

    def export(self, key: str, layer: str) -> SavedExplanation:
        """Write the image's report (``report.html``), figures and maps (``maps.npz``)
        into ``out/<image key>/<layer>/``."""
        entry, expl = self.images[key], self.images[key].by_layer[layer]
        folder = self.out / key / re.sub(r"[^A-Za-z0-9_.-]", "_", layer)
        settings = {"model": self.loaded.arch, "targets": f"top {self.top_k} classes"}
        return save_explanation(expl, folder, [entry.view], self.loaded.class_names,
                                names=[entry.name], settings=settings)
