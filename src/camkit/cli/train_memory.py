"""``camkit train-memory``: train an M-CAM memory on a frozen network's layer."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from camkit.artifacts import read_safetensors
from camkit.cli.arguments import (
    add_data_argument,
    add_model_arguments,
    count,
    load_model,
    positive_int,
)
from camkit.cli.arguments import device as device_argument
from camkit.data.multilabel import SPEC_KINDS, dataset_from_spec
from camkit.memory.training import CHECKPOINT_FORMAT, CHECKPOINT_NAME, train_memory


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``train-memory`` subcommand."""
    p = subparsers.add_parser(
        "train-memory", help="train an M-CAM bias-reducing memory on a frozen network",
        description="Train the key-value memory of M-CAM (Kim & Ro, BMVC 2021) on a frozen "
                    "network's layer and save it as safetensors.")
    add_data_argument(p, SPEC_KINDS, what="multi-label training data: ")
    p.add_argument("--val-data", metavar="SPEC", help="validation data (as --data)")
    p.add_argument("--out", required=True, help="output file, e.g. memory.safetensors")
    add_model_arguments(p)
    p.add_argument("--epochs", type=positive_int, default=20)
    p.add_argument("--slots", type=positive_int, help="memory slots (default 2 × classes)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--addr-temperature", type=float, default=1.0,
                   help="address softmax temperature (1 = the paper's)")
    p.add_argument("--checkpoint-dir", help="write a checkpoint here after every epoch")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--cache", choices=("auto", "memory", "disk", "none"), default="auto",
                   help="where the frozen network's features are kept between epochs")
    p.add_argument("--cache-dir", help="folder of the disk cache")
    p.add_argument("--device", help="e.g. cpu or cuda (default: cuda when available)")
    p.add_argument("--num-workers", type=count, default=0, help="image-loading workers")
    p.add_argument("--on-error", choices=("skip", "raise"), default="skip",
                   help="what to do with missing or corrupt images")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress bars on stderr (default on)")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``train-memory``; the saved memory's summary goes to stderr."""
    device = str(device_argument(args.device))
    if args.checkpoint_dir and not args.no_resume:
        announce_resume(Path(args.checkpoint_dir) / CHECKPOINT_NAME)
    loaded = load_model(args)
    model = loaded.model.to(device).eval()
    layer = args.layer or loaded.layer
    data = dataset_from_spec(args.data, loaded.preprocess, args.on_error)
    val = dataset_from_spec(args.val_data, loaded.preprocess, args.on_error) \
        if args.val_data else None
    class_names = getattr(data, "class_names", None)
    if class_names is None:
        raise ValueError(f"the data set {args.data!r} does not name its classes")
    memory = train_memory(
        model, layer, data, len(class_names), slots=args.slots, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        checkpoint_dir=args.checkpoint_dir, resume=not args.no_resume, val_data=val,
        progress=args.progress, cache=None if args.cache == "none" else args.cache,
        addr_temperature=args.addr_temperature, class_names=class_names, device=device,
        num_workers=args.num_workers, cache_dir=args.cache_dir,
    )
    path = memory.save(args.out)
    last = memory.metrics["history"][-1] if memory.metrics["history"] else {}
    val_map = f", validation mAP {last['val_map']:.4f}" if "val_map" in last else ""
    skipped = len(memory.metrics["skipped"])
    print(f"saved {path}: {memory.num_slots} slots on layer {layer!r} "
          f"{tuple(memory.spatial.shape[1:])}{val_map}; {skipped} image(s) skipped",
          file=sys.stderr)
    return 0


def announce_resume(checkpoint: Path) -> None:
    """Say on stderr that the run resumes from ``checkpoint`` (when it exists); refuse a
    checkpoint whose header is damaged, before any work."""
    if not checkpoint.exists():
        return
    try:
        _, header = read_safetensors(checkpoint, "memory checkpoint", tensors=False)
    except ValueError as err:
        raise ValueError(f"{err}; delete it or pass --no-resume to start afresh") from None
    fields = {"format": str, "epoch": int, "settings": dict, "history": list, "optimizer": dict}
    damaged = [k for k, kind in fields.items() if not isinstance(header.get(k), kind)]
    if header.get("format") != CHECKPOINT_FORMAT or damaged:
        raise ValueError(f"{checkpoint} is not an intact memory training checkpoint (bad "
                         f"{', '.join(damaged) or 'format'}); delete it or pass --no-resume")
    print(f"camkit: resuming from {checkpoint} after epoch {header['epoch']} (--no-resume "
          "starts afresh)", file=sys.stderr)
