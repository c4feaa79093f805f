"""``camkit demo``: the showcase behind ``make demo``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from . import api
from .viz.report import report_from_results
from .zoo import load_model

# The classic methods the demo shows (those that need no trained artifact).
DEMO_METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigencam",
                "eigengradcam", "ablationcam", "scorecam", "guided-gradcam")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``demo`` sub-command to an ``argparse`` sub-parser collection."""
    de = subparsers.add_parser("demo", help="explain real sample photos with every method")
    de.add_argument("--out", default="runs/demo")
    de.add_argument("--images", type=int, default=4, help="how many ImageNet samples")
    de.set_defaults(run=run)
    return de


def run(args: argparse.Namespace) -> int:
    """Run ``camkit demo``; returns the exit status."""
    from .cli import explain_images  # camkit.cli imports this module
    from .data import imagenet_samples, quokka

    out = Path(args.out)
    samples = [s.path for s in imagenet_samples()[: args.images]]
    photo = quokka()
    out.mkdir(parents=True, exist_ok=True)
    quokka_path = out / "quokka.png"
    photo.image.save(quokka_path)
    loaded = load_model()
    methods = [m for m in DEMO_METHODS if m in api.available_methods()]
    results, _ = explain_images([quokka_path, *samples], loaded, methods, out / "images")
    report = report_from_results(results, out / "report.html", model=loaded.arch,
                                 layer=loaded.layer, methods=methods, command="camkit demo")
    for r in results:
        print(f"{r.path.name}: {r.predictions[0][0]} ({r.predictions[0][1]:.0%}) → "
              f"{r.out_dir / 'grid.png'}")
    print(f"\nReport: {report.resolve()}\nMaps and PNG grids: {out.resolve()}/images/")
    return 0
