"""The arguments every ``camkit`` subcommand shares, defined once: the model (``--arch``,
``--weights``, ``--random-init``, ``--layer``), the data (``--data SPEC`` in the one grammar
of :mod:`camkit.data.specs`), the methods, method options and comma-separated lists."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from camkit import zoo
from camkit.data.specs import spec_help

DEFAULT_ARCH = "efficientnet-lite0"


def names(text: str) -> list[str]:
    """``"gradcam, hirescam,"`` → ``["gradcam", "hirescam"]``."""
    return [name.strip() for name in text.split(",") if name.strip()]


def add_model_arguments(parser: argparse.ArgumentParser, *, role: str = "") -> None:
    """``--arch``, ``--weights``, ``--random-init`` and ``--layer``; ``role`` says what the
    model's output is used as, for the ``--arch`` help."""
    parser.add_argument("--arch", default=DEFAULT_ARCH,
                        help=f"{DEFAULT_ARCH} (pretrained, offline) or a torchvision model "
                             f"name{role} (default {DEFAULT_ARCH})")
    parser.add_argument("--weights", default=None, metavar="FILE",
                        help="a local state dict for --arch (e.g. your fine-tuned network)")
    parser.add_argument("--random-init", action="store_true",
                        help="untrained (seeded) weights, for trials without a weights file")
    parser.add_argument("--layer", default=None,
                        help="target layer (dotted name); default: the architecture's usual one")


def load_model(args: argparse.Namespace) -> zoo.LoadedModel:
    """The model that :func:`add_model_arguments`' arguments name."""
    return zoo.load_model(args.arch, args.weights, random_init=args.random_init)


def add_data_argument(parser: argparse.ArgumentParser, kinds: Sequence[str], *,
                      name: str = "--data", required: bool = True, what: str = "") -> None:
    """A data-spec argument accepting the spec ``kinds``."""
    parser.add_argument(name, required=required, metavar="SPEC",
                        help=f"{what}{spec_help(kinds)}")


def add_methods_argument(parser: argparse.ArgumentParser, default: str = "gradcam") -> None:
    """``--methods``: comma-separated method names."""
    parser.add_argument("--methods", default=default,
                        help=f"comma-separated (see camkit methods; default {default})")


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    """``--progress/--no-progress`` (default: a bar for runs longer than a few seconds)."""
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on stderr (default: for runs longer than a few s)")


def parse_options(items: list[str]) -> dict[str, Any]:
    """``["batch_size=64", "mode=fast"]`` → ``{"batch_size": 64, "mode": "fast"}``."""
    options: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--option takes NAME=VALUE, got {item!r}")
        try:
            options[name.strip()] = json.loads(text)
        except json.JSONDecodeError:
            options[name.strip()] = text
    return options
