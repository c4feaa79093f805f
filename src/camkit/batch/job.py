"""What a data-set job computes, in a form every worker can rebuild: the model by its zoo
arguments, the layer, methods, options, targets and stored map size."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from camkit import api
from camkit.capture.layers import find_layer
from camkit.data.images import Preprocess
from camkit.methods import registry
from camkit.targets import TargetSpec, TopK, class_index
from camkit.zoo import LoadedModel, load_model

from .sources import LoadedBatch
from .store import BatchResult

TARGET_HELP = ("pred (each image's predicted class), topK (its K best classes, e.g. top3), "
               "label (the label the data gives each image), or a class index or name")


@dataclass(frozen=True)
class ModelSpec:
    """The arguments of :func:`camkit.zoo.load_model` that rebuild the job's model anywhere.

    ``seed`` seeds the random initial weights when ``random_init`` is set, so every worker
    builds the same untrained model.
    """

    arch: str = "efficientnet-lite0"
    weights: str | None = None
    random_init: bool = False
    seed: int = 0
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None

    def load(self) -> LoadedModel:
        """Build the model (the global random state is left as it was)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return load_model(self.arch, self.weights, random_init=self.random_init,
                              num_classes=self.num_classes, class_names=self.class_names)

    def settings(self) -> dict[str, Any]:
        """What identifies the model's weights: the architecture and a hash of the weights
        file (the file's path may change between runs)."""
        settings: dict[str, Any] = {
            "arch": self.arch,
            "weights_sha256": None if self.weights is None else file_sha256(self.weights),
            "random_init": self.random_init,
            "seed": self.seed if self.random_init and self.weights is None else None}
        if self.num_classes is not None:  # absent otherwise, so older jobs still resume
            settings["num_classes"] = self.num_classes
        return settings


def file_sha256(path: str) -> str:
    if not Path(path).is_file():
        raise FileNotFoundError(f"no weights file at {path!r}")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class TargetSetting:
    """Which classes a job explains: ``pred``, ``top<k>``, ``label`` or ``class:<index>``."""

    kind: str
    k: int = 1
    index: int | None = None

    @classmethod
    def parse(cls, target: str | int | None, class_names: Sequence[str]) -> TargetSetting:
        """Read ``target`` (see :data:`TARGET_HELP`); class names are resolved to indices."""
        text = "pred" if target is None else str(target).strip().lower()
        if text in ("pred", "predicted", "top1"):
            return cls("pred")
        if text == "label":
            return cls("label")
        top = re.fullmatch(r"top(\d+)", text)
        if top:
            k = int(top.group(1))
            if not 1 <= k <= len(class_names):
                raise ValueError(f"target {text!r}: K must be 1..{len(class_names)}")
            return cls("top", k=k)
        if isinstance(target, bool) or not isinstance(target, (str, int)):
            raise TypeError(f"target must be a string or a class index; use {TARGET_HELP}")
        return cls("class", index=class_index(str(target), class_names))

    def __str__(self) -> str:
        return {"pred": "pred", "label": "label", "top": f"top{self.k}",
                "class": f"class:{self.index}"}[self.kind]

    def for_batch(self, labels: Tensor | None) -> TargetSpec:
        """The ``targets=`` argument of :func:`camkit.explain` for one batch."""
        if self.kind == "label":
            if labels is None:
                raise ValueError("target 'label' needs a label for every image: a data set "
                                 "giving (image, label) items, or a list file with a tab and "
                                 "a class index after each path")
            return labels
        return {"pred": None, "top": TopK(self.k), "class": self.index}[self.kind]


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to explain a batch. Build it with :meth:`create`."""

    model: ModelSpec
    layer: str
    methods: tuple[str, ...]
    target: TargetSetting
    input_size: int
    map_size: int
    preprocess: Preprocess
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, spec: ModelSpec, loaded: LoadedModel, methods: str | Sequence[str],
               layer: str | None, target: str | int | None, options: dict[str, Any],
               map_size: int | None) -> Job:
        """Check every setting against the loaded model before anything runs."""
        names = [methods] if isinstance(methods, str) else list(methods)
        if not names:
            raise ValueError("methods is empty; name at least one (camkit methods lists them)")
        chosen = [registry.get_method(n) for n in names]
        api.check_options(chosen, options)  # unknown options: the engine's own message
        _check_json(options)
        layer = layer or loaded.layer
        find_layer(loaded.model, layer)
        size = loaded.input_size
        if map_size is not None and not 1 <= map_size <= size:
            raise ValueError(f"map_size must be 1..{size} (the model's input size), got "
                             f"{map_size}")
        return cls(spec, layer, tuple(dict.fromkeys(m.name for m in chosen)),
                   TargetSetting.parse(target, loaded.class_names), size, map_size or size,
                   loaded.preprocess, dict(options))

    @property
    def k(self) -> int:
        """Maps per image."""
        return self.target.k if self.target.kind == "top" else 1

    def settings(self) -> dict[str, Any]:
        """The settings recorded in the manifest (a rerun must match them to resume)."""
        return {"model": self.model.settings(), "layer": self.layer,
                "methods": list(self.methods), "options": self.options,
                "target": str(self.target), "input_size": self.input_size,
                "map_size": self.map_size, "dtype": "float16"}

    def explain(self, model: nn.Module, batch: LoadedBatch,
                device: torch.device | str = "cpu") -> BatchResult:
        """Explain the readable images of ``batch`` with ``model`` (the job's model, on
        ``device``); maps are resized to ``map_size`` and stored as float16."""
        if not len(batch.index):
            return self.empty(batch.failed)
        targets = self.target.for_batch(batch.labels)
        with quiet_constant_maps():
            expl = api.explain(model, batch.x.to(device), targets, self.methods, self.layer,
                               **self.options)
        return BatchResult(
            index=batch.index.numpy(),
            scores=expl.scores.cpu().numpy(),
            targets=expl.classes.cpu().numpy(),
            maps={m: self.resize(expl[m]).half().cpu().numpy() for m in self.methods},
            constant={m: expl.constant[m].cpu().numpy() for m in self.methods},
            failed=batch.failed,
        )

    def resize(self, maps: Tensor) -> Tensor:
        """``(B, K, H, W)`` → ``(B, K, map_size, map_size)`` by area averaging."""
        if maps.shape[-1] == self.map_size and maps.shape[-2] == self.map_size:
            return maps
        return F.interpolate(maps, size=(self.map_size, self.map_size), mode="area")

    def empty(self, failed: list[tuple[int, str]]) -> BatchResult:
        """The result of a batch none of whose images could be read."""
        n, k, s = 0, self.k, self.map_size
        return BatchResult(
            index=np.zeros(n, np.int64), scores=np.zeros((n, k), np.float32),
            targets=np.zeros((n, k), np.int64),
            maps={m: np.zeros((n, k, s, s), np.float16) for m in self.methods},
            constant={m: np.zeros((n, k), bool) for m in self.methods}, failed=failed)


def _check_json(options: dict[str, Any]) -> None:
    for name, value in options.items():
        try:
            json.dumps(value)
        except TypeError:
            raise TypeError(
                f"option {name}={type(value).__name__} cannot be recorded in the job's "
                "manifest; data-set jobs take options that are numbers, strings, booleans or "
                "lists of them") from None


@contextlib.contextmanager
def quiet_constant_maps() -> Iterator[None]:
    """Silence camkit.explain's per-batch constant-map warning: the job stores the flags and
    reports the total once."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\d+ of \d+ .* maps were constant",
                                category=RuntimeWarning)
        yield
