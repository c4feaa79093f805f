"""The one grammar of data specs: how every ``camkit`` command names its images.

A spec is ``KIND`` or ``KIND:ARG`` or ``KIND:ARG:ARG``; a bare path to a directory means
``folder:DIR``. Every kind means the same thing in every command; a command accepts the kinds
it can use and says which when given another:

========================  ====================================================================
``folder:DIR``            every image file under ``DIR``, recursively (hidden files and
                          folders and ``NAME.mask.png`` skipped), in path order; an image's id
                          is its path relative to ``DIR``; the first sub-folder names its class
                          (a class name or index); ``NAME.mask.png`` beside an image is its
                          object mask
``list:FILE``             one image path per line (``#`` comments skipped), optionally a tab
                          and a class index; relative paths are relative to ``FILE``'s folder
``coco:JSON:DIR``         a COCO instances file and its images (multi-label, boxes)
``csv:FILE:DIR``          NIH ChestX-ray14 style table (labels joined by ``|``) and its images
``vindr:FILE:DIR``        VinDr-CXR findings table (one row per finding, boxes) and its images
``synthetic:N``           ``N`` synthetic multi-label images
``imagenet-samples``      foolbox's 20 labelled ImageNet photos
``imagenet-grid[:N]``     ``N`` (default 8) 2×2 grids of those photos, for the grid pointing game
``quokka``                imgaug's photo with its box and mask
========================  ====================================================================

This module parses and lists; the data sets themselves are built where they live
(:mod:`camkit.data.files`, :mod:`camkit.data.multilabel`, :mod:`camkit.batch.sources`).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image


@dataclass(frozen=True)
class SpecForm:
    """One kind of spec: its argument names (``"[N]"`` is optional) and what it means."""

    kind: str
    args: tuple[str, ...]
    meaning: str

    def usage(self) -> str:
        """``"coco:JSON:DIR"``, ``"imagenet-grid[:N]"``, ``"quokka"``."""
        return self.kind + "".join(f"[:{a[1:-1]}]" if a.startswith("[") else f":{a}"
                                   for a in self.args)


FORMS = {form.kind: form for form in (
    SpecForm("folder", ("DIR",), "image files under DIR; sub-folders name classes"),
    SpecForm("list", ("FILE",), "one image path per line, optionally a tab and a class index"),
    SpecForm("coco", ("JSON", "DIR"), "a COCO instances file and its images"),
    SpecForm("csv", ("FILE", "DIR"), "an NIH-style table, labels joined by |, and its images"),
    SpecForm("vindr", ("FILE", "DIR"), "a VinDr-CXR findings table and its images"),
    SpecForm("synthetic", ("N",), "N synthetic multi-label images"),
    SpecForm("imagenet-samples", (), "foolbox's 20 labelled ImageNet photos"),
    SpecForm("imagenet-grid", ("[N]",), "N (default 8) 2x2 grids of those photos"),
    SpecForm("quokka", (), "imgaug's photo with its box and mask"),
)}


@dataclass(frozen=True)
class DataSpec:
    """A parsed spec: ``DataSpec("coco:a.json:img", "coco", ("a.json", "img"))``."""

    text: str
    kind: str
    args: tuple[str, ...]

    def count(self, default: int | None = None) -> int:
        """The ``N`` of ``synthetic:N`` / ``imagenet-grid[:N]``, or ``default`` when absent."""
        if not self.args and default is not None:
            return default
        return int(self.args[0])


def spec_help(accepted: Sequence[str]) -> str:
    """``"folder:DIR (image files under DIR; ...) or list:FILE (...)"`` for ``--data`` help."""
    described = [f"{FORMS[k].usage()} ({FORMS[k].meaning})" for k in accepted]
    return ", ".join(described[:-1]) + (" or " if len(described) > 1 else "") + described[-1]


def parse_spec(text: str, accepted: Sequence[str]) -> DataSpec:
    """Parse ``text`` into a :class:`DataSpec` of one of the ``accepted`` kinds.

    Raises:
        ValueError: an unknown or unaccepted kind (with the closest accepted one), missing or
            extra arguments, or a count that is not a positive integer.
    """
    if ":" not in text and text not in FORMS and Path(text).is_dir():
        text = f"folder:{text}"
    kind, _, rest = text.partition(":")
    if kind not in accepted:
        close = difflib.get_close_matches(kind, accepted, n=1)
        hint = f" (did you mean {FORMS[close[0]].usage()}?)" if close else ""
        raise ValueError(f"unknown data spec {text!r}{hint}; use {spec_help(accepted)}")
    form = FORMS[kind]
    args = _split_args(rest, len(form.args))
    required = sum(not a.startswith("[") for a in form.args)
    if not required <= len(args) <= len(form.args) or not all(args):
        raise ValueError(f"data spec {text!r} has the form {form.usage()}")
    if "N" in form.args or "[N]" in form.args:
        if args and not (args[0].isdigit() and int(args[0]) > 0):
            raise ValueError(f"data spec {text!r}: N must be a positive integer")
    return DataSpec(text, kind, args)


def _split_args(rest: str, wanted: int) -> tuple[str, ...]:
    """``"a.json:img"`` → ``("a.json", "img")``; the last argument keeps any further ``:``
    (a Windows drive letter in a folder, say)."""
    if not rest:
        return ()
    return tuple(rest.split(":", max(wanted - 1, 0)))


def image_extensions() -> set[str]:
    """The file extensions Pillow can open (lower case, with the dot)."""
    Image.init()
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def mask_path(image: Path) -> Path:
    """Where the object mask of ``image`` lives: ``NAME.mask.png`` beside it."""
    return image.with_name(image.stem + ".mask.png")


@dataclass(frozen=True)
class FolderImage:
    """An image found by ``folder:DIR``: its path relative to ``DIR`` (posix) and the name of
    the first sub-folder it lies in (its class), or ``None`` directly in ``DIR``."""

    relative: str
    folder: str | None


def folder_images(root: str | os.PathLike[str], spec: str) -> list[FolderImage]:
    """The images of ``folder:DIR`` in relative-path order (see the module docstring)."""
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"{spec}: no folder at {str(base)!r}")
    extensions = image_extensions()
    found = []
    for path in base.rglob("*"):
        parts = path.relative_to(base).parts
        if (path.suffix.lower() in extensions and not path.name.endswith(".mask.png")
                and not any(p.startswith(".") for p in parts) and path.is_file()):
            found.append(FolderImage("/".join(parts), parts[0] if len(parts) > 1 else None))
    return sorted(found, key=lambda image: image.relative)


def list_images(file: str | os.PathLike[str], spec: str) -> list[tuple[str, int | None]]:
    """The ``(path as written, class index or None)`` entries of ``list:FILE``."""
    path = Path(file)
    if not path.is_file():
        raise FileNotFoundError(f"{spec}: no list file at {str(path)!r}")
    entries = [line.split("\t") for line in path.read_text().splitlines()
               if line.strip() and not line.lstrip().startswith("#")]
    return [(e[0].strip(), _list_label(e, path, n)) for n, e in enumerate(entries, 1)]


def _list_label(entry: list[str], path: Path, line: int) -> int | None:
    if len(entry) < 2 or not entry[1].strip():
        return None
    try:
        return int(entry[1])
    except ValueError:
        raise ValueError(f"{path}, entry {line}: the label after the tab must be a class "
                         f"index, got {entry[1]!r}") from None
