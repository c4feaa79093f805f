"""Pictures as ``data:`` URIs, so the report is one file that fetches nothing.

A map goes in as a viridis palette PNG (256 levels), about a third the size of an RGB
overlay; the browser lays it over the input image, embedded once per image.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from camkit.viz.overlay import colorize

_PALETTE = colorize(np.linspace(0.0, 1.0, 256)[None])[0]  # (256, 3) uint8, viridis


def png_uri(picture: Image.Image | np.ndarray) -> str:
    """``picture`` (PIL, or ``(H, W, 3)`` uint8) as a base64 PNG ``data:`` URI."""
    if isinstance(picture, np.ndarray):
        picture = Image.fromarray(picture)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def map_uri(map_hw: np.ndarray) -> str:
    """A ``(h, w)`` map in [0, 1] as a viridis palette PNG URI (values outside are clipped)."""
    levels = np.rint(np.clip(map_hw, 0.0, 1.0) * 255).astype(np.uint8)
    picture = Image.fromarray(levels)
    picture.putpalette(_PALETTE.tobytes())
    return png_uri(picture)


def colorbar_uri() -> str:
    """The colour scale, low to high, as a ``(1, 256)`` palette PNG URI."""
    return map_uri(np.linspace(0.0, 1.0, 256)[None])
