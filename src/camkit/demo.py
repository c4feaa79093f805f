"""``camkit demo``: the showcase behind ``make demo``, in three parts and one report.

1. **classic**: the pretrained EfficientNet-Lite0 explains real photos that ship inside
   installed packages (imgaug's quokka, foolbox's ImageNet samples) with every classic method;
2. **mcam**: a small CNN is trained on the synthetic co-occurrence data set, biased so that
   one class almost only appears with another, then the M-CAM memory on its features; Grad-CAM
   and M-CAM explain both classes of the pair on decorrelated test images where the two
   objects appear together and apart, and ``camkit.evaluate`` measures how much of each map
   falls on the object and on its partner;
3. **embedding**: a small triplet network is trained on single-object synthetic images and a
   weight bank fitted on them; a few test queries are explained by weight transfer, next to
   Grad-CAM of the similarity to their nearest bank image, with their nearest neighbours.

Everything goes into ``<out>/report.html`` (one section per part) and PNG grids. Networks,
the memory and the bank are cached under ``<out>/cache/<part>-<key>/``, the key a hash of the
part's settings: a second run with the same settings loads them instead of training. Nothing
is downloaded: the photos and weights come from installed packages, the rest is synthetic.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from . import api
from .artifacts import check_format, check_tensors, read_safetensors, write_safetensors
from .data.synthetic import SyntheticMultiLabel
from .embedding import WeightBank, embed, fit_weight_bank, squared_distances
from .evaluate import Results, evaluate
from .memory import BiasReducingMemory, layer_features, mean_average_precision, train_memory
from .progress import Progress
from .viz.report import (
    ReportItem,
    ReportSection,
    Target,
    evaluation_metrics,
    save_grid,
    write_report,
)
from .zoo import load_model

LAYER = "features"  # the explained layer of the demo's small networks
TRAINED_METHODS = ("mcam", "mcam-gradcam", "embedding-gradcam")  # need a trained artifact
NET_FORMAT = "camkit.demo-net"
CACHE_VERSION = 1  # part of every cache key: raise it when what the parts train changes
UPSCALE = 4  # synthetic 64-pixel images are shown at 4 × their size
# The small networks' tensors are tiny: more CPU threads only add contention.
PART_THREADS = {"mcam": 1, "embedding": 1}
PartSettings = Any  # one of the *Settings dataclasses below


@dataclass(frozen=True)
class ClassicSettings:
    """The classic part: the quokka plus ``images`` foolbox ImageNet samples; the cost knobs
    of the perturbation methods (Score-CAM family on the ``max_channels`` channels of largest
    variance with ``num_samples`` samples; occlusion window and stride in input pixels)."""

    images: int = 2
    max_channels: int = 64
    num_samples: int = 2
    window: int = 48
    stride: int = 24

    def options(self) -> dict[str, int]:
        """The ``camkit.explain`` options (each method takes those it declares)."""
        return {"max_channels": self.max_channels, "num_samples": self.num_samples,
                "window": self.window, "stride": self.stride}


@dataclass(frozen=True)
class McamSettings:
    """The M-CAM part. In the training split class ``pair[1]`` is ``rarity`` times as frequent
    as the others on its own and present with probability ``cooccur`` whenever ``pair[0]``
    is; the test split is decorrelated (every class independent, with the same frequency).
    Objects sit at random places or (``placement="anchored"``) at one place per class. M-CAM
    runs with the ``sharpness`` and ``base`` options of ``mcam`` (the defaults 1 and "none"
    are the seed's exp(τ) weights)."""

    train: int = 1500
    test: int = 96
    image_size: int = 64
    classes: int = 4
    pair: tuple[int, int] = (0, 1)
    cooccur: float = 0.95
    rarity: float = 0.1
    width: int = 32
    steps: int = 250
    memory_epochs: int = 10
    # The best measured trained-memory configuration of the bias benchmark
    # (docs/evaluation.md): objects at one place per class, weights exp(30 τ).
    placement: str = "anchored"
    sharpness: float = 30.0
    base: str = "none"
    seed: int = 0

    def mcam_options(self) -> dict[str, Any]:
        """The ``mcam`` options besides the memory."""
        return {"sharpness": self.sharpness, "base": self.base}


@dataclass(frozen=True)
class EmbeddingSettings:
    """The embedding part: single-object synthetic images of ``classes`` classes; a triplet
    network (batch-hard loss, ``steps`` steps) and a weight bank of its training images."""

    train: int = 300
    test: int = 120
    image_size: int = 64
    classes: int = 6
    width: int = 32
    dim: int = 32
    steps: int = 150
    margin: float = 0.2
    triplets: int = 20
    top_m: int = 16
    queries: int = 4
    neighbours: int = 3
    seed: int = 0


DEFAULTS: dict[str, PartSettings] = {
    "classic": ClassicSettings(), "mcam": McamSettings(), "embedding": EmbeddingSettings()}
QUICK: dict[str, PartSettings] = {
    "classic": ClassicSettings(images=0, max_channels=16, num_samples=1, window=112, stride=56),
    "mcam": McamSettings(train=600, test=48, steps=120, memory_epochs=5),
    "embedding": EmbeddingSettings(train=180, test=60, steps=80),
}


@dataclass
class Part:
    """One finished part: its report section, PNG grids, one-line summary and settings."""

    name: str
    section: ReportSection
    grids: list[Path]
    summary: str
    settings: dict[str, Any]
    cache: str = "-"  # "trained" or "reused" for the parts that train something
    seconds: float = 0.0


# -- small networks, their training and their cache --------------------------------------------


class DemoNet(nn.Module):
    """Four 3×3 convolutions with ReLU (``features``: ``(B, 2·width, H/8, W/8)``), global
    average pooling and a linear layer: class logits (a GAP → FC head), or with
    ``embedding=True`` an L2-normalised embedding of ``outputs`` dimensions."""

    def __init__(self, outputs: int, width: int = 32, embedding: bool = False) -> None:
        super().__init__()
        wide = 2 * width
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, 2, 1), nn.ReLU(), nn.Conv2d(width, wide, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(wide, wide, 3, 1, 1), nn.ReLU(), nn.Conv2d(wide, wide, 3, 2, 1), nn.ReLU())
        self.fc = nn.Linear(wide, outputs)
        self.embedding = embedding

    def forward(self, x: Tensor) -> Tensor:
        out = self.fc(self.features(x).mean(dim=(2, 3)))
        return F.normalize(out, dim=1) if self.embedding else out


