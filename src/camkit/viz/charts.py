"""A small line chart as an RGB picture, for reports that must not fetch a plotting library:
similarity curves of the randomisation checks, one point per step."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from camkit.viz.overlay import fit_text

COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189))
GREY, INK = (160, 160, 160), (40, 40, 40)


def line_chart(series: Mapping[str, Sequence[float] | np.ndarray], *, low: float = -1.0,
               high: float = 1.0, threshold: float | None = None, title: str = "",
               size: tuple[int, int] = (360, 220)) -> np.ndarray:
    """``(H, W, 3)`` uint8: each series (name → values at steps 0, 1, ...) as a line with dots
    on the y range ``[low, high]``, a dashed line at ``threshold``, a legend and ``title``.
    Non-finite values leave a gap."""
    if not series:
        raise ValueError("line_chart needs at least one series")
    steps = max(len(v) for v in series.values())
    width, height = size
    font = ImageFont.load_default()
    text_h = int(font.getbbox("Agjy")[3]) + 2
    left, right, top = 34, 8, text_h + 6
    bottom = height - (text_h * len(series) + 18)
    canvas = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), fit_text(title, width - 8, draw, font), fill=INK, font=font)

    right_edge = width - right

    def at(step: int, value: float) -> tuple[float, float]:
        x = left + (right_edge - left) * (step / max(1, steps - 1))
        y = bottom - (bottom - top) * (value - low) / (high - low)
        return x, y

    for tick in (low, (low + high) / 2, high):
        y = at(0, tick)[1]
        draw.line([(left, y), (right_edge, y)], fill=(230, 230, 230))
        draw.text((2, y - text_h / 2), f"{tick:g}", fill=INK, font=font)
    if threshold is not None:
        y = at(0, threshold)[1]
        for x in range(left, right_edge, 8):
            draw.line([(x, y), (min(x + 4, right_edge), y)], fill=GREY)
    draw.text((left, bottom + 3), "step 0", fill=INK, font=font)
    draw.text((right_edge - draw.textlength(str(steps - 1), font=font), bottom + 3),
              str(steps - 1), fill=INK, font=font)
    for i, (name, values) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        points = [at(s, float(v)) if math.isfinite(float(v)) else None
                  for s, v in enumerate(values)]
        for a, b in zip(points, points[1:], strict=False):
            if a is not None and b is not None:
                draw.line([a, b], fill=colour, width=2)
        for p in points:
            if p is not None:
                draw.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=colour)
        y = bottom + 18 + i * text_h
        draw.line([(left, y + text_h / 2), (left + 14, y + text_h / 2)], fill=colour, width=2)
        draw.text((left + 18, y), fit_text(name, width - left - 22, draw, font), fill=INK,
                  font=font)
    return np.asarray(canvas)
