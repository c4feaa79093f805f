"""Part 3: embedding Grad-CAM by weight transfer on a small triplet network."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

from torch import Tensor

from camkit import api
from camkit.data.synthetic import SyntheticMultiLabel
from camkit.demo.cache import cached
from camkit.demo.items import picture, stack
from camkit.demo.nets import (
    DemoNet,
    balanced_batches,
    batch_hard_loss,
    load_net,
    save_net,
    seeded_net,
    train_net,
)
from camkit.demo.settings import LAYER, EmbeddingSettings, Part
from camkit.embedding import WeightBank, embed, fit_weight_bank
from camkit.viz.report import ReportItem, ReportSection, TargetRow, save_grid


class Labelled(NamedTuple):
    """Single-object images ``(n, 3, H, W)``, their classes ``(n,)`` and the class names."""

    images: Tensor
    labels: Tensor
    class_names: list[str]


def single_objects(s: EmbeddingSettings, split: str, n: int) -> Labelled:
    """Up to ``n`` synthetic images holding exactly one object (drawn from ``4n``)."""
    data = SyntheticMultiLabel(4 * n, s.image_size, s.classes, presence=1 / s.classes,
                               seed=s.seed, split=split)
    x, y, _ = stack(data)
    keep = (y.sum(dim=1) == 1).nonzero()[:n, 0]
    return Labelled(x[keep], y[keep].argmax(dim=1), data.class_names)


def train_embedding(folder: Path, s: EmbeddingSettings, progress: bool | None) -> None:
    """Train the triplet network, then fit the weight bank on its training images; save
    both into ``folder``. The bank's triplets are random and without the hinge: the network
    separates these classes by more than the margin, so a hinged loss would have no
    gradient."""
    train = single_objects(s, "train", s.train)
    net = train_net(seeded_net(s.seed, s.dim, s.width, embedding=True),
                    balanced_batches(train.images, train.labels, 8, s.seed),
                    lambda e, labels: batch_hard_loss(e, labels, s.margin), s.steps,
                    "embedding: triplet network", progress)
    save_net(net, folder / "net.safetensors")
    bank = fit_weight_bank(net, LAYER, train.images, train.labels, triplets_per_image=s.triplets,
                           top_m=s.top_m, margin=s.margin, mode="random", hinge=False,
                           seed=s.seed, progress=progress)
    bank.save(folder / "bank.safetensors")


def first_of_each_class(labels: Tensor, count: int) -> list[int]:
    """The row of the first image of each class, for up to ``count`` classes."""
    return [int((labels == c).nonzero()[0, 0]) for c in labels.unique()[:count]]


def embedding_part(out: Path, s: EmbeddingSettings, progress: bool | None) -> Part:
    """Maps of a few test queries transferred from their nearest bank image and from the
    average of their ``s.neighbours`` nearest, shown with those bank images."""
    folder, reused = cached(out / "cache", "embedding", s,
                            lambda f: train_embedding(f, s, progress))
    net = load_net(DemoNet(s.dim, s.width, embedding=True), folder / "net.safetensors")
    bank = WeightBank.load(folder / "bank.safetensors")
    train, test = single_objects(s, "train", s.train), single_objects(s, "test", s.test)
    distances, nearest = bank.search(embed(net, test.images), s.neighbours)
    recall = float((bank.labels[nearest[:, 0]] == test.labels).float().mean())
    rows = first_of_each_class(test.labels, s.queries)
    transfers = {f"transfer, {k}-NN": api.explain(net, test.images[rows], None,
                                                  ["embedding-gradcam"], LAYER, bank=bank,
                                                  neighbours=k)
                 for k in dict.fromkeys((1, s.neighbours))}
    items = [neighbour_item(transfers, i, row, test, train, (distances[row], nearest[row]))
             for i, row in enumerate(rows)]
    section = ReportSection(
        "Grad-CAM for an embedding network, by weight transfer", items,
        f"A triplet network ({s.dim}-d embedding) trained on {len(train.labels)} single-object "
        f"synthetic images, and a weight bank of their top-{s.top_m} triplet grad-weights. "
        "embedding-gradcam explains each test query without a backward pass, with the "
        f"weights of its nearest bank image (1-NN) or the average of its {s.neighbours} "
        "nearest; beside each query, those bank images and their distances.")
    return Part("embedding", section, [save_grid(items, out / "grids" / "embedding.png")],
                f"recall@1 of {len(test.labels)} test images in a bank of {len(bank)}: "
                f"{recall:.0%}; {len(items)} queries shown", asdict(s),
                "reused" if reused else "trained")


def neighbour_item(transfers: Mapping[str, api.Explanation], b: int, row: int, test: Labelled,
                   bank: Labelled, found: tuple[Tensor, Tensor]) -> ReportItem:
    """Query ``b`` (test image ``row``): each transfer's map (one per method name) and the
    nearest bank images with their distances."""
    names = test.class_names
    gallery = [(picture(bank.images[j]), f"{names[int(bank.labels[j])]}, distance "
                f"{float(d) ** 0.5:.2f}") for d, j in zip(*found, strict=True)]
    return ReportItem(
        f"query {b + 1}: {names[int(test.labels[row])]}", picture(test.images[row]),
        [TargetRow("the embedding")],
        maps={name: e["embedding-gradcam"][b] for name, e in transfers.items()},
        raw={name: e.raw["embedding-gradcam"][b] for name, e in transfers.items()},
        gallery=gallery, gallery_title="Nearest bank images")