def seeded_net(seed: int, *args: Any, **kwargs: Any) -> DemoNet:
    """A :class:`DemoNet` initialised from ``seed`` (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DemoNet(*args, **kwargs)


def train_net(net: nn.Module, batches: Iterator[tuple[Tensor, Tensor]],
              loss_fn: Callable[[Tensor, Tensor], Tensor], steps: int, desc: str,
              progress: bool | None, lr: float = 3e-3) -> nn.Module:
    """``steps`` Adam steps of ``loss_fn(net(x), y)`` over ``batches``; returns the network
    frozen and in eval mode."""
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    with Progress(steps, desc, progress, unit="step") as bar:
        for _, (x, y) in zip(range(steps), batches, strict=False):
            loss = loss_fn(net(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            bar.update(1)
    return net.eval().requires_grad_(False)


def random_batches(x: Tensor, y: Tensor, size: int, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless shuffled epochs of ``(x, y)`` in batches of ``size``."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        for rows in torch.randperm(len(x), generator=generator).split(size):
            yield x[rows], y[rows]


def balanced_batches(x: Tensor, labels: Tensor, per_class: int, seed: int
                     ) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless batches of ``per_class`` images (drawn with replacement) of every class."""
    generator = torch.Generator().manual_seed(seed)
    members = [(labels == c).nonzero()[:, 0] for c in labels.unique()]
    while True:
        rows = torch.cat([m[torch.randint(len(m), (per_class,), generator=generator)]
                          for m in members])
        yield x[rows], labels[rows]


