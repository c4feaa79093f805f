"""``camkit explain`` (image files → overlays, grids, maps, an optional HTML report) and
``camkit methods`` (the method list)."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from camkit import api
from camkit.cli.arguments import (
    DETECTION_DEFAULTS,
    add_methods_argument,
    add_model_arguments,
    add_task_arguments,
    check_method_options,
    load_model,
    names,
    output_folder,
    parse_options,
    positive_int,
)
from camkit.cli.arguments import device as device_argument
from camkit.data import load_image
from camkit.data.images import ResizePlan
from camkit.data.specs import folder_images, list_images, parse_spec
from camkit.detection import BoxScoreTarget, DetectedBoxesTarget
from camkit.embedding import WeightBank
from camkit.fusion import FUSIONS
from camkit.memory import BiasReducingMemory
from camkit.memory.network import MemoryNetwork
from camkit.methods import registry
from camkit.segmentation import SemanticSegmentationTarget
from camkit.targets import TargetSpec, class_index
from camkit.viz.outputs import BatchTarget, ExplainedImage, explain_images
from camkit.viz.report import report_from_results
from camkit.zoo import LoadedModel

PREDICTED = ("pred", "predicted")
IMAGE_SPECS = ("folder", "list")
# The trained artefact each method needs, by its CLI flag, and where it comes from.
# The flag of each artefact option, and the command that makes the artefact.
MAKERS = {"memory": "camkit train-memory", "bank": "camkit fit-embedding"}


def parse_target(text: str, class_names: Sequence[str]) -> int | None:
    """``pred`` → ``None`` (the predicted class); an index or a class name → its index."""
    return None if text.lower() in PREDICTED else class_index(text, class_names)


def add_parser(subparsers: Any) -> None:
    """Add ``explain`` and ``methods`` to the ``camkit`` subcommands."""
    ex = subparsers.add_parser("explain", help="explain images with one or more methods")
    ex.add_argument("images", nargs="+", metavar="IMAGE",
                    help="image files (any format PIL reads), folders (DIR or folder:DIR: "
                         "every image under it) or list:FILE")
    add_methods_argument(ex)
    ex.add_argument("--target", default="pred",
                    help="pred (the predicted class), a class index, or a class name; with "
                         "--memory, of the memory's classes, for every method; for a "
                         "segmentation model the class to explain, for a detector with --box "
                         "the box's class")
    add_model_arguments(ex)
    add_task_arguments(ex)
    ex.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default cuda if any)")
    ex.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                    help="a method option (repeatable), e.g. max_channels=64 or n_samples=8; "
                         "VALUE is read as JSON when it parses")
    ex.add_argument("--fusion", default="mean", choices=FUSIONS,
                    help="with several layers (--layer layer3,layer4): how their maps become "
                         "one (mean of the normalised maps, or Layer-CAM's tanh-scaled maximum)")
    ex.add_argument("--out", default="runs/explain", help="output folder")
    ex.add_argument("--batch-size", type=positive_int, default=8)
    ex.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the map")
    ex.add_argument("--report", default=None, metavar="HTML",
                    help="also write a self-contained HTML report to this file")
    ex.add_argument("--memory", default=None, metavar="FILE",
                    help="M-CAM memory for --methods mcam (from camkit train-memory); the "
                         "targets are then the memory's classes")
    ex.add_argument("--bank", default=None, metavar="FILE",
                    help="weight bank for --methods embedding-gradcam (from camkit "
                         "fit-embedding)")
    ex.set_defaults(run=run)

    me = subparsers.add_parser("methods", help="list the methods")
    me.set_defaults(run=run_methods)


def run(args: argparse.Namespace) -> int:
    """Run ``camkit explain``: per image its top predictions and output folder to stdout,
    unreadable images to stderr (exit status 1 when there were any)."""
    methods = names(args.methods)
    options = parse_options(args.option)
    check_method_options(methods, options, exclude=list(MAKERS))
    device = device_argument(args.device)
    out = output_folder(args.out)
    paths = image_paths(args.images)
    artifacts = trained_artifacts(args, methods, device)
    network = load_model(args)
    network.model.to(device)
    if args.input_size is not None:
        network = replace(network, preprocess=replace(network.preprocess, size=args.input_size),
                          input_size=args.input_size)
    loaded, layer = with_memory(network, artifacts.get("memory"), args.layer)
    target, batch_target = task_target(args, loaded)
    several = names(layer) if isinstance(layer, str) else []
    results, failed = explain_images(paths, loaded, methods, out, target=target,
                                     batch_target=batch_target,
                                     layer=several if len(several) > 1 else layer,
                                     batch_size=args.batch_size, alpha=args.alpha,
                                     options=options | artifacts | {"fusion": args.fusion})
    for r in results:
        best = ", ".join(f"{name} {p:.1%}" for name, p in r.predictions)
        print(f"{r.path}: {best}\n  → {r.out_dir}")
    if args.report:
        print(f"report → {write_report(args, results, layer, methods, options)}")
    for path, reason in failed:
        print(f"camkit: skipped {path}: {reason}", file=sys.stderr)
    return 1 if failed else 0


def task_target(args: argparse.Namespace, loaded: LoadedModel
                ) -> tuple[TargetSpec, BatchTarget | None]:
    """What ``--target``, ``--box``, ``--mask``, ``--score-threshold`` and ``--max-boxes`` ask of
    the model's task: a class (classification); a class inside the predicted region, a box or
    a mask (segmentation); each confident detection, or the detection matching a box
    (detection). Region and box targets are made per batch, in its input pixels."""
    check_task_flags(args, loaded.task)
    category = parse_target(args.target, loaded.class_names)
    if loaded.task == "classification":
        return category, None
    if loaded.task == "detection" and args.box is None:
        given = {name: getattr(args, name) for name in DETECTION_DEFAULTS}
        chosen = {name: DETECTION_DEFAULTS[name] if value is None else value
                  for name, value in given.items()}
        return DetectedBoxesTarget(float(chosen["score_threshold"]),
                                   int(chosen["max_boxes"])), None
    if category is None:
        what = ("the class to explain" if loaded.task == "segmentation"
                else "the class of the --box")
        raise ValueError(f"--target pred has no meaning for a {loaded.task} model here: give "
                         f"{what} (an index or a class name), e.g. --target 1")
    if loaded.task == "detection":
        return None, lambda plans: BoxScoreTarget(
            torch.tensor([[plan.box(args.box)] for plan in plans]),
            torch.full((len(plans), 1), category))
    if args.box is None and args.mask is None:
        return SemanticSegmentationTarget(category), None
    mask = None if args.mask is None else np.asarray(np.asarray(load_image(args.mask)).any(axis=2))
    return None, lambda plans: SemanticSegmentationTarget(category,
                                                          region_masks(plans, args.box, mask))


def check_task_flags(args: argparse.Namespace, task: str) -> None:
    """Refuse the task flags that ``task`` does not use, and ``--box`` with ``--mask``."""
    allowed = {"classification": set(), "segmentation": {"box", "mask"},
               "detection": {"box", *DETECTION_DEFAULTS}}[task]
    for name in ("box", "mask", *DETECTION_DEFAULTS):
        if getattr(args, name) is not None and name not in allowed:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} is for {_users(name)} models; --arch {args.arch} is a "
                             f"{task} model")
    if args.box is not None and args.mask is not None:
        raise ValueError("give the segmentation region as --box or as --mask, not both")


def _users(flag: str) -> str:
    return {"box": "segmentation and detection", "mask": "segmentation"}.get(flag, "detection")


def region_masks(plans: Sequence[ResizePlan], box: tuple[float, float, float, float] | None,
                 mask: np.ndarray | None) -> torch.Tensor:
    """A ``(B, size, size)`` bool region per image: ``box`` or ``mask`` (image pixels) in
    each image's input pixels."""
    regions = []
    for plan in plans:
        if mask is not None:
            regions.append(torch.from_numpy(plan.mask(mask)))
            continue
        x0, y0, x1, y1 = (round(v) for v in plan.box(box))  # type: ignore[arg-type]
        region = torch.zeros(plan.size, plan.size, dtype=torch.bool)
        region[y0:y1, x0:x1] = True
        regions.append(region)
    return torch.stack(regions)


