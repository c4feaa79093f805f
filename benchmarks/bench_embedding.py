"""Grad-CAM for embedding networks: the cost of explaining by weight transfer against a plain
forward pass, nearest-neighbour look-up in a large bank (exact torch vs FAISS), and the
throughput of fitting a weight bank.

Models (random weights, seed 0; timing does not depend on the weights): a ResNet-18 whose
``fc`` is a 512 → 128 linear layer followed by L2 normalisation (layer ``layer4``,
224 × 224 inputs), and the experiment's ``TripletNet`` (``experiments/embedding_fashion.py``,
layer ``features``, 64 × 64 grey canvases). Inputs are seeded noise.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torch.nn import functional as F

import camkit
from camkit import embedding
from camkit.embedding.search import FaissIndex, TorchIndex, faiss_available
from common import THREADS, Row, interleaved_samples, paired_ratio, row, settings, setup

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
from embedding_fashion import TripletNet  # noqa: E402

TRANSFER, SEARCH, FIT = "embedding-transfer", "embedding-search", "embedding-fit"
BANK_SIZE, SEARCH_SIZE, DIM, QUERIES = 10_000, 1_000_000, 128, 64

DESCRIPTIONS = {
    TRANSFER: (
        "`camkit.explain(model, x, methods=['embedding-gradcam'], layer=..., bank=bank)` at "
        f"batch 8 against a plain forward pass of the same embedding network without autograd "
        f"(the floor: transfer needs that forward and nothing else heavy) and with autograd. The "
        f"bank holds {BANK_SIZE:,} synthetic entries (random unit embeddings, random top-50 "
        "channels and weights; exact torch search). The transfer adds the layer hook, the "
        "nearest-neighbour search, the weighted channel sum and the post-processing (bilinear "
        "upsampling to the input size, min-max). Ratios are medians of per-round ratios, timed "
        "round-robin. Rows at 1 thread as well: on a loaded machine the many small operations "
        "of the transfer wait for the second OpenMP thread (a 10,000-entry search measured 1 ms "
        "with 1 thread and 23 ms with 2 under a load of 3), which inflates the 2-thread ratio. "
        "For the tiny network the fixed cost of the search (8 × 10,000 × 64) and the "
        "post-processing is a visible share of a 10 ms forward pass."
    ),
    SEARCH: (
        f"{QUERIES} queries against {SEARCH_SIZE:,} synthetic {DIM}-d unit embeddings: "
        "*clustered* = 1,000 random unit centres plus Gaussian noise (σ = 0.05 per dimension), "
        "renormalised, as the embeddings of a trained network cluster by identity; *isotropic* "
        "= uniform on the sphere (no structure, the hard case for inverted lists). Queries are "
        "new draws from the same distribution. Recall@k = share of the exact k nearest "
        "neighbours (torch search) that the index returns. FAISS IVF: "
        f"`IndexIVFFlat`, nlist = √N = 1,000, trained on 64,000 rows, nprobe = 64 by default; "
        "build times in the notes. "
        f"FAISS and torch both use {THREADS} threads."
    ),
    FIT: (
        "`camkit.embedding.fit_weight_bank` on 128 images of 8 classes (seeded noise): embeddings "
        "of all images (one forward pass without autograd each), active-triplet sampling, then "
        "per batch of 32 anchors one forward pass and one backward pass to the layer. Grad-CAM "
        "takes the gradient of the mean loss (equal to the mean of the per-triplet weights), so "
        "T barely matters; Grad-CAM++ needs every triplet's gradient (a batched backward over "
        "the T triplets)."
    ),
}


class ResNetEmbedding(nn.Module):
    """ResNet-18 trunk, ``fc`` = 512 → 128, L2-normalised output."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torchvision.models.resnet18()
        self.net.fc = nn.Linear(512, DIM)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.net(x), dim=1)


def synthetic_bank(size: int, dim: int, channels: int, layer: str, m: int = 50
                   ) -> embedding.WeightBank:
    """A bank of ``size`` random entries (timing only)."""
    g = torch.Generator().manual_seed(1)
    emb = F.normalize(torch.randn(size, dim, generator=g), dim=1)
    chosen = torch.rand(size, channels, generator=g).topk(m, dim=1).indices
    return embedding.WeightBank(emb, chosen, torch.rand(size, m, generator=g),
                                torch.randint(0, 100, (size,), generator=g),
                                torch.full((size,), 100), torch.zeros(size, dtype=torch.bool),
                                layer, channels)