def batch_hard_loss(embeddings: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Batch-hard triplet loss (Hermans, Beyer & Leibe 2017): every anchor with its farthest
    positive and nearest negative of the batch, ``mean [d(a,p) − d(a,n) + m]_+``."""
    d = squared_distances(embeddings, embeddings)
    same = labels[:, None] == labels[None]
    farthest_positive = d.masked_fill(~same, 0.0).amax(dim=1)
    nearest_negative = d.masked_fill(same, float("inf")).amin(dim=1)
    return F.relu(farthest_positive - nearest_negative + margin).mean()


def save_net(net: nn.Module, path: Path) -> Path:
    """The network's weights as safetensors (see :func:`camkit.artifacts.write_safetensors`)."""
    tensors = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    return write_safetensors(tensors, {"format": NET_FORMAT}, path)


def load_net(net: nn.Module, path: Path) -> nn.Module:
    """``net`` with the weights of a :func:`save_net` file; frozen and in eval mode."""
    tensors, header = read_safetensors(path, "demo network")
    check_format(header, NET_FORMAT, None, path, "camkit demo network")
    expected = {k: (tuple(v.shape), v.dtype) for k, v in net.state_dict().items()}
    check_tensors(tensors, expected, path, "demo network")
    net.load_state_dict(tensors)
    return net.eval().requires_grad_(False)


def cache_key(settings: PartSettings) -> str:
    """A short hash of the settings dataclass and :data:`CACHE_VERSION`."""
    text = json.dumps({"cache_version": CACHE_VERSION, **asdict(settings)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cached(cache: Path, part: str, settings: PartSettings, build: Callable[[Path], None]
           ) -> tuple[Path, bool]:
    """``(cache/<part>-<key>, reused)``: the folder is reused when it exists; otherwise
    ``build(folder)`` fills a scratch folder that is renamed into place once complete, so an
    interrupted run leaves nothing half made. The settings are written beside as JSON."""
    folder = cache / f"{part}-{cache_key(settings)}"
    if folder.is_dir():
        return folder, True
    scratch = folder.with_name(folder.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    (scratch / "settings.json").write_text(json.dumps(asdict(settings), indent=2))
    build(scratch)
    scratch.rename(folder)
    return folder, False


# -- data and report items ----------------------------------------------------------------------


def stack(data: Any) -> tuple[Tensor, ...]:
    """Every item of a data set of tuples, stacked column by column."""
    items = [data[i] for i in range(len(data))]
    return tuple(torch.stack(column) for column in zip(*items, strict=True))


def picture(image: Tensor, scale: int = UPSCALE) -> np.ndarray:
    """A ``(3, H, W)`` image in [0, 1] as uint8 ``(scale·H, scale·W, 3)`` (nearest)."""
    rgb = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return rgb.repeat(scale, axis=0).repeat(scale, axis=1)


def maps_of(expl: api.Explanation, b: int) -> dict[str, Any]:
    """Image ``b``'s normalised and raw maps of every method, as :class:`ReportItem` fields."""
    return {"maps": {m: expl[m][b] for m in expl}, "raw": {m: expl.raw[m][b] for m in expl}}


def multilabel_item(expl: api.Explanation, b: int, image: Tensor, name: str,
                    class_names: Sequence[str]) -> ReportItem:
    """Image ``b`` of a multi-label explanation: per-class sigmoid probabilities."""
    probabilities = expl.outputs[b].detach().float().sigmoid()
    targets = [Target(class_names[c], float(expl.scores[b, k]), float(probabilities[c]))
               for k, c in enumerate(expl.targets[b].tolist())]
    ranked = [(class_names[c], float(probabilities[c]))
              for c in probabilities.argsort(descending=True).tolist()]
    return ReportItem(name, picture(image), targets, predictions=ranked, **maps_of(expl, b))


# -- part 1: classic methods on real photos -----------------------------------------------------


def classic_methods() -> list[str]:
    """Every registered method that needs no trained artifact."""
    return [m for m in api.available_methods() if m not in TRAINED_METHODS]


def classic_part(out: Path, s: ClassicSettings, progress: bool | None) -> Part:
    """EfficientNet-Lite0 on the quokka and ``s.images`` ImageNet samples, every classic
    method; per-photo overlays, grids and maps under ``out/images/``."""
    from .cli import explain_images  # camkit.cli imports this module
    from .data import imagenet_samples, quokka

    photo = out / "quokka.png"
    out.mkdir(parents=True, exist_ok=True)
    quokka().image.save(photo)
    paths = [photo, *(sample.path for sample in imagenet_samples()[: s.images])]
    loaded, methods = load_model(), classic_methods()
    results, _ = explain_images(paths, loaded, methods, out / "images", options=s.options())
    items = [r.report for r in results]
    section = ReportSection(
        "Classic methods on real photos", items,
        f"The pretrained {loaded.arch} (ImageNet) explains photos that ship inside installed "
        f"packages, for its top class, with every classic method ({len(methods)}).")
    first = results[0]
    return Part("classic", section, [save_grid(items, out / "grids" / "classic.png"),
                                     *(r.out_dir / "grid.png" for r in results)],
                f"{len(results)} photos × {len(methods)} methods; {first.path.stem} → "
                f"{first.predictions[0][0]} {first.predictions[0][1]:.0%}",
                {"model": loaded.arch, "layer": loaded.layer, "methods": methods,
                 **s.options()})


# -- part 2: M-CAM on a biased data set ---------------------------------------------------------


def mcam_splits(s: McamSettings) -> tuple[SyntheticMultiLabel, SyntheticMultiLabel]:
    """The biased training split and the decorrelated test split."""
    first, second = s.pair
    common = {"image_size": s.image_size, "num_classes": s.classes, "seed": s.seed,
              "placement": s.placement}
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
    weights = "exp(τ)" if s.sharpness == 1 else f"exp({s.sharpness:g} τ)"
    base = {"none": "", "slot": " × the slot's channel profile",
            "classifier": " × the memory classifier's weights"}[s.base]
    seed = " (the seed's weights)" if s.sharpness == 1 and s.base == "none" else ""
    return f"channel weights {weights}{base}{seed}"


def mcam_metrics(net: nn.Module, memory: BiasReducingMemory, test: SyntheticMultiLabel,
                 s: McamSettings, progress: bool | None) -> Results:
    """``camkit.evaluate`` of Grad-CAM and M-CAM on every labelled class of the test split."""
    a, b = s.pair
    return evaluate(net, test, ["gradcam", "mcam"], ["energy-mask", "energy-leak"], LAYER,
                    targets="label",
                    method_options={"mcam": {"memory": memory, **s.mcam_options()}},
                    metric_options={"energy-leak": {"partners": {a: b, b: a}}},
                    seed=s.seed, progress=progress)


def energy(results: Results, method: str, metric: str) -> float:
    """The mean share of ``method``'s maps on the target's own mask (``energy-mask``) or on its
    co-occurring partner's mask (``energy-leak``)."""
    return results.summary(method, metric).mean


# -- part 3: embedding Grad-CAM by weight transfer ----------------------------------------------


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
        [Target("the embedding")],
        maps={name: e["embedding-gradcam"][b] for name, e in transfers.items()},
        raw={name: e.raw["embedding-gradcam"][b] for name, e in transfers.items()},
        gallery=gallery, gallery_title="Nearest bank images")


# -- the command --------------------------------------------------------------------------------

PARTS: dict[str, Callable[[Path, Any, bool | None], Part]] = {
    "classic": classic_part, "mcam": mcam_part, "embedding": embedding_part}


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads (``None``: as it is), then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_parts(out: Path, settings: Mapping[str, PartSettings], progress: bool | None = None,
              threads: int | None = None) -> list[Part]:
    """Run the parts named in ``settings`` (in :data:`PARTS` order) with their settings;
    ``threads`` torch CPU threads for the classic part (``None``: torch's default), one for
    the small networks (:data:`PART_THREADS`)."""
    done = []
    for name, make in PARTS.items():
        if name in settings:
            start = time.perf_counter()
            with torch_threads(PART_THREADS.get(name, threads)):
                part = make(out, settings[name], progress)
            part.seconds = time.perf_counter() - start
            done.append(part)
    return done


def write_demo_report(out: Path, parts: Sequence[Part], command: str) -> Path:
    """``out/report.html``: one section per part, with every part's settings."""
    settings = {"command": command, **{f"{p.name} settings": p.settings for p in parts}}
    return write_report(out / "report.html", [p.section for p in parts], settings,
                        title="camkit demo")


def summary_table(parts: Sequence[Part]) -> str:
    """One line per part: its name, seconds, whether it trained or reused, its result."""
    rows = [("part", "time", "training", "result")]
    rows += [(p.name, f"{p.seconds:.0f} s", p.cache, p.summary) for p in parts]
    rows.append(("total", f"{sum(p.seconds for p in parts):.0f} s", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, [*widths, 0], strict=True))
                     .rstrip() for row in rows)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``demo`` sub-command to an ``argparse`` sub-parser collection."""
    de = subparsers.add_parser(
        "demo", help="the showcase: classic methods, M-CAM and embedding Grad-CAM in one report",
        description=__doc__.split("\n\n")[0])
    de.add_argument("--out", default="runs/demo", help="output folder (cache/ inside it)")
    de.add_argument("--parts", default=",".join(PARTS),
                    help=f"comma-separated parts to run, of {', '.join(PARTS)}")
    de.add_argument("--quick", action="store_true", help="smaller settings (a smoke run)")
    de.add_argument("--images", type=int, default=None,
                    help="ImageNet samples shown besides the quokka (classic part)")
    de.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads of the classic part (default: torch's choice)")
    de.set_defaults(run=run)
    return de


def demo_settings(args: argparse.Namespace) -> dict[str, PartSettings]:
    """The settings of each part asked for by ``--parts``, ``--quick`` and ``--images``."""
    names = [n.strip() for n in args.parts.split(",") if n.strip()]
    unknown = sorted(set(names) - set(PARTS))
    if unknown or not names:
        raise ValueError(f"unknown demo part(s) {unknown}; choose from {', '.join(PARTS)}")
    settings = {n: (QUICK if args.quick else DEFAULTS)[n] for n in names}
    if args.images is not None and "classic" in settings:
        settings["classic"] = replace(settings["classic"], images=args.images)
    return settings


def run(args: argparse.Namespace) -> int:
    """Run ``camkit demo``; returns the exit status."""
    out = Path(args.out)
    parts = run_parts(out, demo_settings(args), threads=args.threads)
    report = write_demo_report(out, parts, "camkit " + " ".join(getattr(args, "argv", ["demo"])))
    print(summary_table(parts))
    print(f"\nReport: {report.resolve()}")
    for part in parts:
        print(f"{part.name} grids: " + ", ".join(str(g) for g in part.grids))
    print(f"Trained networks, memory and bank: {(out / 'cache').resolve()}", file=sys.stderr)
    return 0

