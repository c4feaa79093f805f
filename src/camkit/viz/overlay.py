"""Maps to pictures: a perceptual colormap, overlays on images, titled grids, PNG files.

Everything here works on uint8 RGB arrays ``(H, W, 3)`` and maps in [0, 1] (numpy arrays or
torch tensors, any device); nothing needs matplotlib.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from camkit.data.images import to_rgb

# Viridis (van der Walt and Smith, matplotlib's default; perceptually uniform, readable in
# greyscale and by colour-blind viewers) at 16 evenly spaced anchors: entries 0, 17, ..., 255
# of matplotlib's 256-entry table, ×255 and rounded. Linear interpolation between them stays
# within 7/255 of the full table.
VIRIDIS = np.array(
    [
        (68, 1, 84),
        (72, 26, 108),
        (71, 47, 125),
        (65, 68, 135),
        (57, 86, 140),
        (49, 104, 142),
        (42, 120, 142),
        (35, 136, 142),
        (31, 152, 139),
        (34, 168, 132),
        (53, 183, 121),
        (84, 197, 104),
        (122, 209, 81),
        (165, 219, 54),
        (210, 226, 27),
        (253, 231, 37),
    ],
    dtype=np.float64,
)

ImageLike = Image.Image | np.ndarray
Panel = tuple[ImageLike, str]


def as_map(map_hw: object) -> np.ndarray:
    """A map as a float64 ``(H, W)`` numpy array clipped to [0, 1] (NaN → 0).

    Accepts numpy arrays and torch tensors (detached and moved to the CPU) with leading
    singleton axes, e.g. ``(1, 1, H, W)``.
    """
    if hasattr(map_hw, "detach"):
        map_hw = map_hw.detach().float().cpu().numpy()  # type: ignore[attr-defined]
    arr = np.asarray(map_hw, dtype=np.float64)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"expected an (H, W) map, got shape {arr.shape}")
    return np.clip(np.nan_to_num(arr, nan=0.0), 0.0, 1.0)


def as_rgb_array(image: ImageLike) -> np.ndarray:
    """A PIL image or uint8 array ``(H, W)``/``(H, W, 3)`` as a uint8 ``(H, W, 3)`` array."""
    if isinstance(image, Image.Image):
        return np.asarray(to_rgb(image))
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got dtype {arr.dtype}; colorize maps first")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {arr.shape}")
    return arr


def colorize(map_hw: object) -> np.ndarray:
    """A map in [0, 1] → viridis uint8 RGB ``(H, W, 3)``: 0 is dark purple, 1 yellow."""
    values = as_map(map_hw) * (len(VIRIDIS) - 1)
    low = np.minimum(values.astype(np.int64), len(VIRIDIS) - 2)
    frac = (values - low)[..., None]
    rgb = VIRIDIS[low] * (1 - frac) + VIRIDIS[low + 1] * frac
    return np.rint(rgb).astype(np.uint8)


def resize_map(map_hw: object, height: int, width: int) -> np.ndarray:
    """A map resized bilinearly to ``(height, width)``, still in [0, 1]."""
    arr = as_map(map_hw)
    if arr.shape == (height, width):
        return arr
    resized = Image.fromarray(arr.astype(np.float32)).resize(  # mode "F"
        (width, height), Image.Resampling.BILINEAR
    )
    return np.clip(np.asarray(resized, dtype=np.float64), 0.0, 1.0)


def overlay(image: ImageLike, map_hw: object, alpha: float = 0.5) -> np.ndarray:
    """Blend the colorized map over an RGB image: ``(1 - alpha) * image + alpha * colour``.

    The map is resized to the image when their sizes differ. Returns uint8 ``(H, W, 3)``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = as_rgb_array(image)
    colour = colorize(resize_map(map_hw, rgb.shape[0], rgb.shape[1]))
    blended = (1.0 - alpha) * rgb + alpha * colour.astype(np.float64)
    return np.rint(blended).astype(np.uint8)


def fit_text(text: str, width: int, draw: ImageDraw.ImageDraw,
             font: ImageFont.BaseImageFont | None) -> str:
    """``text``, cut and ended with ``...`` when it is wider than ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..." if text else ""


def grid(
    panels: Sequence[Sequence[Panel]],
    pad: int = 4,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Lay out ``panels[row][col] = (image, title)`` as a titled grid.

    Every cell is as large as the largest panel (smaller ones sit at its top left) with its
    title above, in Pillow's default font; titles wider than the cell are cut with an
    ellipsis, so the layout depends only on the panel sizes. Rows may have different
    lengths. Images are PIL images or uint8 arrays (see :func:`as_rgb_array`).
    """
    rows = [[(as_rgb_array(img), title) for img, title in row] for row in panels]
    cells = [img for row in rows for img, _ in row]
    if not cells:
        raise ValueError("grid() needs at least one panel")
    cell_h = max(img.shape[0] for img in cells)
    cell_w = max(img.shape[1] for img in cells)
    font = ImageFont.load_default()
    title_h = int(font.getbbox("Agjy|([")[3]) + pad
    n_cols = max(len(row) for row in rows)
    width = n_cols * cell_w + (n_cols + 1) * pad
    height = len(rows) * (title_h + cell_h) + (len(rows) + 1) * pad
    canvas = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        y = pad + r * (title_h + cell_h + pad)
        for c, (img, title) in enumerate(row):
            x = pad + c * (cell_w + pad)
            draw.text((x, y), fit_text(title, cell_w, draw, font), fill=(0, 0, 0), font=font)
            canvas.paste(Image.fromarray(img), (x, y + title_h))
    return canvas


def save_png(image: ImageLike, path: str | os.PathLike[str]) -> Path:
    """Write an image (PIL or uint8 array) as PNG, creating parent folders; returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    picture = image if isinstance(image, Image.Image) else Image.fromarray(as_rgb_array(image))
    picture.save(out, format="PNG")
    return out
