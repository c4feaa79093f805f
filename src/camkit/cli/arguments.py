"""The arguments every ``camkit`` subcommand shares, defined once: the model (``--arch``,
``--weights``, ``--random-init``, ``--layer``), the data (``--data SPEC`` in the one grammar
of :mod:`camkit.data.specs`), the methods, method options and comma-separated lists."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from camkit import zoo
from camkit.data.specs import spec_help
from camkit.methods import registry

DEFAULT_ARCH = "efficientnet-lite0"


def names(text: str) -> list[str]:
    """``"gradcam, hirescam,"`` → ``["gradcam", "hirescam"]``."""
    return [name.strip() for name in text.split(",") if name.strip()]


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    return _int_at_least(text, 1)


def count(text: str) -> int:
    """An argparse type: a whole number of at least 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
    return value


def device(text: str | None) -> torch.device:
    """``--device`` (``None``: CUDA when available, else the CPU), refused when that device is
    not there."""
    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(text)
    except RuntimeError:
        raise ValueError(f"--device {text!r} is not a device; use cpu, cuda or cuda:N") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {text}: no CUDA GPU is available here; use --device cpu")
    if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {text}: there are {torch.cuda.device_count()} CUDA GPUs")
    return chosen


def output_folder(text: str) -> Path:
    """``--out DIR``: refused when it names an existing file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {text} is a file; give a folder (it is created if missing)")
    return path


def add_model_arguments(parser: argparse.ArgumentParser, *, role: str = "") -> None:
    """``--arch``, ``--weights``, ``--num-classes``, ``--class-names``, ``--random-init`` and
    ``--layer``; ``role`` says what the model's output is used as, for the ``--arch`` help."""
    parser.add_argument("--arch", default=DEFAULT_ARCH,
                        help=f"{DEFAULT_ARCH} (pretrained, offline), a torchvision model name "
                             f"or timm:NAME (a timm model){role} (default {DEFAULT_ARCH})")
    parser.add_argument("--weights", default=None, metavar="FILE",
                        help="a local state dict for --arch (e.g. your fine-tuned network); "
                             "its classifier sets the number of classes")
    parser.add_argument("--num-classes", type=positive_int, default=None,
                        help="classes of the network's head (default: from --weights)")
    parser.add_argument("--class-names", default=None, metavar="FILE",
                        help="a text file with one class name per line, in index order")
    parser.add_argument("--random-init", action="store_true",
                        help="untrained (seeded) weights, for trials without a weights file")
    parser.add_argument("--layer", default=None,
                        help="target layer (dotted name); default: the architecture's usual one")


def box(text: str) -> tuple[float, float, float, float]:
    """An argparse type: ``X0,Y0,X1,Y1`` in image pixels, with ``X0 < X1`` and ``Y0 < Y1``."""
    try:
        x0, y0, x1, y1 = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X0,Y0,X1,Y1 (four numbers), got {text!r}"
                                         ) from None
    if not (x0 < x1 and y0 < y1):
        raise argparse.ArgumentTypeError(f"a box needs X0 < X1 and Y0 < Y1, got {text!r}")
    return x0, y0, x1, y1


def add_task_arguments(parser: argparse.ArgumentParser) -> None:
    """What to explain in a segmentation model's or a detector's output (``--box``,
    ``--mask``, ``--score-threshold``, ``--max-boxes``) and ``--input-size``."""
    parser.add_argument("--input-size", type=positive_int, default=None, metavar="N",
                        help="side of the square network input (default: the architecture's; "
                             "520 for segmentation models, the detector's min_size)")
    parser.add_argument("--box", type=box, default=None, metavar="X0,Y0,X1,Y1",
                        help="in image pixels: segmentation, the region where --target's "
                             "class is explained; detection, the reference box (of class "
                             "--target) whose matching detection is explained")
    parser.add_argument("--mask", default=None, metavar="FILE",
                        help="segmentation: an image whose non-black pixels are the region "
                             "(stretched to each image); default: where the model predicts "
                             "--target's class")
    parser.add_argument("--score-threshold", type=float, default=None, metavar="T",
                        help="detection: explain each detection scoring at least T (default "
                             f"{DETECTION_DEFAULTS['score_threshold']}), one map per box")
    parser.add_argument("--max-boxes", type=positive_int, default=None, metavar="N",
                        help="detection: at most N detections per image, best first (default "
                             f"{DETECTION_DEFAULTS['max_boxes']})")


DETECTION_DEFAULTS = {"score_threshold": 0.5, "max_boxes": 10}


def load_model(args: argparse.Namespace) -> zoo.LoadedModel:
    """The model that :func:`add_model_arguments`' arguments name."""
    head = {"num_classes": args.num_classes,
            "class_names": read_class_names(args.class_names) if args.class_names else None}
    return zoo.load_model(args.arch, args.weights, random_init=args.random_init,
                          **{k: v for k, v in head.items() if v is not None})


def read_class_names(path: str) -> list[str]:
    """The non-empty lines of ``--class-names FILE``."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--class-names {path}: no such file")
    names = [line.strip() for line in file.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"--class-names {path} holds no class names (one per line)")
    return names


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


def check_method_options(methods: Sequence[str], options: dict[str, Any], *,
                         exclude: Sequence[str] = ()) -> None:
    """Refuse an ``--option`` that none of ``methods`` accepts (``exclude``: options the
    command sets from flags of their own), saying which ones they accept."""
    accepted = {o for m in methods for o in registry.get_method(m).options} - set(exclude)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"--option {unknown[0]}: no method of --methods {','.join(methods)} "
                         f"takes it; they take: {', '.join(sorted(accepted)) or 'no options'}")


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
