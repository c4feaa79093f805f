"""``camkit train-memory``: train an M-CAM memory from the command line.

Hooked into the ``camkit`` command by :mod:`camkit.cli` through
:func:`add_train_memory_parser` and :func:`run_train_memory`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..data.multilabel import dataset_from_spec
from .diagnostics import summary_lines
from .init import INITS
from .training import DEFAULT_TEMPERATURE, train_memory

DATA_SPEC_HELP = ("coco:ANNOTATIONS.json:IMAGE_DIR, csv:FILE.csv:IMAGE_DIR (NIH style, labels "
                  "joined by |), vindr:FILE.csv:IMAGE_DIR, folders:DIR (one folder per class) "
                  "or synthetic:N")


def add_train_memory_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``train-memory`` sub-command to an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "train-memory", help="train an M-CAM bias-reducing memory on a frozen network",
        description="Train the key-value memory of M-CAM (Kim & Ro, BMVC 2021) on a frozen "
                    "network's layer and save it as safetensors.")
    p.add_argument("--data", required=True, metavar="SPEC", help=DATA_SPEC_HELP)
    p.add_argument("--val-data", metavar="SPEC", help="validation data (same forms)")
    p.add_argument("--out", required=True, help="output file, e.g. memory.safetensors")
    p.add_argument("--arch", required=True, help="model architecture (camkit.zoo name)")
    p.add_argument("--weights", help="weights name or file for the architecture")
    p.add_argument("--random-init", action="store_true", help="random weights (for testing)")
    p.add_argument("--layer", help="target layer (default: the architecture's usual one)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--slots", type=int, help="memory slots (default 2 × classes)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--addr-temperature", type=float, default=DEFAULT_TEMPERATURE,
                   help=f"address softmax temperature (default {DEFAULT_TEMPERATURE}; 1 = the "
                        "paper's, under which slots hardly specialise)")
    p.add_argument("--init", choices=INITS, default="templates",
                   help="where S, K, V start: class templates of the features (default) or "
                        "the random N(0, 1) start")
    p.add_argument("--patience", type=int,
                   help="with --val-data: stop after this many epochs without a better "
                        "validation mAP and keep the best epoch")
    p.add_argument("--checkpoint-dir", help="write a checkpoint here after every epoch")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--cache", choices=("auto", "memory", "disk", "none"), default="auto",
                   help="where the frozen network's features are kept between epochs")
    p.add_argument("--cache-dir", help="folder of the disk cache")
    p.add_argument("--device", help="e.g. cpu or cuda (default: cuda when available)")
    p.add_argument("--num-workers", type=int, default=0, help="image-loading workers")
    p.add_argument("--on-error", choices=("skip", "raise"), default="skip",
                   help="what to do with missing or corrupt images")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run_train_memory)
    return p


def run_train_memory(args: argparse.Namespace) -> int:
    """Run ``train-memory`` with parsed arguments; returns the exit status."""
    import torch

    from .. import zoo

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = zoo.load_model(args.arch, args.weights, random_init=args.random_init)
    model = loaded.model.to(device).eval()
    layer = args.layer or loaded.layer
    data = dataset_from_spec(args.data, loaded.preprocess, args.on_error)
    val = dataset_from_spec(args.val_data, loaded.preprocess, args.on_error) \
        if args.val_data else None
    class_names = getattr(data, "class_names", None)
    if class_names is None:
        raise SystemExit(f"the data set {args.data!r} does not name its classes")
    memory = train_memory(
        model, layer, data, len(class_names), slots=args.slots, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        checkpoint_dir=args.checkpoint_dir, resume=not args.no_resume, val_data=val,
        progress=not args.quiet, cache=None if args.cache == "none" else args.cache,
        addr_temperature=args.addr_temperature, init=args.init, patience=args.patience,
        class_names=class_names, device=device,
        num_workers=args.num_workers, cache_dir=args.cache_dir,
    )
    path = memory.save(args.out)
    last = memory.metrics["history"][-1] if memory.metrics["history"] else {}
    val_map = f", validation mAP {last['val_map']:.4f}" if "val_map" in last else ""
    skipped = len(memory.metrics["skipped"])
    print(f"saved {path}: {memory.num_slots} slots on layer {layer!r} "
          f"{tuple(memory.spatial.shape[1:])}{val_map}; {skipped} image(s) skipped",
          file=sys.stderr)
    for line in summary_lines(memory.metrics["diagnostics"]):
        print(f"  {line}", file=sys.stderr)
    return 0
