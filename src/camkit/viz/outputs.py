"""Explain image files and write what a person looks at: overlays, a grid, the maps.

This is what ``camkit explain`` and the demo write per image; it is library code, so scripts
and notebooks can write the same files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from camkit import api
from camkit.data import load_image
from camkit.data.images import ResizePlan
from camkit.detection import (
    BoxScoreTarget,
    DetectedBoxesTarget,
    confident_detections,
    detections_of,
)
from camkit.segmentation import SemanticSegmentationTarget, segmentation_logits
from camkit.targets import TargetSpec
from camkit.viz.overlay import grid, overlay, save_png
from camkit.viz.report import ReportItem, report_item
from camkit.zoo import LoadedModel

Box = tuple[float, float, float, float]
Panel = tuple[str, Box | None]  # a map's title and the box drawn on its image
# The target of one batch from its images' resize plans (boxes and masks in input pixels).
BatchTarget = Callable[[Sequence[ResizePlan]], TargetSpec]


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
    target: TargetSpec = None,
    batch_target: BatchTarget | None = None,
    layer: str | Sequence[str] | None = None,
    batch_size: int = 8,
    alpha: float = 0.5,
    top: int = 5,
    options: dict[str, Any] | None = None,
) -> tuple[list[ExplainedImage], list[tuple[Path, str]]]:
    """Explain each image with every method and write, per image, into ``out/<stem>/``:
    ``<method>.png`` overlays, ``grid.png`` (image and all methods side by side) and
    ``maps.npz`` (normalised maps and raw maps per method). With several maps per image (a
    detector's boxes, several classes of a segmentation model) the overlays are
    ``<method>-<k>.png`` and the grid has one row per map.

    ``target`` is any :func:`camkit.explain` target; ``batch_target``, when given, makes each
    batch's target from its images' resize plans (:class:`~camkit.data.images.ResizePlan`: a
    box or mask given in image pixels becomes the batch's input pixels).

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
        chosen = (target if batch_target is None
                  else batch_target([loaded.preprocess.plan(img) for _, img in chunk]))
        expl = api.explain(loaded.model, x, chosen, methods, layer or loaded.layer,
                           **(options or {}))
        for b, (path, img) in enumerate(chunk):
            view = np.asarray(loaded.preprocess.view(img))
            out_dir = out / _unique_stem(path, results)
            predictions = top_predictions(expl.outputs, b, loaded.class_names, top)
            item = report_item(expl, b, view, loaded.class_names, name=path.name,
                               predictions=predictions)
            results.append(ExplainedImage(path, out_dir, predictions, item))
            write_image_outputs(out_dir, view, expl, b, alpha, loaded.class_names,
                                target_panels(expl, b, chosen, loaded.class_names))
    return results, failed


def top_predictions(outputs: Any, b: int, class_names: Sequence[str], k: int
                    ) -> list[tuple[str, float]]:
    """Image ``b``'s ``k`` best answers: a classifier's most probable classes, a
    segmentation model's classes by their share of the pixels, a detector's best
    detections."""
    if isinstance(outputs, torch.Tensor) and outputs.dim() == 2:
        return _top(outputs[b].float().softmax(dim=0).cpu(), class_names, k)
    if isinstance(outputs, list):
        found = detections_of(outputs)[b]
        return [(class_names[int(label)], float(score)) for label, score in
                zip(found["labels"][:k], found["scores"][:k], strict=True)]
    predicted = segmentation_logits(outputs)[b].argmax(dim=0).flatten()
    share = torch.bincount(predicted, minlength=len(class_names)).float() / predicted.numel()
    return _top(share.cpu(), class_names, k)


def target_panels(expl: api.Explanation, b: int, target: Any, class_names: Sequence[str]
                  ) -> list[Panel]:
    """The title and drawn box of each of image ``b``'s maps, by the kind of target: the
    detections of a :class:`DetectedBoxesTarget` (only the image's own, not the batch's
    padding), the boxes of a :class:`BoxScoreTarget`, the classes of a
    :class:`SemanticSegmentationTarget`, else the target classes."""
    if isinstance(target, DetectedBoxesTarget):
        boxes, labels = confident_detections(expl.outputs, target.score_threshold,
                                             target.max_boxes)[b]
        return _box_panels(boxes, labels, class_names)
    if isinstance(target, BoxScoreTarget):
        boxes, labels = torch.as_tensor(target.boxes), torch.as_tensor(target.labels)
        return _box_panels(boxes if boxes.dim() == 2 else boxes[b],
                           labels if labels.dim() == 1 else labels[b], class_names)
    if isinstance(target, SemanticSegmentationTarget):
        return [(f"{class_names[int(c)]} in the region", None) for c in target.categories]
    if expl.targets is None:
        return [(f"target {k + 1}", None) for k in range(expl.scores.shape[1])]
    return [(class_names[int(c)], None) for c in expl.targets[b]]


def _box_panels(boxes: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str]
                ) -> list[Panel]:
    return [(f"box {k + 1}: {class_names[int(label)]}", tuple(box.tolist()))  # type: ignore[misc]
            for k, (box, label) in enumerate(zip(boxes, labels, strict=True))]


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
                        alpha: float, class_names: Sequence[str],
                        panels: Sequence[Panel] | None = None) -> None:
    """Write image ``b`` of ``expl`` into ``out_dir``: an overlay per method on ``view`` (the
    ``(H, W, 3)`` uint8 picture the model saw), ``grid.png`` and ``maps.npz``. ``panels``:
    the title and drawn box of each map to show (default: the first map, titled with its
    class); with more than one, the overlays are ``<method>-<k>.png``, one grid row each."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if panels is None:
        target = int(expl.targets[b, 0]) if expl.targets is not None else None
        panels = [(class_names[target] if target is not None else "custom target", None)]
    rows = []
    for k, (title, box) in enumerate(panels):
        shown = view if box is None else _with_box(view, box)
        row = [(shown, f"input: {title}")]
        for method in expl:
            blended = overlay(shown, expl[method][b, k], alpha)
            suffix = "" if len(panels) == 1 else f"-{k}"
            save_png(blended, out_dir / f"{_safe(method)}{suffix}.png")
            row.append((blended, method))
        rows.append(row)
    save_png(grid(rows), out_dir / "grid.png")
    arrays = {f"{m}": expl.numpy(m)[b] for m in expl}
    arrays |= {f"raw_{m}": expl.raw[m][b].cpu().numpy() for m in expl}
    targets = expl.targets[b].cpu().numpy() if expl.targets is not None else np.zeros(0)
    np.savez_compressed(out_dir / "maps.npz", **{_safe(k): v for k, v in arrays.items()},
                        targets=targets)


def _with_box(view: np.ndarray, box: Box) -> np.ndarray:
    """``view`` with the box's outline drawn in white."""
    image = Image.fromarray(view)
    ImageDraw.Draw(image).rectangle(box, outline=(255, 255, 255), width=2)
    return np.asarray(image)


def _safe(name: str) -> str:
    """A method name as a file name (``gradcam++`` → ``gradcampp``)."""
    return name.replace("+", "p")