def write_report(args: argparse.Namespace, results: list[ExplainedImage], layer: str,
                 methods: list[str], options: dict[str, Any]) -> Path:
    """The ``--report`` HTML file of the run, with the settings that reproduce it."""
    return report_from_results(
        results, args.report, model=args.arch, layer=layer, methods=methods,
        options={"target": args.target, "weights": args.weights or "packaged",
                 "alpha": args.alpha, **options},
        command=shlex.join(["camkit", *args.argv]), alpha=args.alpha)


def image_paths(items: Sequence[str]) -> list[Path]:
    """The image files named on the command line: files as given (a missing one is reported
    as unreadable with the others); a folder (``DIR``, ``folder:DIR``) or ``list:FILE``
    gives its images."""
    paths: list[Path] = []
    for item in items:
        if Path(item).is_file() or (":" not in item and not Path(item).exists()):
            paths.append(Path(item))
            continue
        spec = parse_spec(item, IMAGE_SPECS)
        if spec.kind == "folder":
            found = [Path(spec.args[0]) / f.relative for f in folder_images(spec.args[0], item)]
        else:
            base = Path(spec.args[0]).parent
            found = [base / path for path, _ in list_images(spec.args[0], item)]
        if not found:
            raise ValueError(f"{item} holds no image files")
        paths += found
    return paths


