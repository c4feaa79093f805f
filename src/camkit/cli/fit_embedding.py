"""``camkit fit-embedding``: fit an embedding Grad-CAM weight bank on labelled images, for
``camkit explain --methods embedding-gradcam --bank FILE``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from torch.utils.data import Subset

from camkit.cli.arguments import add_model_arguments, load_model, positive_int
from camkit.data.multilabel import MultiLabelImages, Skipped
from camkit.data.specs import parse_spec, spec_help
from camkit.embedding.fit import fit_weight_bank
from camkit.embedding.triplets import MODES
from camkit.embedding.weights import VARIANTS

SPEC_KINDS = ("folder",)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``fit-embedding`` subcommand."""
    p = subparsers.add_parser(
        "fit-embedding", help="fit an embedding Grad-CAM weight bank on labelled images",
        description="Compute, for every image of a folder with one sub-folder per class, its "
                    "embedding (the model's output) and its top-M triplet grad-weights "
                    "(Chen et al., WACV 2020), and save them as a safetensors weight bank for "
                    "`camkit explain --methods embedding-gradcam --bank FILE`.")
    p.add_argument("data", metavar="SPEC", help=f"labelled images: {spec_help(SPEC_KINDS)} "
                   "(a bare folder path means folder:DIR)")
    p.add_argument("--out", required=True, help="output file, e.g. bank.safetensors")
    add_model_arguments(p, role="; its output is used as the embedding")
    p.add_argument("--triplets", type=positive_int, default=100, help="triplets per image (T)")
    p.add_argument("--top-m", type=positive_int, default=50, help="channels kept per image (M)")
    p.add_argument("--margin", type=float, default=0.2, help="the triplet margin")
    p.add_argument("--mode", choices=MODES, default="active", help="triplet sampling")
    p.add_argument("--variant", choices=VARIANTS, default="gradcam")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars on stderr (default: for runs longer than a few s)")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``fit-embedding``: the bank's summary to stdout, fallbacks and unreadable images
    (left out; exit status 1 when there were any) to stderr."""
    loaded = load_model(args)
    folder = parse_spec(args.data, SPEC_KINDS).args[0]
    images = MultiLabelImages.from_folders(folder, loaded.preprocess, on_error="skip")
    readable = [i for i in range(len(images)) if not isinstance(images[i], Skipped)]
    for record in images.skipped:
        print(f"camkit: skipped {record.path}: {record.reason}", file=sys.stderr)
    data = Subset(images, readable)
    bank = fit_weight_bank(
        loaded.model, args.layer or loaded.layer, data, images.labels[readable].argmax(dim=1),
        triplets_per_image=args.triplets, top_m=args.top_m, margin=args.margin, mode=args.mode,
        variant=args.variant, batch_size=args.batch_size, seed=args.seed,
        progress=args.progress)
    path = bank.save(args.out)
    print(f"{path}: weight bank of {len(bank)} images from {len(images.class_names)} classes, "
          f"layer {bank.layer!r} ({bank.num_channels} channels, top-{bank.top_m}), "
          f"{bank.embedding_dim}-d embeddings; {int(bank.fallback.sum())} image(s) had no "
          f"{args.mode} triplet")
    if bank.fallback.any():
        print(f"camkit: {int(bank.fallback.sum())} image(s) had no {args.mode} triplet and "
              "used random ones (zero weights under the hinge)", file=sys.stderr)
    return 1 if images.skipped else 0
