"""``camkit explain`` (image files → overlays, grids, maps, an optional HTML report) and
``camkit methods`` (the method list)."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from camkit import api
from camkit.cli.arguments import add_methods_argument, add_model_arguments, load_model, names
from camkit.embedding import WeightBank
from camkit.fusion import FUSIONS
from camkit.memory import BiasReducingMemory
from camkit.targets import class_index
from camkit.viz.outputs import explain_images
from camkit.viz.report import report_from_results


def parse_target(text: str, class_names: Sequence[str]) -> int | None:
    """``pred`` → ``None`` (the predicted class); an index or a class name → its index."""
    return None if text.lower() in ("pred", "predicted") else class_index(text, class_names)


def add_parser(subparsers: Any) -> None:
    """Add ``explain`` and ``methods`` to the ``camkit`` subcommands."""
    ex = subparsers.add_parser("explain", help="explain images with one or more methods")
    ex.add_argument("images", nargs="+", help="image files (any format PIL reads)")
    add_methods_argument(ex)
    ex.add_argument("--target", default="pred",
                    help="pred (the predicted class), a class index, or a class name")
    add_model_arguments(ex)
    ex.add_argument("--fusion", default="mean", choices=FUSIONS,
                    help="with several layers (--layer layer3,layer4): how their maps become "
                         "one (mean of the normalised maps, or Layer-CAM's tanh-scaled maximum)")
    ex.add_argument("--out", default="runs/explain", help="output folder")
    ex.add_argument("--batch-size", type=int, default=8)
    ex.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the map")
    ex.add_argument("--report", default=None, metavar="HTML",
                    help="also write a self-contained HTML report to this file")
    ex.add_argument("--memory", default=None, metavar="FILE",
                    help="M-CAM memory for --methods mcam (from camkit train-memory)")
    ex.add_argument("--bank", default=None, metavar="FILE",
                    help="weight bank for --methods embedding-gradcam (from camkit "
                         "fit-embedding)")
    ex.set_defaults(run=run)

    me = subparsers.add_parser("methods", help="list the methods")
    me.set_defaults(run=run_methods)


def run(args: argparse.Namespace) -> int:
    """Run ``camkit explain``: per image its top predictions and output folder to stdout,
    unreadable images to stderr (exit status 1 when there were any)."""
    loaded = load_model(args)
    methods = names(args.methods)
    for m in methods:
        api.registry.get_method(m)
    target = parse_target(args.target, loaded.class_names)
    paths = [Path(p) for p in args.images]
    layers = names(args.layer or "")
    layer = layers if len(layers) > 1 else args.layer
    options = trained_artifacts(args) | {"fusion": args.fusion}
    results, failed = explain_images(paths, loaded, methods, Path(args.out), target=target,
                                     layer=layer, batch_size=args.batch_size,
                                     alpha=args.alpha, options=options)
    for r in results:
        best = ", ".join(f"{name} {p:.1%}" for name, p in r.predictions)
        print(f"{r.path}: {best}\n  → {r.out_dir}")
    if args.report:
        report = report_from_results(
            results, args.report, model=args.arch, layer=args.layer or loaded.layer,
            methods=methods,
            options={"target": args.target, "weights": args.weights or "packaged",
                     "alpha": args.alpha},
            command=shlex.join(["camkit", *args.argv]), alpha=args.alpha)
        print(f"report → {report}")
    for path, reason in failed:
        print(f"camkit: skipped {path}: {reason}", file=sys.stderr)
    return 1 if failed else 0


def trained_artifacts(args: argparse.Namespace) -> dict[str, Any]:
    """The trained artefacts ``--memory`` and ``--bank`` load, as :func:`camkit.explain`
    options (``memory=`` for M-CAM, ``bank=`` for embedding Grad-CAM)."""
    options: dict[str, Any] = {}
    if args.memory is not None:
        options["memory"] = BiasReducingMemory.load(args.memory)
    if args.bank is not None:
        options["bank"] = WeightBank.load(args.bank)
    return options


def run_methods(_args: argparse.Namespace) -> int:
    """Print every method with its one-line summary."""
    width = max(map(len, api.available_methods()))
    for name, summary in api.available_methods().items():
        print(f"{name:<{width}}  {summary}")
    return 0
