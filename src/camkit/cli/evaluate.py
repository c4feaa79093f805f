"""``camkit evaluate``: score methods with metrics over a data set."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from camkit.cli.arguments import (
    add_data_argument,
    add_methods_argument,
    add_model_arguments,
    add_progress_argument,
    load_model,
    names,
)
from camkit.data.files import EVALUATION_KINDS, evaluation_data
from camkit.evaluate import DEFAULT_METRICS, METRICS, REGION_METRICS, evaluate
from camkit.evaluate.report import write_evaluation_report
from camkit.evaluate.sanity import sanity_check


def metrics_for(text: str, kinds: Sequence[str]) -> list[str]:
    """The ``--metrics`` list; ``auto`` = :data:`~camkit.evaluate.DEFAULT_METRICS` and the
    localisation metrics of the region kinds the data annotates; ``none``: no metric (with
    ``--sanity``, only the sanity checks)."""
    chosen = names(text)
    if chosen == ["none"]:
        return []
    if chosen != ["auto"]:
        return chosen
    return [*DEFAULT_METRICS, *(m for kind in kinds for m in REGION_METRICS[kind])]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``evaluate`` subcommand."""
    ev = subparsers.add_parser(
        "evaluate", help="score methods with metrics over a data set",
        description="Explain every image with every method, score the maps with every metric "
                    "and write a method × metric table (mean and 95 %% CI, time per image) as "
                    "results.md, results.csv and results.json.")
    add_data_argument(ev, EVALUATION_KINDS)
    add_methods_argument(ev)
    ev.add_argument("--metrics", default="auto",
                    help=f"comma-separated from {', '.join(METRICS)}; auto: "
                         f"{', '.join(DEFAULT_METRICS)} and the localisation metrics the data "
                         "has regions for; none: no metric")
    ev.add_argument("--sanity", action="store_true",
                    help="also run the randomisation sanity checks of every method (blocks "
                         "re-initialised top down on a copy of the model) and say, per method, "
                         "whether its maps depend on the weights; writes sanity.md and "
                         "sanity.json, and the report (--report, default OUT/report.html)")
    ev.add_argument("--sanity-images", type=int, default=8, metavar="N",
                    help="images the sanity checks use (default 8)")
    ev.add_argument("--out", default="runs/evaluate", help="output folder")
    ev.add_argument("--report", default=None, metavar="HTML",
                    help="also write a self-contained HTML report: the table, the first "
                         "--report-images images explained by every method, the settings")
    ev.add_argument("--report-images", type=int, default=4, metavar="N",
                    help="images shown in the --report (default 4)")
    add_model_arguments(ev)
    ev.add_argument("--targets", default="auto", choices=("auto", "label", "predicted"))
    ev.add_argument("--confidence", default="auto", choices=("auto", "softmax", "sigmoid",
                                                             "logit"))
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--limit", type=int, default=None, help="only the first N images")
    add_progress_argument(ev)
    ev.set_defaults(run=run)
    return ev


def run(args: argparse.Namespace) -> int:
    """Run ``camkit evaluate``: the table to stdout, problems to stderr; exit status 1 when
    some samples failed (their results are still written)."""
    loaded = load_model(args)
    data, kinds = evaluation_data(args.data, loaded.preprocess, loaded.class_names)
    results = evaluate(
        loaded.model, data, names(args.methods), metrics_for(args.metrics, kinds),
        args.layer or loaded.layer,
        targets=args.targets, confidence=None if args.confidence == "auto" else args.confidence,
        batch_size=args.batch_size, seed=args.seed, limit=args.limit, progress=args.progress)
    results.settings = {"data": args.data, "model": args.arch, **results.settings}
    paths = results.save(args.out)
    sanity = None
    if args.sanity:
        sanity = sanity_check(loaded.model, data, names(args.methods), args.layer or loaded.layer,
                              images=args.sanity_images, batch_size=args.batch_size,
                              targets=args.targets, seed=args.seed, progress=args.progress)
        paths.update(sanity.save(args.out))
    report = args.report or (str(Path(args.out) / "report.html") if args.sanity else None)
    if report:
        paths["html"] = write_evaluation_report(report, results, loaded.model, data,
                                                args.layer or loaded.layer, loaded,
                                                args.report_images, sanity)
    if results.metrics:
        print(results.to_markdown())
    if sanity is not None:
        print(sanity.to_markdown())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    for failure in results.failures:
        print(f"camkit: {failure.sample}: {failure.method or ''} {failure.stage}: "
              f"{failure.error}", file=sys.stderr)
    return 1 if results.failures else 0
