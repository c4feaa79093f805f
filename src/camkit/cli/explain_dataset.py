"""``camkit explain-dataset``: the command-line face of
:func:`camkit.batch.explain_dataset`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from camkit.batch.job import TARGET_HELP, ModelSpec
from camkit.batch.runner import ENGINES, explain_dataset
from camkit.batch.sources import SPEC_KINDS
from camkit.cli.arguments import (
    add_data_argument,
    add_methods_argument,
    add_model_arguments,
    add_progress_argument,
    check_method_options,
    count,
    device,
    names,
    output_folder,
    parse_options,
    positive_int,
    read_class_names,
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``explain-dataset`` subcommand to an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "explain-dataset", help="explain a whole data set into resumable shards",
        description="Explain every image of a data set and store float16 maps, scores and "
                    "targets in safetensors shards with a manifest. Rerunning the same command "
                    "resumes an interrupted job; other settings into the same --out are "
                    "refused. Read the results with camkit.batch.open_results(OUT).")
    add_data_argument(p, SPEC_KINDS)
    add_methods_argument(p)
    p.add_argument("--out", required=True, help="the results folder")
    p.add_argument("--engine", choices=ENGINES, default="local",
                   help="local (this machine) or ray (a Ray cluster: --ray-address or "
                        "RAY_ADDRESS, else a local Ray instance)")
    add_model_arguments(p)
    p.add_argument("--target", default="pred", help=TARGET_HELP)
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="a method option (repeatable); VALUE is read as JSON when it parses")
    p.add_argument("--batch-size", type=positive_int, default=32,
                   help="images per explain call")
    p.add_argument("--workers", type=count, default=2, help="image-decoding processes (local)")
    p.add_argument("--shard-size", type=positive_int, default=None,
                   help="images per shard file, the unit of resumption (default: a twentieth "
                        "of the job, between one batch and 1000 images)")
    p.add_argument("--map-size", type=positive_int, default=None,
                   help="store maps at this side length (area-averaged); default input size")
    p.add_argument("--device", default=None, help="local engine device (default cuda if any)")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (ray engine)")
    p.add_argument("--ray-actors", type=positive_int, default=None,
                   help="model actors (ray engine; default one per GPU, else one per CPU)")
    add_progress_argument(p)
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the job; the summary goes to stdout, unreadable images to stderr (exit status 1
    when there were any)."""
    methods, options = names(args.methods), parse_options(args.option)
    check_method_options(methods, options)
    class_names = read_class_names(args.class_names) if args.class_names else None
    device(args.device)  # refuse a device that is not there before any work
    model = ModelSpec(args.arch, args.weights, args.random_init, num_classes=args.num_classes,
                      class_names=tuple(class_names) if class_names else None)
    results = explain_dataset(
        args.data, output_folder(args.out), methods, model=model, layer=args.layer,
        target=args.target, options=options, batch_size=args.batch_size,
        workers=args.workers, shard_size=args.shard_size, map_size=args.map_size,
        engine=args.engine, device=args.device, ray_address=args.ray_address,
        ray_actors=args.ray_actors, progress=args.progress)
    for image, reason in results.failed.items():
        print(f"camkit: skipped {image}: {reason}", file=sys.stderr)
    shards = len(results.manifest["shards"])
    skipped = (f"; {len(results.failed)} unreadable images skipped (listed in the manifest)"
               if results.failed else "")
    print(f"{len(results)} images explained with {', '.join(results.methods)} into "
          f"{results.root} ({shards} shards{skipped})")
    return 1 if results.failed else 0
