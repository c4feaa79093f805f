"""PNG figures of report items, for papers and slides: blended by :func:`camkit.viz.overlay`
and laid out by :func:`camkit.viz.grid`."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from camkit.viz.overlay import Panel, grid, overlay, save_png
from camkit.viz.report.model import ReportItem


def grid_rows(item: ReportItem, alpha: float = 0.5) -> list[list[Panel]]:
    """The rows of ``item``'s PNG figure (for :func:`camkit.viz.grid`): per target, the input
    and each method's overlay; then, when it has any, the item's gallery pictures."""
    rows = [[(item.image, f"{item.name}: {target.label}"),
             *((overlay(item.image, maps[k], alpha), m) for m, maps in item.maps.items())]
            for k, target in enumerate(item.targets)]
    return rows + ([list(item.gallery)] if item.gallery else [])


def save_grid(items: Sequence[ReportItem], path: str | os.PathLike[str], alpha: float = 0.5
              ) -> Path:
    """One PNG figure of ``items`` (the :func:`grid_rows` of each, top to bottom)."""
    return save_png(grid([row for item in items for row in grid_rows(item, alpha)]), path)


def save_grids(items: Sequence[ReportItem], directory: Path, alpha: float = 0.5) -> list[Path]:
    """One PNG figure per item, ``directory/<name>.png``, the names made file-safe and
    unique."""
    stems = unique_stems([item.name for item in items])
    return [save_grid([item], directory / f"{stem}.png", alpha)
            for item, stem in zip(items, stems, strict=True)]


def unique_stems(names: Sequence[str]) -> list[str]:
    """File-safe stems of ``names``; a repeated stem gets ``-2``, ``-3``, ..."""
    stems: list[str] = []
    for name in names:
        base = re.sub(r"[^\w.-]+", "_", Path(name).stem).strip("._") or "image"
        stem, n = base, 1
        while stem in stems:
            n += 1
            stem = f"{base}-{n}"
        stems.append(stem)
    return stems
