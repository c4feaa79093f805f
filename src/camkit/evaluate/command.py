"""``camkit evaluate``: the data sets the command line names, and the subcommand."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.images import load_image, to_tensor
from ..data.mosaic import ImageNetGrid
from ..data.samples import imagenet_samples, quokka, resize_annotated
from ..zoo import LoadedModel, class_index, load_model
from .harness import evaluate
from .metrics import DEFAULT_METRICS, METRICS, REGION_METRICS
from .report import write_evaluation_report


class ImageFiles:
    """Image files with optional labels and masks, preprocessed for a model on access:
    ``data[i] = {"image", "label", "name"[, "mask"]}``. A mask is a sibling file
    ``NAME.mask.png`` (non-zero pixels = object), resized exactly as the image."""

    def __init__(self, files: Sequence[tuple[Path, int | None]], loaded: LoadedModel) -> None:
        self.files, self.preprocess = list(files), loaded.preprocess

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self.files[index]
        image = load_image(path)
        item: dict[str, Any] = {"image": self.preprocess(image), "label": label,
                                "name": path.name}
        mask_path = path.with_name(path.stem + ".mask.png")
        if mask_path.exists():
            mask = np.asarray(load_image(mask_path)).any(axis=2)
            item["mask"] = self.preprocess.plan(image).mask(mask)
        return item


def _folder_files(folder: Path, class_names: Sequence[str]) -> list[tuple[Path, int | None]]:
    """Images directly in ``folder`` (unlabelled) and in class sub-folders (named by class name
    or index), skipping ``*.mask.png``."""
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {folder} (the spec is folder:DIR)")

    def images(directory: Path) -> list[Path]:
        return sorted(p for p in directory.iterdir()
                      if p.is_file() and not p.name.endswith(".mask.png")
                      and not p.name.startswith("."))

    files: list[tuple[Path, int | None]] = [(p, None) for p in images(folder)]
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        label = class_index(sub.name, class_names)
        files += [(p, label) for p in images(sub)]
    if not files:
        raise ValueError(f"{folder} holds no image files")
    return files


def data_from_spec(spec: str, loaded: LoadedModel) -> tuple[Any, tuple[str, ...]]:
    """A data set for ``loaded`` from a command-line spec, and the region kinds it annotates:
    ``imagenet-samples`` (foolbox's 20 labelled ImageNet photos), ``imagenet-grid[:N]`` (``N``,
    default 8, 2×2 grid mosaics of those photos for the grid pointing game), ``quokka``
    (imgaug's photo with its box and mask), ``folder:DIR`` (see :func:`_folder_files`; masks
    from ``NAME.mask.png``)."""
    kind, _, count = spec.partition(":")
    if kind == "imagenet-grid" and (count.isdigit() or not count):
        grids = ImageNetGrid(int(count or 8), loaded.preprocess, class_names=loaded.class_names,
                             width=len(loaded.class_names))
        return grids, ("cells",)
    if spec == "imagenet-samples":
        files = [(s.path, s.label) for s in imagenet_samples()]
        return ImageFiles(files, loaded), ()
    if spec == "quokka":
        p = loaded.preprocess
        photo = resize_annotated(quokka(), p.size, p.crop_fraction, p.resample)
        item = {"image": to_tensor(photo.image, p.mean, p.std), "mask": photo.mask,
                "box": torch.tensor(photo.box), "name": "quokka"}
        return [item], ("mask", "box")
    if spec.startswith("folder:"):
        files = _folder_files(Path(spec.removeprefix("folder:")), loaded.class_names)
        has_masks = any(p.with_name(p.stem + ".mask.png").exists() for p, _ in files)
        return ImageFiles(files, loaded), ("mask",) if has_masks else ()
    raise ValueError(f"unknown data spec {spec!r}; use imagenet-samples, imagenet-grid[:N], "
                     "quokka or folder:DIR")


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def metrics_for(text: str, kinds: Sequence[str]) -> list[str]:
    """The ``--metrics`` list; ``auto`` = :data:`DEFAULT_METRICS` and the localisation metrics
    of the region kinds the data annotates."""
    names = _names(text)
    if names != ["auto"]:
        return names
    return [*DEFAULT_METRICS, *(m for kind in kinds for m in REGION_METRICS[kind])]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """The ``camkit evaluate`` subcommand."""
    ev = subparsers.add_parser(
        "evaluate", help="score methods with metrics over a data set",
        description="Explain every image with every method, score the maps with every metric "
                    "and write a method × metric table (mean and 95 %% CI, time per image) as "
                    "results.md, results.csv and results.json.")
    ev.add_argument("--data", required=True,
                    help="imagenet-samples, imagenet-grid[:N], quokka or folder:DIR")
    ev.add_argument("--methods", default="gradcam", help="comma-separated (camkit methods)")
    ev.add_argument("--metrics", default="auto",
                    help=f"comma-separated from {', '.join(METRICS)}; auto: "
                         f"{', '.join(DEFAULT_METRICS)} and the localisation metrics the data "
                         "has regions for")
    ev.add_argument("--out", default="runs/evaluate", help="output folder")
    ev.add_argument("--report", default=None, metavar="HTML",
                    help="also write a self-contained HTML report: the table, the first "
                         "--report-images images explained by every method, the settings")
    ev.add_argument("--report-images", type=int, default=4, metavar="N",
                    help="images shown in the --report (default 4)")
    ev.add_argument("--arch", default="efficientnet-lite0", help="as for camkit explain")
    ev.add_argument("--weights", default=None, help="a local state dict for --arch")
    ev.add_argument("--layer", default=None, help="target layer; default per model")
    ev.add_argument("--targets", default="auto", choices=("auto", "label", "predicted"))
    ev.add_argument("--confidence", default="auto", choices=("auto", "softmax", "sigmoid",
                                                             "logit"))
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--limit", type=int, default=None, help="only the first N images")
    ev.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="progress bar on stderr (default: for runs longer than a few s)")
    ev.set_defaults(run=run)
    return ev


def run(args: argparse.Namespace) -> int:
    """Run ``camkit evaluate``: the table to stdout, problems to stderr; exit status 1 when
    some samples failed (their results are still written)."""
    loaded = load_model(args.arch, args.weights)
    data, kinds = data_from_spec(args.data, loaded)
    results = evaluate(
        loaded.model, data, _names(args.methods), metrics_for(args.metrics, kinds),
        args.layer or loaded.layer,
        targets=args.targets, confidence=None if args.confidence == "auto" else args.confidence,
        batch_size=args.batch_size, seed=args.seed, limit=args.limit, progress=args.progress)
    results.settings = {"data": args.data, "model": args.arch, **results.settings}
    paths = results.save(args.out)
    if args.report:
        paths["html"] = write_evaluation_report(args.report, results, loaded.model, data,
                                                args.layer or loaded.layer, loaded,
                                                args.report_images)
    print(results.to_markdown())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    for failure in results.failures:
        print(f"camkit: {failure.sample}: {failure.method or ''} {failure.stage}: "
              f"{failure.error}", file=sys.stderr)
    return 1 if results.failures else 0
