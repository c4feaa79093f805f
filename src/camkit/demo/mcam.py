"""Part 2: M-CAM against Grad-CAM on a biased synthetic data set."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from camkit import api
from camkit.data.synthetic import SyntheticMultiLabel
from camkit.demo.cache import cached
from camkit.demo.items import multilabel_item, stack
from camkit.demo.nets import DemoNet, load_net, random_batches, save_net, seeded_net, train_net
from camkit.demo.settings import LAYER, McamSettings, Part
from camkit.evaluate import EvaluationResults, evaluate
from camkit.memory import BiasReducingMemory, layer_features, mean_average_precision, train_memory
from camkit.progress import Progress
from camkit.viz.report import ReportSection, evaluation_metrics, save_grid


def mcam_splits(s: McamSettings) -> tuple[SyntheticMultiLabel, SyntheticMultiLabel]:
    """The biased training split and the decorrelated test split."""
    first, second = s.pair
    common: dict[str, Any] = {"image_size": s.image_size, "num_classes": s.classes,
                              "seed": s.seed, "placement": s.placement}
    return (SyntheticMultiLabel(s.train, cooccur={(first, second): s.cooccur},
                                imbalance={second: s.rarity}, **common),
            SyntheticMultiLabel(s.test, split="test", **common))


def train_mcam(folder: Path, s: McamSettings, progress: bool | None) -> None:
    """Train the CNN, then the memory on its ``features``; save both into ``folder``."""
    train, _ = mcam_splits(s)
    x, y, _ = stack(train)
    net = train_net(seeded_net(s.seed, s.classes, s.width), random_batches(x, y, 64, s.seed),
                    F.binary_cross_entropy_with_logits, s.steps, "M-CAM: CNN", progress)
    save_net(net, folder / "net.safetensors")
    with Progress(s.memory_epochs, "M-CAM: memory", progress, unit="epoch") as bar:
        memory = train_memory(net, LAYER, TensorDataset(x, y), s.classes,
                              epochs=s.memory_epochs, seed=s.seed, progress=False,
                              class_names=train.class_names,
                              callback=lambda _epoch, _record: bar.update(1))
    memory.save(folder / "memory.safetensors")


def pair_cases(labels: Tensor, pair: tuple[int, int], names: Sequence[str]
               ) -> list[tuple[int, str]]:
    """``(row, title)`` of the first test image with both objects of the pair, with the first
    alone and with the second alone (cases absent from ``labels`` are left out)."""
    (a, b), (na, nb) = pair, (names[pair[0]], names[pair[1]])
    cases = {(1, 1): "together", (1, 0): f"{na} alone", (0, 1): f"{nb} alone"}
    found = []
    for (has_a, has_b), title in cases.items():
        rows = ((labels[:, a] == has_a) & (labels[:, b] == has_b)).nonzero()[:, 0]
        if len(rows):
            found.append((int(rows[0]), title))
    return found


def mcam_part(out: Path, s: McamSettings, progress: bool | None) -> Part:
    """Grad-CAM next to M-CAM for both classes of the pair, on test images where the pair
    appears together and apart, with test mAPs and the energy metrics of the test split."""
    folder, reused = cached(out / "cache", "mcam", s, lambda f: train_mcam(f, s, progress))
    net = load_net(DemoNet(s.classes, s.width), folder / "net.safetensors")
    memory = BiasReducingMemory.load(folder / "memory.safetensors")
    _, test = mcam_splits(s)
    x, y, _ = stack(test)
    cases = pair_cases(y, s.pair, test.class_names)
    rows = [row for row, _ in cases]
    expl = api.explain(net, x[rows], [list(s.pair)] * len(rows), ["gradcam", "mcam"], LAYER,
                       memory=memory, seed=s.seed, **s.mcam_options())
    items = [multilabel_item(expl, i, x[row], title, test.class_names)
             for i, (row, title) in enumerate(cases)]
    results = mcam_metrics(net, memory, test, s, progress)
    with torch.no_grad():
        maps = (mean_average_precision(net(x), y),
                mean_average_precision(memory(layer_features(net, LAYER, x)), y))
    names = [test.class_names[c] for c in s.pair]
    section = ReportSection(
        "M-CAM against Grad-CAM on a biased data set", items,
        f"A small CNN and its M-CAM memory were trained on {s.train} synthetic images where "
        f"{names[1]} appears with probability {s.cooccur} wherever {names[0]} does, and "
        f"otherwise {s.rarity:g} times as often as the other classes. On decorrelated test "
        "images (all classes independent) each map explains one class of the pair, "
        "present or not; the table scores every labelled class of "
        f"{s.test} test images: energy on its own mask (↑) and on its partner's mask (↓). "
        f"M-CAM runs with {mcam_configuration(s)}. In the bias benchmark "
        "(docs/evaluation.md) no M-CAM configuration keeps half of Grad-CAM's energy on the "
        "partner while matching its energy on the target: read a lower share on the partner "
        "together with the share on the target itself.",
        evaluation_metrics(results))
    return Part("mcam", section, [save_grid(items, out / "grids" / "mcam.png")],
                f"test mAP: CNN {maps[0]:.2f}, memory {maps[1]:.2f}; energy on object / partner: "
                + ", ".join(f"{m} {energy(results, m, 'energy-mask'):.0%} / "
                            f"{energy(results, m, 'energy-leak'):.0%}" for m in results.methods),
                asdict(s), "reused" if reused else "trained")


def mcam_configuration(s: McamSettings) -> str:
    """The M-CAM weights the part uses, in words."""
    base = {"none": "", "slot": "the slot's channel profile",
            "classifier": "the memory classifier's weights",
            "value": "the gradient of the memory classifier's value half",
            "address": "the gradient of the found slot's key address"}[s.base]
    weights = "" if s.sharpness == 0 else "exp(τ)" if s.sharpness == 1 else \
        f"exp({s.sharpness:g} τ)"
    seed = " (the seed's weights)" if s.sharpness == 1 and s.base == "none" else ""
    return "channel weights " + " × ".join(w for w in (base, weights) if w) + seed


def mcam_metrics(net: nn.Module, memory: BiasReducingMemory, test: SyntheticMultiLabel,
                 s: McamSettings, progress: bool | None) -> EvaluationResults:
    """``camkit.evaluate`` of Grad-CAM and M-CAM on every labelled class of the test split."""
    a, b = s.pair
    return evaluate(net, test, ["gradcam", "mcam"], ["energy-mask", "energy-leak"], LAYER,
                    targets="label",
                    method_options={"mcam": {"memory": memory, **s.mcam_options()}},
                    metric_options={"energy-leak": {"partners": {a: b, b: a}}},
                    seed=s.seed, progress=progress)


def energy(results: EvaluationResults, method: str, metric: str) -> float:
    """The mean share of ``method``'s maps on the target's own mask (``energy-mask``) or on its
    co-occurring partner's mask (``energy-leak``)."""
    return results.summary(method, metric).mean
