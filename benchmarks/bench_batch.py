"""Data-set jobs: the local engine against a plain loop of ``camkit.explain`` calls on the same
batches, and the Ray engine's throughput on the same machine.

Model: torchvision resnet18 with random weights (seed 0), layer ``layer4``, Grad-CAM for the
predicted class. Images: 224×224 JPEGs made from foolbox's 20 real ImageNet photos by random
crops and flips, in folders of equal size, one folder per round.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

import camkit
from camkit.batch import ModelSpec, explain_dataset
from camkit.data import imagenet_samples, load_image
from common import Row, paired_ratio, row, setup

GROUP = "batch"
SPEC = ModelSpec("resnet18", random_init=True)
IMAGES, QUICK_IMAGES, ROUNDS, BATCH = 2000, 256, 4, 32
# BENCH_BATCH_IMAGES=N runs N images instead (the notes of the rows say how many ran).

DESCRIPTIONS = {
    GROUP: (
        "Grad-CAM (resnet18, random weights, `layer4`, predicted class) over 224×224 JPEGs, "
        f"in {ROUNDS} rounds of equal folders. Each round times, in alternating order, (1) a "
        f"plain loop over batches of {BATCH}: read and preprocess the batch's files in this "
        "process, then `camkit.explain` (the time of the explain calls alone is kept too), and "
        "(2) `explain_dataset(folder:..., engine='local', batch_size=32, workers=2, "
        "shard_size=1000)`, which also builds the model, decodes in 2 DataLoader worker "
        "processes, converts maps to float16 and writes the 224×224 maps in fsync'd shards "
        "with the manifest. Ratios are medians over rounds of per-round time ratios. Then the "
        "Ray engine runs the same job once over all the folders (`folder:` of their parent) on "
        "a local Ray instance (`ray.init(num_cpus=2)`, started before timing; the job's actor "
        "start-up, 2 actors × 1 CPU each building the model, is timed), compared with the "
        "local engine's total time over the same images."
    ),
}


def make_images(root: Path, n: int, rounds: int) -> list[Path]:
    """``n`` 224×224 JPEGs (random crops and flips of foolbox's ImageNet photos) in
    ``rounds`` folders; returns the folders."""
    photos = [load_image(s.path) for s in imagenet_samples()]
    rng = random.Random(0)
    folders = [root / f"round{r}" for r in range(rounds)]
    for i in range(n):
        photo = photos[i % len(photos)]
        side = int(min(photo.size) * rng.uniform(0.5, 1.0))
        left, top = rng.randrange(photo.width - side + 1), rng.randrange(photo.height - side + 1)
        crop = photo.crop((left, top, left + side, top + side)).resize((224, 224))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        folder = folders[i * rounds // n]
        folder.mkdir(parents=True, exist_ok=True)
        crop.save(folder / f"{i:05d}.jpg", quality=90)
    return folders


def plain_loop(folder: Path) -> tuple[float, float]:
    """Seconds of the whole loop, and of its ``camkit.explain`` calls alone."""
    loaded = SPEC.load()
    paths = sorted(folder.iterdir())
    explain = 0.0
    start = time.perf_counter()
    for i in range(0, len(paths), BATCH):
        x = torch.stack([loaded.preprocess(load_image(p)) for p in paths[i : i + BATCH]])
        begin = time.perf_counter()
        camkit.explain(loaded.model, x, None, ("gradcam",), loaded.layer)
        explain += time.perf_counter() - begin
    return time.perf_counter() - start, explain


def job(folder: Path, out: Path, engine: str) -> float:
    start = time.perf_counter()
    explain_dataset(f"folder:{folder}", out, "gradcam", model=SPEC, batch_size=BATCH,
                    workers=2, shard_size=1000, engine=engine, progress=False)
    return time.perf_counter() - start


def rounds(folders: list[Path], out: Path) -> dict[str, list[float]]:
    """Per round: the plain loop's time, its explain calls' time, the local engine's time."""
    times: dict[str, list[float]] = {"plain": [], "explain": [], "local": []}
    for r, folder in enumerate(folders):
        for name in ("plain", "local") if r % 2 == 0 else ("local", "plain"):
            if name == "plain":
                total, explain = plain_loop(folder)
                times["plain"].append(total)
                times["explain"].append(explain)
            else:
                times["local"].append(job(folder, out / f"local{r}", "local"))
        print(f"   round {r}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()),
              file=sys.stderr)
    return times


def ray_job(root: Path, out: Path) -> float:
    """Seconds of the Ray engine over every image under ``root``, on a local Ray instance
    with 2 CPUs started (untimed) for it."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        return job(root, out, "ray")
    finally:
        ray.shutdown()


def ray_available() -> bool:
    try:
        import ray.data  # noqa: F401
    except ModuleNotFoundError:
        print("   bench_batch: ray is not installed; no Ray rows (pip install 'camkit[ray]')",
              file=sys.stderr)
        return False
    return True


def run() -> list[Row]:
    setup(0)
    quick = os.environ.get("BENCH_QUICK") == "1"
    n = int(os.environ.get("BENCH_BATCH_IMAGES", QUICK_IMAGES if quick else IMAGES))
    with tempfile.TemporaryDirectory() as tmp:
        folders = make_images(Path(tmp) / "images", n, ROUNDS)
        times = rounds(folders, Path(tmp) / "out")
        stored = sum(f.stat().st_size for f in (Path(tmp) / "out").rglob("*.safetensors"))
        ray_seconds = ray_job(Path(tmp) / "images", Path(tmp) / "ray") if ray_available() else None
    per_round = n // ROUNDS
    note = f"{n} images, {ROUNDS} rounds of {per_round}"
    local_rate = n / sum(times["local"])
    rows = [
        row(GROUP, "local engine / plain loop (read + explain)", paired_ratio(
            times["local"], times["plain"]), "×", note, "<= 1.10"),
        row(GROUP, "local engine / explain calls alone", paired_ratio(
            times["local"], times["explain"]), "×",
            "the plain loop's time without reading and preprocessing the images"),
        row(GROUP, "plain loop throughput", n / sum(times["plain"]), "img/s", note),
        row(GROUP, "local engine throughput", local_rate, "img/s", note),
        row(GROUP, "stored per image (224×224 float16 map, score, target)", stored / n / 1024,
            "KiB"),
    ]
    if ray_seconds is not None:
        rows += [
            row(GROUP, "ray engine throughput (local Ray, 2 CPUs)", n / ray_seconds, "img/s",
                f"one job of {n} images; 2 actors × 1 CPU; actor start-up timed, ray.init not"),
            row(GROUP, "ray engine / local engine time", ray_seconds / sum(times["local"]), "×",
                "one Ray job against the local engine's rounds over the same images"),
        ]
    return rows
