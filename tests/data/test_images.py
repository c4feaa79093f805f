"""Image loading (every pixel mode, EXIF orientation, clear errors) and preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from camkit.data.images import IMAGENET_MEAN, IMAGENET_STD, Preprocess, ResizePlan, load_image

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _save(img: Image.Image, path: Path, **kwargs: object) -> Path:
    img.save(path, **kwargs)
    return path


def _pixel(path: Path) -> tuple[int, ...]:
    img = load_image(path)
    assert img.mode == "RGB"
    assert img.size == (3, 2)
    return img.getpixel((0, 0))


@pytest.mark.parametrize(
    ("mode", "value", "suffix", "expected"),
    [
        ("L", 77, ".png", (77, 77, 77)),
        ("1", 1, ".png", (255, 255, 255)),
        ("LA", (77, 255), ".png", (77, 77, 77)),
        ("LA", (0, 0), ".png", (255, 255, 255)),  # transparent: white, not black
        ("RGBA", (255, 0, 0, 0), ".png", (255, 255, 255)),
        ("RGBA", (255, 0, 0, 255), ".png", RED),
        ("RGBA", (0, 0, 0, 128), ".png", (127, 127, 127)),  # half over white
        ("CMYK", (0, 255, 255, 0), ".tif", RED),
        ("I;16", 65535, ".png", (255, 255, 255)),
        ("I;16", 32896, ".png", (128, 128, 128)),  # 128 * 257: scaled, not clipped
        ("I", 514, ".tif", (2, 2, 2)),
        ("F", 0.5, ".tif", (128, 128, 128)),
    ],
)
def test_every_mode_becomes_rgb(
    tmp_path: Path, mode: str, value: object, suffix: str, expected: tuple[int, ...]
) -> None:
    path = _save(Image.new(mode, (3, 2), value), tmp_path / f"img{suffix}")
    assert _pixel(path) == expected


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (3, 2), 1)
    img.putpalette([0, 0, 0, *RED, *BLUE] + [0] * 759)
    assert _pixel(_save(img, tmp_path / "p.png")) == RED
    assert _pixel(_save(img, tmp_path / "pt.png", transparency=1)) == (255, 255, 255)


def test_exif_orientation_6_is_rotated_upright(tmp_path: Path) -> None:
    # Stored 40 wide x 20 high, left half red, right half blue; tag 6 = rotate 90° clockwise
    # to display, so the upright image is 20 x 40 with red on top.
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = RED
    pixels[:, 20:] = BLUE
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(Image.fromarray(pixels), tmp_path / "rot.jpg", exif=exif, quality=95)
    img = np.asarray(load_image(path)).astype(int)
    assert img.shape == (40, 20, 3)
    assert np.abs(img[5, 10] - RED).max() < 30
    assert np.abs(img[35, 10] - BLUE).max() < 30


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(path)


@pytest.mark.parametrize("content", [b"just some text\n", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_non_image_and_truncated_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "notes.png"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="notes.png"):
        load_image(path)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="directory"):
        load_image(tmp_path)


def _photo(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize(("width", "height"), [(300, 200), (200, 333), (224, 224)])
def test_crop_preprocess_matches_torchvision(width: int, height: int) -> None:
    img = _photo(width, height)
    reference = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )(img)
    ours = Preprocess(224, crop_fraction=0.875)(img)
    assert ours.shape == (3, 224, 224) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_plain_resize_preprocess_with_custom_normalisation() -> None:
    img = _photo(300, 200)
    out = Preprocess(64, mean=(0.5,) * 3, std=(0.5,) * 3, crop_fraction=None)(img)
    expected = np.asarray(img.resize((64, 64), Image.Resampling.BILINEAR)) / 127.5 - 1
    torch.testing.assert_close(out, torch.tensor(expected).permute(2, 0, 1).float())


@pytest.mark.parametrize("crop_fraction", [None, 0.875])
def test_box_and_mask_follow_the_image(crop_fraction: float | None) -> None:
    mask = np.zeros((200, 300), bool)
    mask[40:160, 150:280] = True  # rows y, columns x
    plan = ResizePlan.make(300, 200, 112, crop_fraction)
    small = plan.mask(mask)
    ys, xs = np.nonzero(small)
    x1, y1, x2, y2 = plan.box((150, 40, 280, 160))
    assert small.shape == (112, 112)
    assert abs(xs.min() - x1) <= 1 and abs(xs.max() + 1 - x2) <= 1
    assert abs(ys.min() - y1) <= 1 and abs(ys.max() + 1 - y2) <= 1


def test_box_is_clipped_to_the_crop() -> None:
    plan = ResizePlan.make(400, 200, 100, 0.5)  # resized to 400 x 200, crop x 150..250
    assert plan.box((0, 0, 400, 200)) == (0.0, 0.0, 100.0, 100.0)
    assert plan.box((100, 50, 200, 150)) == (0.0, 0.0, 50.0, 100.0)