def trained_artifacts(args: argparse.Namespace, methods: Sequence[str],
                      device: torch.device) -> dict[str, Any]:
    """The trained artefacts ``--memory`` and ``--bank`` load, as :func:`camkit.explain`
    options (``memory=`` for M-CAM, ``bank=`` for embedding Grad-CAM); each is required by
    its method and refused without it."""
    needs = {m: registry.needed_artifact(m) for m in methods}
    for flag, maker in MAKERS.items():
        given = getattr(args, flag) is not None
        users = [m for m, needed in needs.items() if needed == flag]
        if users and not given:
            raise ValueError(f"--methods {users[0]} needs --{flag} FILE (made by {maker})")
        if given and not users:
            takers = [m for m in api.available_methods() if registry.needed_artifact(m) == flag]
            raise ValueError(f"--{flag} is used by --methods {' or '.join(takers)} only; add "
                             f"one to --methods or drop --{flag}")
    options: dict[str, Any] = {}
    if args.memory is not None:
        options["memory"] = BiasReducingMemory.load(args.memory, map_location=device)
    if args.bank is not None:
        options["bank"] = WeightBank.load(args.bank)
    return options


def with_memory(loaded: LoadedModel, memory: BiasReducingMemory | None,
                layer: str | None) -> tuple[LoadedModel, str]:
    """The run's model and layer (default: the memory's, else the network's): ``loaded``
    itself, or with a memory the network up to the layer followed by the memory's head
    (:class:`MemoryNetwork`), so every method explains the memory's classes, the run's one
    target vocabulary (``pred``: the class the memory predicts)."""
    if memory is None:
        return loaded, layer or loaded.layer
    layer = layer or memory.layer or loaded.layer
    network = MemoryNetwork(loaded.model, layer, memory)
    return replace(loaded, model=network, class_names=list(memory.class_names),
                   layer=f"network.{layer}"), f"network.{layer}"


def run_methods(_args: argparse.Namespace) -> int:
    """Print every method with its one-line summary."""
    width = max(map(len, api.available_methods()))
    for name, summary in api.available_methods().items():
        print(f"{name:<{width}}  {summary}")
    return 0
