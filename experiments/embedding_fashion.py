"""Grad-CAM for embedding networks on Fashion-MNIST canvases: the paper's comparison with exact
ground truth (issue 5, point 5; ALGORITHMS §2, §4.5, §5.2).

Fashion-MNIST items (Debian ``dataset-fashion-mnist``) are pasted at random positions on
cluttered canvases (:class:`camkit.data.canvas.CanvasDataset`: exact boxes and masks). A small
triplet CNN is trained on the CPU, then every explanation of a test canvas is scored by the
share of its heat map inside the item's box and mask (ALGORITHMS §4.5):

- direct backpropagation on the test image (triplets drawn among the test images with their
  labels): Grad-CAM from one triplet, averaged over T triplets, averaged + top-M channels, and
  the Grad-CAM++ variants;
- weight transfer without backpropagation, from a bank of training canvases: nearest
  neighbour (Grad-CAM and Grad-CAM++ banks), k nearest neighbours, k-means clusters;
- references: Grad-CAM of the cosine similarity to the positive
  (:class:`camkit.targets.Similarity`), the plain sum of the layer's channels, a uniform map.

One command reproduces everything (about 10 minutes on 2 CPU cores)::

    python experiments/embedding_fashion.py --out runs/embedding_fashion

It writes ``results.json``, ``results.md`` and ``examples.png`` into ``--out``;
``--docs docs/evaluation.md`` also replaces the section between ``<!-- embedding:start -->``
and ``<!-- embedding:end -->`` of that file with the results.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

import camkit
from camkit import capture, embedding
from camkit.data.canvas import CanvasDataset
from camkit.embedding.triplets import Triplets
from camkit.metrics import box_masks, energy_share, summarize
from camkit.postprocess import postprocess
from camkit.targets import Similarity
from camkit.viz import grid, overlay, save_png

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from common import update_marked_section  # noqa: E402

LAYER = "features"


@dataclass
class Settings:
    """Everything that defines a run (recorded in results.json)."""

    seed: int = 0
    canvas: int = 64
    scale: tuple[float, float] = (0.9, 1.4)
    clutter: int = 6
    train_items: int = 10000
    bank_items: int = 2000
    test_items: int = 500
    embedding_dim: int = 64
    margin: float = 0.2
    steps: int = 200
    classes_per_batch: int = 8
    images_per_class: int = 16
    lr: float = 2e-3
    triplets: int = 100
    top_m: int = 50
    neighbours: int = 5
    clusters: int = 50
    threads: int = 2


class TripletNet(nn.Module):
    """A small CNN: ``features`` ends in a ``(B, 256, 8, 8)`` ReLU map (the explained layer)
    for 64 × 64 inputs, then global average pooling, a linear layer and L2 normalisation give
    the embedding."""

    def __init__(self, dim: int) -> None:
        super().__init__()

        def block(i: int, o: int, stride: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

        self.features = nn.Sequential(*block(1, 16, 2), *block(16, 32), nn.MaxPool2d(2),
                                      *block(32, 64), nn.MaxPool2d(2), *block(64, 128),
                                      *block(128, 256))
        self.head = nn.Linear(256, dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.head(self.features(x).mean(dim=(2, 3))), dim=1)


def batch_all_loss(emb: Tensor, labels: Tensor, margin: float) -> tuple[Tensor, float]:
    """The "batch all" triplet loss (Hermans et al. 2017, eq. 4 with the mean over the active
    triplets): every valid (a, p, n) of the batch, :func:`camkit.embedding.triplet_loss`."""
    losses = embedding.triplet_loss(emb[:, None, None], emb[None, :, None], emb[None, None, :],
                                    margin)
    same = labels[:, None] == labels[None]
    eye = torch.eye(len(labels), dtype=torch.bool)
    valid = (same & ~eye)[:, :, None] & ~same[:, None, :]
    active = valid & (losses > 0)
    return losses[active].sum() / active.sum().clamp(min=1), float(active.sum() / valid.sum())


def train(model: TripletNet, images: Tensor, labels: Tensor, s: Settings) -> dict[str, float]:
    """Class-balanced batches (P classes × K images), Adam, cosine learning-rate decay."""
    rng = np.random.default_rng(s.seed)
    by_class = [np.flatnonzero(labels.numpy() == c) for c in range(int(labels.max()) + 1)]
    optimiser = torch.optim.Adam(model.parameters(), lr=s.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, s.steps)
    model.train()
    start, log = time.perf_counter(), []
    for step in range(s.steps):
        classes = rng.choice(len(by_class), s.classes_per_batch, replace=False)
        rows = np.concatenate([rng.choice(by_class[c], s.images_per_class, replace=False)
                               for c in classes])
        loss, active = batch_all_loss(model(images[rows]), labels[rows], s.margin)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        log.append((float(loss.detach()), active))
        if step % 50 == 0 or step == s.steps - 1:
            print(f"  step {step:4d}: loss {loss:.3f}, active triplets {active:.1%}",
                  file=sys.stderr)
    model.eval()
    last = np.array(log[-20:])
    return {"seconds": time.perf_counter() - start, "final_loss": float(last[:, 0].mean()),
            "final_active_share": float(last[:, 1].mean())}


def recall_at_1(queries: Tensor, q_labels: Tensor, keys: Tensor, k_labels: Tensor,
                same_set: bool) -> float:
    """Share of queries whose nearest key (itself excluded when ``same_set``) has its label."""
    d = embedding.squared_distances(queries, keys)
    if same_set:
        d.fill_diagonal_(float("inf"))
    return float((k_labels[d.argmin(dim=1)] == q_labels).float().mean())


def direct_weights(model: nn.Module, images: Tensor, emb: Tensor, triplets: Triplets,
                   s: Settings, variant: str, sign: float = -1.0, per_triplet: bool = True,
                   count: int | None = None) -> tuple[Tensor, Tensor]:
    """Weights ``(N, T, C)`` (``(N, 1, C)`` of the mean loss without ``per_triplet``) and
    activations ``(N, C, h, w)`` of test anchors, by backpropagation of the triplet loss
    (``camkit.embedding.triplet_weights``) with their first ``count`` triplets (all: None)."""
    module = model.get_submodule(LAYER)
    weights, acts = [], []
    with capture.borrowed(model):
        for start in range(0, len(images), 50):
            rows = torch.arange(start, min(len(images), start + 50))
            pos = emb[triplets.positives[rows, :count]]
            neg = emb[triplets.negatives[rows, :count]]
            result = embedding.triplet_weights(
                model, module, LAYER, images[rows], lambda e, p=pos, n=neg: (e, p, n),
                margin=s.margin, variant=variant, sign=sign, per_triplet=per_triplet)
            weights.append(result.weights)
            acts.append(result.activations)
    return torch.cat(weights), torch.cat(acts)


def maps_of(acts: Tensor, weights: Tensor, m: int | None, size: int) -> Tensor:
    """``P(Σ_{k ∈ TopM} w_k A^k)``: ``(N, C)`` weights → ``(N, 1, S, S)`` maps."""
    channels, values = embedding.top_m(weights, m)
    return postprocess(embedding.channel_map(acts, channels, values), (size, size))[0]


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Per-image Pearson correlation of two ``(N, 1, H, W)`` map sets (NaN for a flat map)."""
    a, b = a.flatten(1), b.flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def summary(values: Tensor) -> dict[str, float]:
    out = summarize(values.numpy())
    return {"mean": out.mean, "ci95": (out.high - out.low) / 2, "n": out.n}


