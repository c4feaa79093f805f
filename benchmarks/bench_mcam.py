"""M-CAM: the cost of an explanation against a plain forward pass, and the epoch time of
memory training with cached features against recomputing them.

Model: torchvision resnet18, random weights (seed 0), layer ``layer4`` (512×7×7), 224×224
inputs. The memories are untrained (timing does not depend on their values).
"""

from __future__ import annotations

import statistics
import time

import torch
import torchvision
from torch import Tensor, nn
from torch.utils.data import TensorDataset

import camkit
from camkit.memory import BiasReducingMemory, mcam_raw_maps, train_memory
from camkit.postprocess import postprocess
from common import Row, interleaved_samples, paired_ratio, row, settings, setup

SPEED, TRAINING, SCALE = "mcam-speed", "mcam-training", "mcam-training-scale"
BATCH, TARGETS, SIZE, LAYER = 8, 3, 224, "layer4"
# The issue's laptop budget: cached features of 10,000 images of EfficientNet-Lite0's last
# layer (1,280 × 7 × 7 at 224×224), 14 classes (as ChestX-ray14), the default schedule.
SCALE_IMAGES, SCALE_SHAPE, SCALE_CLASSES = 10_000, (1280, 7, 7), 14

DESCRIPTIONS = {
    SPEED: (
        f"{BATCH} images × {TARGETS} target classes, resnet18 at {SIZE}×{SIZE}, layer4. The "
        "floor is one plain forward pass without autograd. `capture + mcam` is one forward "
        "pass with a hook on layer4, `mcam_raw_maps` (slot search over all N slots for all "
        "images and targets at once, exp(τ) weights, weighted sum) and the shared "
        "post-processing (ReLU, bilinear upsampling, min-max); `explain` is the same through "
        "`camkit.explain(methods=['mcam'])`. N = 2 × classes: 2000 slots for the 1000 "
        "ImageNet classes, 160 for COCO's 80. Ratios are medians of per-round ratios, timed "
        "round-robin with the floor."
    ),
    TRAINING: (
        "Memory training on resnet18 layer4 features of 64 synthetic 224×224 images (held in "
        "memory, so recomputing costs the network's forward passes only; a real data set "
        "adds image decoding), 4 classes, batch 16. Epoch time is the median of the epochs "
        "after the first, from the training history; `cache=None` recomputes the frozen "
        "network's features for every batch, `memory` and `disk` (numpy memmap) compute "
        "them once before the first epoch (the one-off extraction time is reported)."
    ),
    SCALE: (
        f"`train_memory` with its defaults (batch 64, Adam lr 1e-3, template initialisation, "
        f"N = 2 × classes) on cached features of {SCALE_IMAGES:,} images × "
        f"{SCALE_SHAPE[0]:,} channels × {SCALE_SHAPE[1]}×{SCALE_SHAPE[2]} (EfficientNet-Lite0's "
        f"last layer at 224×224; {SCALE_IMAGES * 4 * SCALE_SHAPE[0] * 49 / 2**30:.1f} GiB), "
        f"{SCALE_CLASSES} classes with random multi-hot labels, as a function from cached "
        "features to themselves (so the time is the memory's own: the frozen network's one "
        "feature pass is the forward passes of the data set, reported in mcam-training). "
        "One torch thread. Epoch time is the median of the measured epochs as wall time, and "
        "of the epochs after the first as the process's CPU time, which approximates the wall "
        "time on one idle core and which other processes inflate far less than the wall time "
        "(a thread waiting for a core accrues none); the default schedule is 20 epochs, and "
        "early stopping (`patience`) usually ends sooner."
    ),
}


def _capture(model: nn.Module, layer: nn.Module, x: Tensor) -> Tensor:
    """One full forward pass (as the engine runs it) keeping the layer's output."""
    kept: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _a, out: kept.append(out))
    try:
        model(x)
    finally:
        handle.remove()
    return kept[0]