def transfer_rows(name: str, model: nn.Module, layer: str, x: Tensor, channels: int,
                  threads: int) -> list[Row]:
    bank = synthetic_bank(BANK_SIZE, DIM if name == "resnet18" else 64, channels, layer)
    model.eval()
    torch.set_num_threads(threads)

    def no_grad_forward() -> None:
        with torch.no_grad():
            model(x)

    calls: dict[str, Callable[[], object]] = {
        "forward": no_grad_forward,
        "autograd": lambda: model(x),
        "transfer": lambda: camkit.explain(model, x, methods=["embedding-gradcam"], layer=layer,
                                           bank=bank),
    }
    warmup, repeats = settings()
    times = interleaved_samples(calls, warmup, repeats)
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    ratio = paired_ratio(times["transfer"], times["forward"])
    tag = f"{name} b{len(x)}, {threads} thread{'s' if threads > 1 else ''}"
    torch.set_num_threads(THREADS)
    return [
        row(TRANSFER, f"{tag}: forward without autograd (floor)", ms["forward"], "ms"),
        row(TRANSFER, f"{tag}: forward with autograd", ms["autograd"], "ms",
            f"{paired_ratio(times['autograd'], times['forward']):.3f} × floor"),
        row(TRANSFER, f"{tag}: transfer explanation / floor", ratio, "×",
            f"{ms['transfer']:.1f} ms; / forward with autograd: "
            f"{paired_ratio(times['transfer'], times['autograd']):.3f}", "<= 1.05"),
    ]


def clustered(n: int, g: torch.Generator) -> Tensor:
    centres = F.normalize(torch.randn(1000, DIM, generator=g), dim=1)
    picks = torch.randint(0, 1000, (n,), generator=g)
    return F.normalize(centres[picks] + 0.05 * torch.randn(n, DIM, generator=g), dim=1)


def isotropic(n: int, g: torch.Generator) -> Tensor:
    return F.normalize(torch.randn(n, DIM, generator=g), dim=1)


def recall(found: Tensor, exact: Tensor) -> float:
    """Share of the exact neighbours (per query) among the found ones."""
    hits = (found[:, :, None] == exact[:, None, :]).any(dim=1)
    return float(hits.float().mean())


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def search_rows() -> list[Row]:
    _, repeats = settings()
    rows: list[Row] = []
    for kind, make in (("clustered", clustered), ("isotropic", isotropic)):
        g = torch.Generator().manual_seed(2)
        bank, queries = make(SEARCH_SIZE, g), make(QUERIES, g)
        exact = TorchIndex(bank)
        _, truth10 = exact.search(queries, 10)
        torch_s = median_seconds(lambda q=queries, e=exact: e.search(q, 10), repeats)
        rows.append(row(SEARCH, f"{kind}: exact torch search, 64 queries", 1000 * torch_s, "ms",
                        "recall 1 by definition"))
        if not faiss_available():
            rows.append(row(SEARCH, f"{kind}: FAISS not installed", float("nan"), "",
                            "pip install faiss-cpu"))
            continue
        import faiss

        faiss.omp_set_num_threads(THREADS)
        start = time.perf_counter()
        flat = FaissIndex(bank, "flat")
        flat_build = time.perf_counter() - start
        flat_s = median_seconds(lambda q=queries, f=flat: f.search(q, 10), repeats)
        _, flat10 = flat.search(queries, 10)
        rows.append(row(SEARCH, f"{kind}: FAISS flat (exact), 64 queries", 1000 * flat_s, "ms",
                        f"{flat_s / torch_s:.2f} × torch; recall@10 {recall(flat10, truth10):.3f};"
                        f" build {flat_build:.1f} s"))
        start = time.perf_counter()
        ivf = FaissIndex(bank, "ivf")
        build = time.perf_counter() - start
        for nprobe in ((1, 4, 16, 64) if kind == "clustered" else (16, 64)):
            ivf.index.nprobe = nprobe
            ivf_s = median_seconds(lambda q=queries, i=ivf: i.search(q, 10), repeats)
            _, found = ivf.search(queries, 10)
            rows.append(row(
                SEARCH, f"{kind}: FAISS IVF nprobe={nprobe}, 64 queries", 1000 * ivf_s, "ms",
                f"{torch_s / ivf_s:.0f}× faster than torch; recall@1 "
                f"{recall(found[:, :1], truth10[:, :1]):.3f}, recall@10 "
                f"{recall(found, truth10):.3f}; build {build:.1f} s"))
        del bank, exact, flat, ivf
    return rows


def fit_rows() -> list[Row]:
    rows: list[Row] = []
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(128) % 8
    cases = [("triplet-net", TripletNet(64), "features", torch.rand(128, 1, 64, 64, generator=g)),
             ("resnet18", ResNetEmbedding(), "net.layer4",
              torch.randn(128, 3, 224, 224, generator=g))]
    for name, model, layer, x in cases:
        for variant in ("gradcam", "gradcam++"):
            for t in (10, 100):
                start = time.perf_counter()
                embedding.fit_weight_bank(model.eval(), layer, x, labels, triplets_per_image=t,
                                          variant=variant, progress=False)
                seconds = time.perf_counter() - start
                rows.append(row(FIT, f"{name}: {variant}, T={t}", len(x) / seconds, "images/s",
                                f"{seconds:.1f} s for {len(x)} images"))
    return rows


def run() -> list[Row]:
    setup(0)
    rows: list[Row] = []
    g = torch.Generator().manual_seed(0)
    resnet, images = ResNetEmbedding(), torch.randn(8, 3, 224, 224, generator=g)
    net, canvases = TripletNet(64), torch.rand(8, 1, 64, 64, generator=g)
    for threads in (THREADS, 1):
        rows += transfer_rows("resnet18", resnet, "net.layer4", images, 512, threads)
        rows += transfer_rows("triplet-net", net, "features", canvases, 256, threads)
    rows += search_rows()
    rows += fit_rows()
    return rows