def score(maps: Tensor, boxes: Tensor, masks: Tensor, reference: Tensor | None = None
          ) -> dict[str, object]:
    """Box and mask energy ratios (ALGORITHMS §4.5), blank maps, agreement with a reference."""
    size = tuple(maps.shape[-2:])
    blank = maps.flatten(1).amax(dim=1) <= 0
    result: dict[str, object] = {
        "box": summary(energy_share(maps, box_masks(boxes, size)[:, None])[:, 0]),
        "mask": summary(energy_share(maps, masks[:, None])[:, 0]),
        "blank": int(blank.sum()),
    }
    if reference is not None:
        result["pearson_vs_direct"] = summary(pearson(maps, reference))
    return result


def run(s: Settings, out: Path) -> dict[str, object]:
    torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    common = {"canvas_size": s.canvas, "scale": s.scale, "clutter": s.clutter}
    train_set = CanvasDataset.fashion_mnist("train", s.train_items, seed=s.seed, **common)
    test_set = CanvasDataset.fashion_mnist("test", s.test_items, seed=s.seed + 1, **common)
    x_train, y_train, _, _ = train_set.stack()
    x_test, y_test, boxes, masks = test_set.stack()
    timings["data"] = time.perf_counter() - t0
    print(f"data: {len(x_train)} train, {len(x_test)} test canvases "
          f"({timings['data']:.0f} s)", file=sys.stderr)

    model = TripletNet(s.embedding_dim)
    training = train(model, x_train, y_train, s)
    timings["training"] = training["seconds"]
    e_bank = embedding.embed(model, x_train[:s.bank_items], 250)
    e_test = embedding.embed(model, x_test, 250)
    quality = {"test_recall_at_1_within_test": recall_at_1(e_test, y_test, e_test, y_test, True),
               "test_recall_at_1_in_bank": recall_at_1(e_test, y_test, e_bank,
                                                       y_train[:s.bank_items], False)}
    print(f"training {timings['training']:.0f} s; {quality}", file=sys.stderr)

    # Direct: triplets among the test canvases (active ones, T per anchor), per-triplet weights.
    t0 = time.perf_counter()
    generator = torch.Generator().manual_seed(s.seed)
    labels = embedding.as_labels(y_test)
    triplets = embedding.sample_triplets(e_test, labels, s.triplets, s.margin, "active",
                                         generator=generator)
    w_one, acts = direct_weights(model, x_test, e_test, triplets, s, "gradcam", count=1)
    w_cam, _ = direct_weights(model, x_test, e_test, triplets, s, "gradcam", per_triplet=False)
    w_plus, _ = direct_weights(model, x_test, e_test, triplets, s, "gradcam", 1.0, False)
    w_pp, _ = direct_weights(model, x_test, e_test, triplets, s, "gradcam++")
    timings["direct"] = time.perf_counter() - t0
    size = s.canvas
    w_cam, w_plus = w_cam[:, 0], w_plus[:, 0]
    direct_best = maps_of(acts, w_cam, s.top_m, size)
    rows: dict[str, dict[str, object]] = {}

    def add(name: str, maps: Tensor, reference: Tensor | None = None) -> None:
        rows[name] = score(maps, boxes, masks, reference)

    add("Grad-CAM, 1 triplet", maps_of(acts, w_one[:, 0], None, size))
    add(f"Grad-CAM, averaged over T={s.triplets}", maps_of(acts, w_cam, None, size))
    add(f"Grad-CAM, averaged + top-{s.top_m}", direct_best)
    add("Grad-CAM++, 1 triplet", maps_of(acts, w_pp[:, 0], None, size))
    add(f"Grad-CAM++, averaged over T={s.triplets}", maps_of(acts, w_pp.mean(1), None, size))
    add(f"Grad-CAM++, averaged + top-{s.top_m}", maps_of(acts, w_pp.mean(1), s.top_m, size))
    add(f"Grad-CAM, averaged + top-{s.top_m}, sign +1 (OP-16 check)",
        maps_of(acts, w_plus, s.top_m, size))
    channels = acts.shape[1]
    sweep = {str(m): score(maps_of(acts, w_cam, m, size), boxes, masks)
             for m in (5, 10, 25, 50, 100, channels)}

    # Transfer: banks of training canvases, then camkit.explain without backpropagation.
    t0 = time.perf_counter()
    bank_x, bank_y = x_train[:s.bank_items], y_train[:s.bank_items]
    fit = {"triplets_per_image": s.triplets, "top_m": s.top_m, "margin": s.margin,
           "batch_size": 100}
    bank = embedding.fit_weight_bank(model, LAYER, bank_x, bank_y, **fit)
    timings["bank_gradcam"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    bank_pp = embedding.fit_weight_bank(model, LAYER, bank_x, bank_y, variant="gradcam++", **fit)
    timings["bank_gradcam++"] = time.perf_counter() - t0
    bank_file = bank.save(out / "bank.safetensors")

    def transfer(b: embedding.WeightBank, **options: object) -> tuple[Tensor, dict]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # blank maps are counted in the table
            expl = camkit.explain(model, x_test, methods=["embedding-gradcam"], layer=LAYER,
                                  bank=b, **options)
        return expl["embedding-gradcam"], expl.details["embedding-gradcam"]

    t0 = time.perf_counter()
    nn_maps, nn_info = transfer(bank)
    timings["transfer_nn"] = time.perf_counter() - t0
    add("Transfer (NN), Grad-CAM bank, no backprop", nn_maps, direct_best)
    add("Transfer (NN), Grad-CAM++ bank, no backprop", transfer(bank_pp)[0], direct_best)
    add(f"Transfer ({s.neighbours}-NN average), Grad-CAM bank",
        transfer(bank, neighbours=s.neighbours)[0], direct_best)
    add(f"Transfer (k-means, {s.clusters} clusters), Grad-CAM bank",
        transfer(bank, transfer="kmeans", n_clusters=s.clusters)[0], direct_best)
    neighbour_label_agreement = float((nn_info["neighbour_labels"][:, 0] == y_test).float().mean())

    # References.
    positives = e_test[triplets.positives[:, 0]]
    similarity = camkit.explain(model, x_test, Similarity(positives), ["gradcam"], LAYER)
    add("Reference: Grad-CAM of cosine similarity to the positive", similarity["gradcam"])
    add("Reference: sum of the layer's channels (all weights 1)",
        maps_of(acts, torch.ones(acts.shape[:2]), None, size))
    add("Reference: uniform map (area share)", torch.ones(len(x_test), 1, size, size))
    save_examples(x_test, boxes, {"1 triplet": maps_of(acts, w_one[:, 0], None, size),
                                  "avg + top-M": direct_best, "transfer NN": nn_maps},
                  out / "examples.png")
    return {
        "settings": asdict(s), "rows": rows, "top_m_sweep": sweep, "embedding": quality,
        "training": training, "timings_s": timings,
        "bank": {"size": len(bank), "file": str(bank_file),
                 "no_active_triplet": int(bank.fallback.sum()),
                 "mean_active_triplets": float(bank.active.float().mean()),
                 "nn_label_agreement": neighbour_label_agreement},
        "direct_triplets": {"no_active_triplet": int(triplets.fallback.sum())},
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "cpu_threads": s.threads},
    }


