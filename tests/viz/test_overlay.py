"""Colormap, overlays, grids and PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camkit.viz import VIRIDIS, colorize, fit_text, grid, overlay, save_png

BOTTOM, TOP = (68, 1, 84), (253, 231, 37)  # viridis at 0 (dark purple) and 1 (yellow)


def test_colormap_endpoints_and_clipping() -> None:
    rgb = colorize(np.array([[0.0, 1.0, -3.0, 7.0, np.nan]]))
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 5, 3)
    assert [tuple(p) for p in rgb[0]] == [BOTTOM, TOP, BOTTOM, TOP, BOTTOM]


def test_colormap_interpolates_between_anchors() -> None:
    step = 1 / (len(VIRIDIS) - 1)
    rgb = colorize(np.array([[step, 1.5 * step]])).astype(int)
    np.testing.assert_array_equal(rgb[0, 0], VIRIDIS[1])
    np.testing.assert_allclose(rgb[0, 1], (VIRIDIS[1] + VIRIDIS[2]) / 2, atol=0.5)


def test_colormap_lightness_rises_monotonically() -> None:
    # Viridis' defining property; a mistyped anchor breaks it (uint8 rounding aside).
    luma_weights = np.array([0.2126, 0.7152, 0.0722])
    assert np.all(np.diff(VIRIDIS @ luma_weights) > 9)
    rgb = colorize(np.linspace(0, 1, 256)[None]).astype(float)[0]
    assert np.all(np.diff(rgb @ luma_weights) > -0.5)


def test_constant_maps_render() -> None:
    for value in (0.0, 0.3, 1.0):
        rgb = colorize(np.full((5, 7), value))
        assert rgb.shape == (5, 7, 3) and (rgb == rgb[0, 0]).all()


def test_tensor_maps_with_grad_and_leading_axes() -> None:
    heat = torch.ones(1, 1, 4, 4, requires_grad=True) * 0.5
    np.testing.assert_array_equal(colorize(heat), colorize(np.full((4, 4), 0.5)))
    with pytest.raises(ValueError, match="map"):
        colorize(torch.zeros(2, 4, 4))


def test_overlay_full_map_alpha_one_is_the_top_colour_in_rgb_order() -> None:
    image = np.zeros((6, 8, 3), np.uint8)
    out = overlay(image, np.ones((6, 8)), alpha=1.0)
    assert out.dtype == np.uint8 and out.shape == (6, 8, 3)
    assert (out == TOP).all()  # BGR would give (37, 231, 253)


def test_overlay_blends_and_keeps_the_image_at_alpha_zero() -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    image[..., 0] = 200
    np.testing.assert_array_equal(overlay(image, np.zeros((4, 4)), alpha=0.0), image)
    half = overlay(image, np.zeros((4, 4)), alpha=0.5).astype(int)
    np.testing.assert_allclose(half[0, 0], (np.array([200, 0, 0]) + BOTTOM) / 2, atol=0.6)


def test_overlay_resizes_the_map_to_the_image() -> None:
    heat = torch.zeros(7, 7)
    heat[:, :3] = 1.0  # left side hot
    out = overlay(Image.new("L", (224, 112), 0), heat, alpha=1.0)
    assert out.shape == (112, 224, 3)
    assert tuple(out[56, 5]) == TOP and tuple(out[56, 218]) == BOTTOM


def test_overlay_rejects_bad_input() -> None:
    with pytest.raises(TypeError, match="uint8"):
        overlay(np.zeros((4, 4, 3), np.float32), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="alpha"):
        overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4)), alpha=1.5)


def _panels(title: str) -> list[list[tuple[np.ndarray, str]]]:
    tile = np.full((32, 48, 3), 90, np.uint8)
    return [[(tile, title)] * 3 for _ in range(2)]


def test_grid_size_with_two_rows_of_three() -> None:
    pad = 4
    short = grid(_panels("cam"), pad=pad)
    assert short.mode == "RGB"
    assert short.width == 3 * 48 + 4 * pad
    title_h = (short.height - 2 * 32 - 3 * pad) / 2
    assert title_h == int(title_h) and title_h > pad
    # A panel's pixels sit below its title.
    assert short.getpixel((pad, pad + int(title_h))) == (90, 90, 90)


def test_long_titles_are_cut_without_changing_the_layout() -> None:
    short = grid(_panels("cam"))
    long = grid(_panels("gradcam++ of class golden retriever, layer features.28 " * 3))
    assert long.size == short.size
    # Nothing is drawn in the white gaps between columns.
    pixels = np.asarray(long)
    for gap in (4 + 48, 4 + 2 * 48 + 4):
        assert (pixels[:, gap : gap + 4] == 255).all()


def test_fit_text_adds_an_ellipsis_only_when_needed() -> None:
    from PIL import ImageDraw, ImageFont

    font, draw = ImageFont.load_default(), ImageDraw.Draw(Image.new("RGB", (1, 1)))
    assert fit_text("cam", 48, draw, font) == "cam"
    cut = fit_text("a very long title indeed", 48, draw, font)
    assert cut.endswith("...") and draw.textlength(cut, font=font) <= 48


def test_ragged_rows_and_save_png(tmp_path: Path) -> None:
    small = np.zeros((10, 10, 3), np.uint8)
    picture = grid([[(small, "a")], [(small, "b"), (Image.new("RGB", (20, 5)), "c")]])
    assert picture.width == 2 * 20 + 3 * 4
    path = save_png(picture, tmp_path / "out" / "grid.png")
    with Image.open(path) as back:
        assert back.format == "PNG"
        np.testing.assert_array_equal(np.asarray(back), np.asarray(picture))
    np.testing.assert_array_equal(
        np.asarray(Image.open(save_png(small, tmp_path / "s.png"))), small
    )
