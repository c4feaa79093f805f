"""Pictures of explanations: colormap, overlays, titled grids and PNG files."""

from camkit.viz.overlay import (
    VIRIDIS,
    as_map,
    as_rgb_array,
    colorize,
    fit_text,
    grid,
    overlay,
    resize_map,
    save_png,
)

__all__ = [
    "VIRIDIS",
    "as_map",
    "as_rgb_array",
    "colorize",
    "fit_text",
    "grid",
    "overlay",
    "resize_map",
    "save_png",
]