def explanation_speed(model: nn.Module, x: Tensor, classes: int) -> list[Row]:
    """Rows for M-CAM against the plain forward with a memory for ``classes`` classes."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        memory = BiasReducingMemory(512, (7, 7), classes, layer=LAYER,
                                    input_size=(SIZE, SIZE)).eval()
    targets = torch.randint(0, classes, (BATCH, TARGETS), generator=torch.Generator())

    @torch.no_grad()
    def forward() -> None:
        model(x)

    @torch.no_grad()
    def capture_mcam() -> None:
        acts = _capture(model, model.layer4, x)
        raw, _ = mcam_raw_maps(memory, acts, targets, torch.Generator().manual_seed(0))
        postprocess(raw, (SIZE, SIZE))

    def explain() -> None:
        camkit.explain(model, x, targets, methods=["mcam"], layer=LAYER, memory=memory)

    acts = _capture(model, model.layer4, x).detach()

    @torch.no_grad()
    def maps_only() -> None:
        mcam_raw_maps(memory, acts, targets, torch.Generator().manual_seed(0))

    times = interleaved_samples({"forward": forward, "capture": capture_mcam,
                                 "explain": explain, "maps": maps_only})
    floor = statistics.median(times["forward"]) * 1e3
    slots = f"N={memory.num_slots}"
    return [
        row(SPEED, f"capture + mcam / forward ({slots})",
            paired_ratio(times["capture"], times["forward"]), "×",
            f"forward {floor:.1f} ms", "<= 1.2"),
        row(SPEED, f"explain(mcam) / forward ({slots})",
            paired_ratio(times["explain"], times["forward"]), "×",
            f"forward {floor:.1f} ms", "<= 1.2"),
        row(SPEED, f"mcam_raw_maps alone ({slots})",
            statistics.median(times["maps"]) * 1e3, "ms",
            f"{statistics.median(times['maps']) * 1e3 / floor:.1%} of the forward pass"),
    ]


def epoch_times(model: nn.Module) -> list[Row]:
    """Epoch time of memory training with each feature cache."""
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(64, 3, SIZE, SIZE, generator=generator),
                         (torch.rand(64, 4, generator=generator) < 0.5).float())
    epochs = 3 if settings()[1] <= 3 else 4
    results = {}
    for cache in ("memory", "disk", None):
        began = time.perf_counter()
        memory = train_memory(model, LAYER, data, 4, epochs=epochs, batch_size=16,
                              cache=cache, progress=False)
        total = time.perf_counter() - began
        seconds = [r["seconds"] for r in memory.metrics["history"]]
        results[cache] = (statistics.median(seconds[1:]), total - sum(seconds))
    recompute = results[None][0]
    rows = [row(TRAINING, "epoch, features recomputed (cache=None)", recompute * 1e3, "ms")]
    for cache in ("memory", "disk"):
        epoch, extraction = results[cache]
        rows.append(row(TRAINING, f"epoch, cache={cache}", epoch * 1e3, "ms",
                        f"one-off extraction {extraction * 1e3:.0f} ms"))
        rows.append(row(TRAINING, f"speed-up of an epoch, cache={cache}", recompute / epoch, "×",
                        "recomputed epoch time / cached epoch time", ">= 10"))
    return rows


def training_at_scale() -> list[Row]:
    """Epoch time of the default training on cached features of 10,000 images × 1,280
    channels, and the default 20-epoch schedule it implies: wall time, and the process's CPU
    time on one torch thread, which approximates the wall time of the same work on one idle core
    and which other processes on the cores inflate far less than the wall time (a thread that
    waits for a core accrues no CPU time)."""
    generator = torch.Generator().manual_seed(0)
    features = torch.rand(SCALE_IMAGES, *SCALE_SHAPE, generator=generator)
    labels = (torch.rand(SCALE_IMAGES, SCALE_CLASSES, generator=generator) < 0.2).float()
    epochs = 2 if settings()[1] <= 3 else 3
    cpu: list[float] = []  # process CPU time at the end of each epoch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        began = time.perf_counter()
        memory = train_memory(lambda cached: cached, "features", TensorDataset(features, labels),
                              SCALE_CLASSES, epochs=epochs, progress=False, cache="memory",
                              callback=lambda _epoch, _record: cpu.append(time.process_time()))
        total = time.perf_counter() - began
    finally:
        torch.set_num_threads(threads)
    wall = statistics.median(r["seconds"] for r in memory.metrics["history"])
    epoch_cpu = statistics.median(b - a for a, b in zip(cpu, cpu[1:], strict=False))
    return [row(SCALE, "epoch, wall time (1 thread)", wall, "s", f"median of {epochs} epochs"),
            row(SCALE, "epoch, CPU time (1 thread)", epoch_cpu, "s",
                f"median of the {epochs - 1} epochs after the first"),
            row(SCALE, "default schedule (20 epochs) on one idle core", 20 * epoch_cpu / 60,
                "min", f"20 × the CPU time of an epoch; this run of {epochs} epochs with "
                f"caching and the final diagnostics took {total:.0f} s of wall time", "<= 10"),
            ]


def run() -> list[Row]:
    """All M-CAM rows."""
    setup(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    return [*explanation_speed(model, x, 1000), *explanation_speed(model, x, 80),
            *epoch_times(model), *training_at_scale()]


if __name__ == "__main__":
    for r in run():
        print(r)
