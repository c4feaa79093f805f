"""The ``camkit`` command: ``explain``, ``methods``, ``demo``, ``evaluate``, ``train-memory``,
``fit-embedding`` and ``explain-dataset``.

Results and where they were written go to stdout; problems and progress to stderr.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import api, demo
from .batch import cli as batch_cli
from .data import load_image
from .embedding import cli as embedding_cli
from .evaluate import add_parser as add_evaluate_parser
from .memory import cli as memory_cli
from .viz import grid, overlay, save_png
from .viz.report import ReportItem, report_from_results, report_item
from .zoo import LoadedModel, class_index, load_model


@dataclass
class ImageResult:
    """What ``camkit explain`` wrote for one image."""

    path: Path
    out_dir: Path
    predictions: list[tuple[str, float]]
    report: ReportItem  # the image's part of the HTML report (--report)


def parse_target(text: str, class_names: Sequence[str]) -> int | None:
    """``pred`` → ``None`` (the predicted class); an index or a class name → its index."""
    return None if text.lower() in ("pred", "predicted") else class_index(text, class_names)


def explain_images(
    paths: Sequence[Path],
    loaded: LoadedModel,
    methods: Sequence[str],
    out: Path,
    *,
    target: int | None = None,
    layer: str | None = None,
    batch_size: int = 8,
    alpha: float = 0.5,
    top: int = 5,
    options: dict[str, Any] | None = None,
) -> tuple[list[ImageResult], list[tuple[Path, str]]]:
    """Explain each image with every method and write, per image, into ``out/<stem>/``:
    ``<method>.png`` overlays, ``grid.png`` (image and all methods side by side) and
    ``maps.npz`` (normalised maps and raw maps per method).

    ``options`` go to :func:`camkit.explain` (e.g. ``memory=`` for M-CAM, ``bank=`` for
    embedding Grad-CAM). Returns the results and the ``(path, reason)`` of images that could
    not be read.
    """
    readable, failed = [], []
    for path in paths:
        try:
            readable.append((path, load_image(path)))
        except (OSError, ValueError) as err:
            failed.append((path, str(err)))
    results = []
    for start in range(0, len(readable), batch_size):
        chunk = readable[start : start + batch_size]
        x = torch.stack([loaded.preprocess(img) for _, img in chunk])
        expl = api.explain(loaded.model, x, target, methods, layer or loaded.layer,
                           **(options or {}))
        probabilities = expl.outputs.float().softmax(dim=1)
        for b, (path, img) in enumerate(chunk):
            view = np.asarray(loaded.preprocess.view(img))
            out_dir = out / _unique_stem(path, out, results)
            predictions = _top(probabilities[b], loaded, top)
            item = report_item(expl, b, view, loaded.class_names, name=path.name,
                               predictions=predictions)
            results.append(ImageResult(path, out_dir, predictions, item))
            _write_image_outputs(out_dir, view, expl, b, alpha, loaded.class_names)
    return results, failed


def _unique_stem(path: Path, out: Path, done: list[ImageResult]) -> str:
    taken = {r.out_dir.name for r in done}
    stem, n = path.stem, 1
    while stem in taken:
        n += 1
        stem = f"{path.stem}-{n}"
    return stem


def _top(probabilities: torch.Tensor, loaded: LoadedModel, k: int) -> list[tuple[str, float]]:
    values, indices = probabilities.topk(min(k, probabilities.numel()))
    return [(loaded.class_names[i], float(v)) for v, i in zip(values, indices, strict=True)]


def _write_image_outputs(out_dir: Path, view: np.ndarray, expl: api.Explanation, b: int,
                         alpha: float, class_names: Sequence[str]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    target = int(expl.targets[b, 0]) if expl.targets is not None else None
    label = class_names[target] if target is not None else "custom target"
    panels = [(view, f"input: {label}")]
    for method in expl:
        blended = overlay(view, expl[method][b, 0], alpha)
        save_png(blended, out_dir / f"{_safe(method)}.png")
        panels.append((blended, method))
    save_png(grid([panels]), out_dir / "grid.png")
    arrays = {f"{m}": expl.numpy(m)[b] for m in expl}
    arrays |= {f"raw_{m}": expl.raw[m][b].cpu().numpy() for m in expl}
    np.savez_compressed(out_dir / "maps.npz", **{_safe(k): v for k, v in arrays.items()},
                        targets=expl.targets[b].cpu().numpy() if target is not None else [])


def _safe(name: str) -> str:
    return name.replace("+", "p")


def _cmd_explain(args: argparse.Namespace) -> int:
    loaded = load_model(args.arch, args.weights)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        api.registry.get_method(m)
    target = parse_target(args.target, loaded.class_names)
    paths = [Path(p) for p in args.images]
    results, failed = explain_images(paths, loaded, methods, Path(args.out), target=target,
                                     layer=args.layer, batch_size=args.batch_size,
                                     alpha=args.alpha, options=_method_options(args))
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


def _method_options(args: argparse.Namespace) -> dict[str, Any]:
    """The trained artefacts ``camkit explain`` was given, as :func:`camkit.explain` options."""
    options = embedding_cli.explain_options(args)
    if args.memory is not None:
        from .memory import BiasReducingMemory

        options["memory"] = BiasReducingMemory.load(args.memory)
    return options


def _cmd_methods(_args: argparse.Namespace) -> int:
    width = max(map(len, api.available_methods()))
    for name, summary in api.available_methods().items():
        print(f"{name:<{width}}  {summary}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="camkit", description="Class activation maps for PyTorch image models.")
    sub = parser.add_subparsers(dest="command", required=True)

    ex = sub.add_parser("explain", help="explain images with one or more methods")
    ex.add_argument("images", nargs="+", help="image files (any format PIL reads)")
    ex.add_argument("--methods", default="gradcam", help="comma-separated (see camkit methods)")
    ex.add_argument("--target", default="pred",
                    help="pred (the predicted class), a class index, or a class name")
    ex.add_argument("--layer", default=None, help="target layer (dotted name); default per model")
    ex.add_argument("--arch", default="efficientnet-lite0",
                    help="efficientnet-lite0 (pretrained, offline) or a torchvision model name")
    ex.add_argument("--weights", default=None, help="a local state dict for --arch")
    ex.add_argument("--out", default="runs/explain", help="output folder")
    ex.add_argument("--batch-size", type=int, default=8)
    ex.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the map")
    ex.add_argument("--report", default=None, metavar="HTML",
                    help="also write a self-contained HTML report to this file")
    ex.add_argument("--memory", default=None, metavar="FILE",
                    help="M-CAM memory for --methods mcam (from camkit train-memory)")
    embedding_cli.add_explain_arguments(ex)
    ex.set_defaults(run=_cmd_explain)

    me = sub.add_parser("methods", help="list the methods")
    me.set_defaults(run=_cmd_methods)

    demo.add_parser(sub)
    add_evaluate_parser(sub)
    memory_cli.add_train_memory_parser(sub)
    embedding_cli.add_parser(sub)
    batch_cli.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``camkit`` command."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, FileNotFoundError, ModuleNotFoundError) as err:
        print(f"camkit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
