"""The bias benchmark (`make bench-bias`): do M-CAM's maps resist a biased training set better
than the classic CAM methods?

Per data set and seed: a small CNN is trained on a biased training split (classes 0→1 and 2→3
co-occur with P(partner | class) = 0.9, classes 4 and 5 are 50 times rarer than the others),
the M-CAM memory is trained on the CNN's features of the same split, and every method explains
every labelled class of a decorrelated test split (independent, balanced classes, each also
alone), scored by `camkit.evaluate`: energy on the target's mask, energy leaking onto the
co-occurring partner's mask, pointing game, Average Drop, Increase in Confidence, Infidelity,
max-Sensitivity and time per image. Data sets: the synthetic shapes
(`camkit.data.synthetic.SyntheticMultiLabel`) and Fashion-MNIST mosaics
(`camkit.data.mosaic.MosaicMultiLabel`). Then the pretrained EfficientNet-Lite0 with every
classic method on grid mosaics of foolbox's ImageNet photos (grid pointing game) and on
imgaug's quokka photo (box and mask).

    python benchmarks/bench_bias.py [--quick] [--docs docs/evaluation.md] [--out DIR]

Results go to ``--out`` (JSON and Markdown per part) and, with ``--docs``, replace the section
between ``<!-- bias:start -->`` and ``<!-- bias:end -->`` of that file.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from camkit.data.files import evaluation_data
from camkit.data.mosaic import ImageNetGrid, MosaicMultiLabel, fashion_pool
from camkit.data.synthetic import SyntheticMultiLabel
from camkit.evaluate import METRICS, EvaluationResults, evaluate
from camkit.memory import layer_features, mean_average_precision, train_memory
from camkit.zoo import imagenet_classes, load_model
from common import THREADS, machine, update_marked_section

CLASSIC = ("cam", "gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "scorecam",
           "ablationcam", "eigencam", "eigengradcam")
METHODS = (*CLASSIC, "mcam")
BIAS_METRICS = ("energy-mask", "energy-leak", "pointing-mask", "average-drop",
                "increase-in-confidence", "infidelity", "sensitivity")
PAIRS = {(0, 1): 0.9, (2, 3): 0.9}
RARE = {4: 1 / 50, 5: 1 / 50}
PARTNERS = {0: 1, 1: 0, 2: 3, 3: 2}  # energy-leak: each paired class against its partner
FASHION_CLASSES = (0, 1, 8, 7, 3, 9)  # T-shirt→Trouser, Bag→Sneaker paired; Dress, boot rare
LAYER = "features"
# Score-CAM on EfficientNet-Lite0's 1280 channels costs 1280 forward passes per image: keep
# the 128 channels of highest activation variance (its max_channels option).
PRETRAINED_OPTIONS = {"scorecam": {"max_channels": 128, "progress": False}}


@dataclass(frozen=True)
class Settings:
    """Sizes of the run (``QUICK`` for a smoke test)."""

    seeds: int = 5
    train: int = 2400
    test: int = 192
    epochs: int = 10
    memory_epochs: int = 10
    draws: int = 10  # perturbations of Infidelity and Sensitivity
    presence: float = 0.5
    grids: int = 8


QUICK = Settings(seeds=2, train=300, test=12, epochs=3, memory_epochs=3, draws=3, grids=1)


class SmallCNN(nn.Module):
    """Three stride-2 3×3 convolutions with ReLU (``features``: ``(B, 64, ⌈H/8⌉, ⌈W/8⌉)``)
    → global average pool → fc: a GAP → FC head, so CAM applies."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU())
        self.fc = nn.Linear(64, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def stacked(data: Dataset) -> tuple[Tensor, Tensor]:
    """Images ``(n, 3, H, W)`` and multi-hot labels ``(n, K)`` of a data set of tuples."""
    items = [data[i] for i in range(len(data))]
    return torch.stack([it[0] for it in items]), torch.stack([it[1] for it in items])


def train_cnn(x: Tensor, y: Tensor, seed: int, epochs: int) -> SmallCNN:
    """A :class:`SmallCNN` trained with BCE and Adam (lr 3e-3, batch 64); frozen, eval mode."""
    torch.manual_seed(seed)
    net = SmallCNN(y.shape[1])
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for rows in torch.randperm(len(x), generator=order).split(64):
            loss = nn.functional.binary_cross_entropy_with_logits(net(x[rows]), y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return net.eval().requires_grad_(False)


def synthetic_splits(seed: int, s: Settings) -> tuple[Dataset, Dataset]:
    """Biased synthetic train split and its decorrelated test split (6 classes, 64 px)."""
    common = {"num_classes": 6, "presence": s.presence, "seed": seed}
    return (SyntheticMultiLabel(s.train, cooccur=PAIRS, imbalance=RARE, **common),
            SyntheticMultiLabel(s.test, split="test", **common))


def fashion_splits(seed: int, s: Settings) -> tuple[Dataset, Dataset]:
    """Biased Fashion-MNIST mosaics (3×3 cells of 28 px) and their decorrelated test split
    drawn from Fashion-MNIST's test items."""
    train = MosaicMultiLabel(fashion_pool("train"), s.train, FASHION_CLASSES, (3, 3),
                             cooccur=PAIRS, imbalance=RARE, presence=s.presence, seed=seed)
    return train, train.decorrelated(s.test, fashion_pool("test"))


SPLITS: dict[str, Callable[[int, Settings], tuple[Dataset, Dataset]]] = {
    "synthetic": synthetic_splits, "fashion-mosaic": fashion_splits}


def bias_run(kind: str, seed: int, s: Settings) -> tuple[EvaluationResults, dict[str, float]]:
    """One seed of one data set: train the CNN and the memory, evaluate every method."""
    train, test = SPLITS[kind](seed, s)
    x, y = stacked(train)
    start = time.perf_counter()
    net = train_cnn(x, y, seed, s.epochs)
    trained = time.perf_counter()
    memory = train_memory(net, LAYER, TensorDataset(x, y), y.shape[1], epochs=s.memory_epochs,
                          seed=seed, progress=False)
    quality = heads_quality(net, memory, test)
    quality.update(cnn_training_s=trained - start, memory_training_s=time.perf_counter() - trained)
    draws = {"n_samples": s.draws}
    results = evaluate(net, test, METHODS, BIAS_METRICS, LAYER, targets="label", seed=seed,
                       method_options={"mcam": {"memory": memory},
                                       "scorecam": {"progress": False}},
                       metric_options={"energy-leak": {"partners": PARTNERS},
                                       "infidelity": draws, "sensitivity": draws},
                       progress=False)
    return results, quality


def heads_quality(net: SmallCNN, memory: nn.Module, test: Dataset) -> dict[str, float]:
    """Test mAP of the CNN and of the memory's classifier, and the rare classes' AP."""
    x, y = stacked(test)
    with torch.no_grad():
        cnn, head = net(x), memory(layer_features(net, LAYER, x))
    rare = list(RARE)
    return {"cnn_map": mean_average_precision(cnn, y),
            "memory_map": mean_average_precision(head, y),
            "cnn_rare_map": mean_average_precision(cnn[:, rare], y[:, rare])}


def bias_part(kind: str, s: Settings, out: Path) -> dict[str, Any]:
    """Every seed of one data set, combined so that each cell's spread is across seeds."""
    runs, qualities = [], []
    for seed in range(s.seeds):
        results, quality = bias_run(kind, seed, s)
        results.save(out / kind / f"seed-{seed}")
        runs.append(results)
        qualities.append(quality)
        print(f"{kind} seed {seed}: {quality}", flush=True)
    combined = EvaluationResults.combine(runs, [f"seed {i}" for i in range(s.seeds)])
    combined.save(out / kind)
    return {"results": combined, "quality": qualities, "constant": constant_share(runs)}


def pretrained_part(s: Settings, out: Path) -> dict[str, EvaluationResults]:
    """EfficientNet-Lite0: grid pointing on ImageNet grid mosaics, box and mask on the quokka."""
    loaded = load_model("efficientnet-lite0")
    grids = ImageNetGrid(s.grids, loaded.preprocess, seed=0, class_names=imagenet_classes())
    quokka, _ = evaluation_data("quokka", loaded.preprocess, loaded.class_names)
    parts = {
        "imagenet-grid": evaluate(loaded.model, grids, CLASSIC, ["grid-pointing"], loaded.layer,
                                  targets="label", confidence="softmax",
                                  method_options=PRETRAINED_OPTIONS, progress=False),
        "quokka": evaluate(loaded.model, quokka, CLASSIC,
                           ["energy-box", "energy-mask", "pointing-box", "pointing-mask"],
                           loaded.layer, method_options=PRETRAINED_OPTIONS, progress=False),
    }
    for name, results in parts.items():
        results.save(out / name)
    return parts


# ---------------------------------------------------------------------------------------------
# The Markdown section


def _cell(results: EvaluationResults, method: str, metric: str, spread: str) -> str:
    """``mean ± spread``: ``"ci"`` the 95 % half-width, ``"sd"`` the standard deviation."""
    s = results.summary(method, metric)
    values = results.values[method][metric]
    values = values[np.isfinite(values)]
    if s.n == 0:
        return "—"
    if s.n == 1:
        return f"{s.mean:.3g}"
    half = s.high - s.mean if spread == "ci" else float(np.std(values, ddof=1))
    return f"{s.mean:.3g} ± {half:.2g}"


def constant_share(runs: Sequence[EvaluationResults]) -> dict[str, float]:
    """Per method, the share of its maps over ``runs`` that came out constant (all zero)."""
    return {m: sum(r.constant[m] for r in runs) / max(1, sum(len(r.pairs[m]) for r in runs))
            for m in runs[0].methods}


def table(results: EvaluationResults, constant: dict[str, float], spread: str = "ci") -> list[str]:
    """Methods × metrics (mean ± :func:`_cell`'s ``spread``), explanation milliseconds per
    image and the share of maps that came out constant (:func:`constant_share`)."""
    head = [f"{m} {'↑' if METRICS[m].higher_is_better else '↓'}" for m in results.metrics]
    lines = ["| method | " + " | ".join(head) + " | ms / image | constant maps |",
             "|---|" + "---:|" * (len(head) + 2)]
    for method in results.methods:
        cells = [_cell(results, method, m, spread) for m in results.metrics]
        ms = 1000 * results.seconds_per_image(method)
        lines.append(f"| {method} | " + " | ".join(cells)
                     + f" | {ms:.1f} | {constant[method]:.0%} |")
    return lines


def ranking(results: EvaluationResults, method: str = "mcam") -> list[str]:
    """Per metric: ``method``'s rank among all methods and the best method."""
    lines = []
    for metric in results.metrics:
        sign = 1 if METRICS[metric].higher_is_better else -1
        means = {m: results.summary(m, metric).mean for m in results.methods}
        order = sorted(means, key=lambda m: -sign * means[m])
        lines.append(f"- {metric}: M-CAM {means[method]:.3g}, rank {order.index(method) + 1} "
                     f"of {len(order)}; best {order[0]} {means[order[0]]:.3g}")
    return lines


def quality_line(qualities: Sequence[dict[str, float]]) -> str:
    def mean(key: str) -> str:
        values = [q[key] for q in qualities]
        return f"{sum(values) / len(values):.3f} (seeds: {', '.join(f'{v:.3f}' for v in values)})"

    return (f"Test mAP of the CNN {mean('cnn_map')}, of the M-CAM memory's classifier "
            f"{mean('memory_map')}; the CNN's mAP on the two rare classes {mean('cnn_rare_map')}. "
            f"Training: CNN {mean('cnn_training_s')} s, memory {mean('memory_training_s')} s.")


def markdown(bias: dict[str, dict[str, Any]], pretrained: dict[str, EvaluationResults], s: Settings,
             command: str, wall: float, loads: tuple[float, float]) -> str:
    lines = ["## The bias benchmark (M-CAM against the classic methods)", "",
             f"Command: `{command}`; whole run {wall / 60:.1f} min on {machine()}; load "
             f"average {loads[0]:.1f} at the start, {loads[1]:.1f} at the end (other processes "
             "on the cores would inflate the times, which compare only within a table). "
             f"Settings: `{json.dumps(asdict(s))}`.", "",
             "Synthetic and mosaic tables: each cell is the mean over the seeds (each seed its own "
             "data, CNN and memory) ± the standard deviation of the seeds' means. Pretrained "
             "tables: mean ± 95 % confidence half-width over the (image, class) pairs. ↑ higher "
             "is better, ↓ lower is better; ms / image is the explanation alone.", ""]
    for kind, part in bias.items():
        lines += [f"### {kind}: biased training split, decorrelated test split", "",
                  quality_line(part["quality"]), "",
                  *table(part["results"], part["constant"], "sd"), "",
                  "M-CAM's rank per metric (by the mean over seeds):", "",
                  *ranking(part["results"]), ""]
    lines += ["### EfficientNet-Lite0 (pretrained) on real photos", ""]
    for name, results in pretrained.items():
        lines += [f"{name}: {len(results.pairs[results.methods[0]])} (image, class) pairs.", "",
                  *table(results, constant_share([results])), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per data set")
    parser.add_argument("--out", default="runs/bench_bias", help="output folder")
    parser.add_argument("--docs", default=None, help="update this markdown file's section")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else Settings()
    if args.seeds:
        settings = replace(settings, seeds=args.seeds)
    torch.set_num_threads(THREADS)
    out, start, load = Path(args.out), time.perf_counter(), os.getloadavg()[0]
    bias = {kind: bias_part(kind, settings, out) for kind in SPLITS}
    pretrained = pretrained_part(settings, out)
    command = "python benchmarks/bench_bias.py" + "".join(f" {shlex.quote(a)}"
                                                         for a in sys.argv[1:])
    section = markdown(bias, pretrained, settings, command, time.perf_counter() - start,
                       (load, os.getloadavg()[0]))
    (out / "bias.md").write_text(section)
    if args.docs:
        update_marked_section(Path(args.docs), "bias", section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
