"""Explain image files and write what a person looks at: overlays, a grid, the maps.

This is what ``camkit explain`` and the demo write per image; it is library code, so scripts
and notebooks can write the same files.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from camkit import api
from camkit.data import load_image
from camkit.viz.overlay import grid, overlay, save_png
from camkit.viz.report import ReportItem, report_item
from camkit.zoo import LoadedModel


@dataclass
class ExplainedImage:
    """What :func:`explain_images` wrote for one image."""

    path: Path
    out_dir: Path
    predictions: list[tuple[str, float]]
    report: ReportItem  # the image's part of an HTML report


def explain_images(
    paths: Sequence[Path],
    loaded: LoadedModel,
    methods: Sequence[str],
    out: Path,
    *,
    target: int | None = None,
    layer: str | Sequence[str] | None = None,
    batch_size: int = 8,
    alpha: float = 0.5,
    top: int = 5,
    options: dict[str, Any] | None = None,
) -> tuple[list[ExplainedImage], list[tuple[Path, str]]]:
    """Explain each image with every method and write, per image, into ``out/<stem>/``:
    ``<method>.png`` overlays, ``grid.png`` (image and all methods side by side) and
    ``maps.npz`` (normalised maps and raw maps per method).

    Images are decoded ``batch_size`` at a time and explained on the model's device.
    ``options`` go to :func:`camkit.explain` (e.g. ``memory=`` for M-CAM, ``bank=`` for
    embedding Grad-CAM). Returns the results and the ``(path, reason)`` of images that could
    not be read.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device = next(loaded.model.parameters(), torch.zeros(0)).device
    results: list[ExplainedImage] = []
    failed: list[tuple[Path, str]] = []
    for chunk in _decoded(paths, batch_size, failed):
        x = torch.stack([loaded.preprocess(img) for _, img in chunk]).to(device)
        expl = api.explain(loaded.model, x, target, methods, layer or loaded.layer,
                           **(options or {}))
        probabilities = expl.outputs.float().softmax(dim=1).cpu()
        for b, (path, img) in enumerate(chunk):
            view = np.asarray(loaded.preprocess.view(img))
            out_dir = out / _unique_stem(path, results)
            predictions = _top(probabilities[b], loaded.class_names, top)
            item = report_item(expl, b, view, loaded.class_names, name=path.name,
                               predictions=predictions)
            results.append(ExplainedImage(path, out_dir, predictions, item))
            write_image_outputs(out_dir, view, expl, b, alpha, loaded.class_names)
    return results, failed


def _decoded(paths: Sequence[Path], batch_size: int, failed: list[tuple[Path, str]]
             ) -> Iterator[list[tuple[Path, Image.Image]]]:
    """The readable images in batches of ``batch_size`` ``(path, RGB image)``, decoded only
    when their batch comes; the ``(path, reason)`` of unreadable ones go to ``failed``."""
    chunk: list[tuple[Path, Image.Image]] = []
    for path in paths:
        try:
            chunk.append((path, load_image(path)))
        except (OSError, ValueError) as err:
            failed.append((path, str(err)))
        if len(chunk) == batch_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _unique_stem(path: Path, done: list[ExplainedImage]) -> str:
    taken = {r.out_dir.name for r in done}
    stem, n = path.stem, 1
    while stem in taken:
        n += 1
        stem = f"{path.stem}-{n}"
    return stem


def _top(probabilities: torch.Tensor, class_names: Sequence[str], k: int
         ) -> list[tuple[str, float]]:
    values, indices = probabilities.topk(min(k, probabilities.numel()))
    return [(class_names[i], float(v)) for v, i in zip(values, indices, strict=True)]


def write_image_outputs(out_dir: Path, view: np.ndarray, expl: api.Explanation, b: int,
                        alpha: float, class_names: Sequence[str]) -> None:
    """Write image ``b`` of ``expl`` into ``out_dir``: an overlay per method on ``view`` (the
    ``(H, W, 3)`` uint8 picture the model saw), ``grid.png`` and ``maps.npz``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = int(expl.targets[b, 0]) if expl.targets is not None else None
    label = class_names[target] if target is not None else "custom target"
    panels = [(view, f"input: {label}")]
    for method in expl:
        blended = overlay(view, expl[method][b, 0], alpha)
        save_png(blended, out_dir / f"{_safe(method)}.png")
        panels.append((blended, method))
    save_png(grid([panels]), out_dir / "grid.png")
    arrays = {f"{m}": expl.numpy(m)[b] for m in expl}
    arrays |= {f"raw_{m}": expl.raw[m][b].cpu().numpy() for m in expl}
    targets = expl.targets[b].cpu().numpy() if expl.targets is not None else np.zeros(0)
    np.savez_compressed(out_dir / "maps.npz", **{_safe(k): v for k, v in arrays.items()},
                        targets=targets)


def _safe(name: str) -> str:
    """A method name as a file name (``gradcam++`` → ``gradcampp``)."""
    return name.replace("+", "p")
