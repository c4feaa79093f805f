"""``camkit fit-embedding`` (fit a weight bank from a folder of labelled images) and the
``--bank`` option of ``camkit explain``.

Hooked into :mod:`camkit.cli` by :func:`add_parser` and :func:`run` (the sub-command), and by
:func:`add_explain_arguments` and :func:`explain_options` (``camkit explain --methods
embedding-gradcam --bank FILE``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .triplets import MODES
from .weights import VARIANTS


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``fit-embedding`` sub-command to an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "fit-embedding", help="fit an embedding Grad-CAM weight bank on labelled images",
        description="Compute, for every image of a folder with one sub-folder per class, its "
                    "embedding (the model's output) and its top-M triplet grad-weights "
                    "(Chen et al., WACV 2020), and save them as a safetensors weight bank for "
                    "`camkit explain --methods embedding-gradcam --bank FILE`.")
    p.add_argument("data", help="folder with one sub-folder of images per class")
    p.add_argument("--out", required=True, help="output file, e.g. bank.safetensors")
    p.add_argument("--arch", default="efficientnet-lite0", help="model architecture "
                   "(camkit.zoo name); its output is used as the embedding")
    p.add_argument("--weights", help="a local state dict for --arch (e.g. your fine-tuned "
                   "embedding network)")
    p.add_argument("--random-init", action="store_true", help="random weights (for testing)")
    p.add_argument("--layer", help="target layer (default: the architecture's usual one)")
    p.add_argument("--triplets", type=int, default=100, help="triplets per image (T)")
    p.add_argument("--top-m", type=int, default=50, help="channels kept per image (M)")
    p.add_argument("--margin", type=float, default=0.2, help="the triplet margin")
    p.add_argument("--mode", choices=MODES, default="active", help="triplet sampling")
    p.add_argument("--variant", choices=VARIANTS, default="gradcam")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``fit-embedding`` with parsed arguments; returns the exit status."""
    from ..data.multilabel import MultiLabelImages
    from ..zoo import load_model
    from .fit import fit_weight_bank

    loaded = load_model(args.arch, args.weights, random_init=args.random_init)
    data = MultiLabelImages.from_folders(args.data, loaded.preprocess, on_error="raise")
    bank = fit_weight_bank(
        loaded.model, args.layer or loaded.layer, data, data.labels.argmax(dim=1),
        triplets_per_image=args.triplets, top_m=args.top_m, margin=args.margin, mode=args.mode,
        variant=args.variant, batch_size=args.batch_size, seed=args.seed,
        progress=False if args.quiet else None)
    path = bank.save(args.out)
    print(f"{path}: weight bank of {len(bank)} images from {len(data.class_names)} classes, "
          f"layer {bank.layer!r} ({bank.num_channels} channels, top-{bank.top_m}), "
          f"{bank.embedding_dim}-d embeddings; {int(bank.fallback.sum())} image(s) had no "
          f"{args.mode} triplet")
    if bank.fallback.any():
        print(f"camkit: {int(bank.fallback.sum())} image(s) had no {args.mode} triplet and "
              "used random ones (zero weights under the hinge)", file=sys.stderr)
    return 0


def add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--bank`` to the ``camkit explain`` parser."""
    parser.add_argument("--bank", help="weight bank file for embedding-gradcam (from camkit "
                        "fit-embedding)")


def explain_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``camkit.explain`` options that ``camkit explain``'s arguments ask for:
    ``{"bank": WeightBank}`` with ``--bank``, else nothing."""
    if getattr(args, "bank", None) is None:
        return {}
    from .bank import WeightBank

    return {"bank": WeightBank.load(args.bank)}
