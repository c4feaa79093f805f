"""``camkit demo``: the showcase behind ``make demo`` (see :mod:`camkit.demo`)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from camkit import demo
from camkit.cli.arguments import names


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``demo`` subcommand."""
    de = subparsers.add_parser(
        "demo", help="the showcase: classic methods, M-CAM and embedding Grad-CAM in one report",
        description=(demo.__doc__ or "").split("\n\n")[0])
    de.add_argument("--out", default="runs/demo", help="output folder (cache/ inside it)")
    de.add_argument("--parts", default=",".join(demo.PARTS),
                    help=f"comma-separated parts to run, of {', '.join(demo.PARTS)}")
    de.add_argument("--quick", action="store_true", help="smaller settings (a smoke run)")
    de.add_argument("--images", type=int, default=None,
                    help="ImageNet samples shown besides the quokka (classic part)")
    de.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads of the classic part (default: torch's choice)")
    de.set_defaults(run=run)
    return de


def demo_settings(args: argparse.Namespace) -> dict[str, demo.PartSettings]:
    """The settings of each part asked for by ``--parts``, ``--quick`` and ``--images``."""
    parts = names(args.parts)
    unknown = sorted(set(parts) - set(demo.PARTS))
    if unknown or not parts:
        raise ValueError(f"unknown demo part(s) {unknown}; choose from {', '.join(demo.PARTS)}")
    settings = {n: (demo.QUICK if args.quick else demo.DEFAULTS)[n] for n in parts}
    if args.images is not None and "classic" in settings:
        settings["classic"] = replace(settings["classic"], images=args.images)
    return settings


def run(args: argparse.Namespace) -> int:
    """Run ``camkit demo``: the timing table and where the report is to stdout."""
    out = Path(args.out)
    parts = demo.run_parts(out, demo_settings(args), threads=args.threads)
    report = demo.write_demo_report(out, parts, "camkit " + " ".join(getattr(args, "argv",
                                                                             ["demo"])))
    print(demo.summary_table(parts))
    print(f"\nReport: {report.resolve()}")
    for part in parts:
        print(f"{part.name} grids: " + ", ".join(str(g) for g in part.grids))
    print(f"Trained networks, memory and bank: {(out / 'cache').resolve()}", file=sys.stderr)
    return 0