def save_examples(images: Tensor, boxes: Tensor, maps: dict[str, Tensor], path: Path) -> None:
    """A grid: test canvases with their box, then each map overlaid."""
    panels = []
    for i in range(6):
        view = (images[i, 0].numpy() * 255).astype(np.uint8).repeat(4, 0).repeat(4, 1)
        rgb = np.stack([view] * 3, axis=-1)
        x1, y1, x2, y2 = (4 * int(v) for v in boxes[i])
        boxed = rgb.copy()
        boxed[y1:y2, [x1, x2 - 1]] = boxed[[y1, y2 - 1], x1:x2] = (0, 255, 0)
        row = [(boxed, "canvas + box")]
        row += [(overlay(rgb, F.interpolate(m[i:i + 1], scale_factor=4)[0, 0]), name)
                for name, m in maps.items()]
        panels.append(row)
    save_png(grid(panels), path)


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        "## Grad-CAM for embedding networks", "",
        "Share of the heat map inside the object's box and mask (ALGORITHMS §4.5: "
        "`Σ_{p∈R} Ĥ(p) / Σ_p Ĥ(p)`, mean over test canvases, ± 95% confidence half-width) "
        "for a triplet network trained on Fashion-MNIST items pasted on cluttered canvases "
        "(`camkit.data.canvas.CanvasDataset`, exact boxes and masks). *Direct* rows "
        "backpropagate the triplet loss on the test image (triplets drawn among the test "
        "canvases with their labels); *transfer* rows use the weights of the nearest "
        "training canvases in the weight bank, with no backpropagation; the Pearson column "
        "compares each transfer map with the direct averaged + top-M map of the same image.",
        "",
        "| Setting | Box ratio | Mask ratio | Blank maps | Pearson r vs direct |",
        "|---|---|---|---|---|",
    ]

    def cell(v: dict) -> str:
        return f"{v['mean']:.3f} ± {v['ci95']:.3f}"

    for name, r in result["rows"].items():
        agreement = cell(r["pearson_vs_direct"]) if "pearson_vs_direct" in r else ""
        lines.append(f"| {name} | {cell(r['box'])} | {cell(r['mask'])} | {r['blank']} | "
                     f"{agreement} |")
    lines += ["", f"Top-M sweep (direct Grad-CAM, averaged over T={s['triplets']}):", "",
              "| M | Box ratio | Mask ratio |", "|---|---|---|"]
    for m, r in result["top_m_sweep"].items():
        lines.append(f"| {m} | {cell(r['box'])} | {cell(r['mask'])} |")
    t, q, b = result["timings_s"], result["embedding"], result["bank"]
    lines += [
        "", "Settings: " + ", ".join(f"{k}={v}" for k, v in s.items()) + ".",
        f"Network: `TripletNet` of the script (5 conv blocks, explained layer `features`, "
        f"256×8×8; GAP, linear, L2-normalised {s['embedding_dim']}-d), trained "
        f"{s['steps']} steps with the batch-all triplet loss (margin {s['margin']}) in "
        f"{t['training']:.0f} s. Test recall@1 among test canvases: "
        f"{q['test_recall_at_1_within_test']:.3f}; nearest bank canvas of the same class: "
        f"{b['nn_label_agreement']:.3f}. Bank: {b['size']} training canvases, T="
        f"{s['triplets']} active triplets per image (images without any active triplet: "
        f"{b['no_active_triplet']}, mean active triplets {b['mean_active_triplets']:.1f}), "
        f"top-{s['top_m']}; fitted in {t['bank_gradcam']:.0f} s (Grad-CAM) and "
        f"{t['bank_gradcam++']:.0f} s (Grad-CAM++). Transfer explanation of the "
        f"{s['test_items']} test canvases: {t['transfer_nn']:.1f} s. Whole run: "
        f"{t['total']:.0f} s wall, {t['total_cpu']:.0f} s CPU (both threads).",
        "", "Command: `python experiments/embedding_fashion.py --out runs/embedding_fashion "
        "--docs docs/evaluation.md` (about ten minutes on 2 CPU cores; "
        f"torch {result['environment']['torch']}).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--docs", default=None, help="update this markdown file's section")
    parser.add_argument("--steps", type=int, default=Settings.steps, help="training steps")
    parser.add_argument("--train-items", type=int, default=Settings.train_items)
    parser.add_argument("--test-items", type=int, default=Settings.test_items)
    parser.add_argument("--bank-items", type=int, default=Settings.bank_items)
    parser.add_argument("--seed", type=int, default=Settings.seed)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = Settings(seed=args.seed, steps=args.steps, train_items=args.train_items,
                        test_items=args.test_items, bank_items=args.bank_items)
    start, cpu = time.perf_counter(), time.process_time()
    result = run(settings, out)
    result["timings_s"]["total"] = time.perf_counter() - start
    result["timings_s"]["total_cpu"] = time.process_time() - cpu
    (out / "results.json").write_text(json.dumps(result, indent=2))
    section = markdown(result)
    (out / "results.md").write_text(section)
    if args.docs:
        update_marked_section(Path(args.docs), "embedding", section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
