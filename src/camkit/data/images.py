"""Image files to RGB, and RGB images to the normalised tensors a network expects.

The geometry of preprocessing (resize, centre crop) lives in :class:`ResizePlan`, so an image,
its bounding boxes and its masks all go through exactly the same transform.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

PathLike = str | os.PathLike[str]
Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels, x2/y2 exclusive

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_WHITE = (255, 255, 255)


def load_image(path: PathLike) -> Image.Image:
    """Read an image file as an RGB :class:`PIL.Image.Image`, upright.

    The EXIF orientation tag is applied (a phone photo stored sideways comes back upright),
    and every pixel mode is converted to RGB by :func:`to_rgb`. Multi-frame files (GIF, TIFF)
    give their first frame.

    Raises:
        FileNotFoundError: nothing exists at ``path``.
        ValueError: ``path`` is a directory, or a file Pillow cannot decode (not an image,
            truncated, unreadable, or a decompression bomb: more pixels than
            ``PIL.Image.MAX_IMAGE_PIXELS`` allows); the message names the path.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no image file at {path!r}")
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a directory, not an image file")
    try:
        with Image.open(path) as img:
            img.load()
            upright = ImageOps.exif_transpose(img)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read {path!r} as an image: {err}") from err
    return to_rgb(upright)


def to_rgb(img: Image.Image, background: tuple[int, int, int] = _WHITE) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB.

    - Transparency (RGBA, LA, PA, and P/L/RGB with a ``transparency`` entry) is composited
      on ``background`` (white by default), so transparent pixels do not turn black.
    - 16-bit and 32-bit integer grayscale (``I;16*``, ``I``) are scaled from 0..65535 to
      0..255 (values outside are clipped); float grayscale (``F``) is taken to lie in [0, 1].
    - Everything else (L, 1, P, CMYK, YCbCr, ...) uses Pillow's conversion.
    """
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I"):
        scaled = np.clip(np.asarray(img, dtype=np.float64) / 257.0, 0, 255)
        return Image.fromarray(np.rint(scaled).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        scaled = np.clip(np.nan_to_num(np.asarray(img, dtype=np.float64)), 0, 1) * 255
        return Image.fromarray(np.rint(scaled).astype(np.uint8)).convert("RGB")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        canvas = Image.new("RGBA", img.size, (*background, 255))
        return Image.alpha_composite(canvas, img.convert("RGBA")).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as err:
        raise ValueError(f"cannot convert an image of mode {img.mode!r} to RGB: {err}") from err


@dataclass(frozen=True)
class ResizePlan:
    """How one ``width × height`` image maps onto a ``size × size`` network input.

    The image is resized to ``resized`` (width, height), then the window starting at
    ``(left, top)`` of ``size × size`` pixels is kept. Build one with :meth:`make`.
    """

    size: int
    resized: tuple[int, int]
    left: int
    top: int
    scale: tuple[float, float]  # resized / original, per axis (x, y)

    @classmethod
    def make(
        cls, width: int, height: int, size: int, crop_fraction: float | None = None
    ) -> ResizePlan:
        """The plan for a ``width × height`` image.

        ``crop_fraction=None``: plain resize to ``size × size`` (the whole image is kept, its
        aspect ratio is not). ``crop_fraction=f``: torchvision's ``Resize(round(size / f))``
        then ``CenterCrop(size)`` (the shorter side becomes ``round(size / f)``, aspect ratio
        kept, borders cut); ``f = 0.875`` is the classic 256 → 224.
        """
        if crop_fraction is None:
            new_w, new_h = size, size
        else:
            if not 0 < crop_fraction <= 1:
                raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
            short = round(size / crop_fraction)
            if width <= height:
                new_w, new_h = short, int(short * height / width)
            else:
                new_w, new_h = int(short * width / height), short
        left = int(round((new_w - size) / 2.0))
        top = int(round((new_h - size) / 2.0))
        return cls(size, (new_w, new_h), left, top, (new_w / width, new_h / height))

    @property
    def window(self) -> tuple[int, int, int, int]:
        """The crop window in resized coordinates, as Pillow's ``(left, top, right, bottom)``."""
        return (self.left, self.top, self.left + self.size, self.top + self.size)

    def image(
        self, img: Image.Image, resample: Image.Resampling = Image.Resampling.BILINEAR
    ) -> Image.Image:
        """The ``size × size`` image the network sees."""
        return img.resize(self.resized, resample).crop(self.window)

    def box(self, box: Box) -> Box:
        """A box ``(x1, y1, x2, y2)`` in original pixels → network-input pixels, clipped."""
        sx, sy = self.scale
        shifted = np.asarray(box, dtype=np.float64) * (sx, sy, sx, sy)
        shifted -= (self.left, self.top, self.left, self.top)
        x1, y1, x2, y2 = np.clip(shifted, 0, self.size).tolist()
        return (x1, y1, x2, y2)

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """A boolean ``(H, W)`` mask → ``(size, size)`` boolean mask (area-weighted resize,
        then a 0.5 threshold)."""
        grey = Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255)
        return np.asarray(self.image(grey)) >= 128


def to_tensor(
    img: Image.Image, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Tensor:
    """An RGB image → float32 ``(3, H, W)`` tensor ``(pixel / 255 - mean) / std``."""
    pixels = torch.from_numpy(np.asarray(to_rgb(img), dtype=np.float32) / 255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return ((pixels.permute(2, 0, 1) - m) / s).contiguous()


@dataclass(frozen=True)
class Preprocess:
    """A callable PIL image → normalised float32 ``(3, size, size)`` tensor.

    ``crop_fraction`` chooses the geometry (see :meth:`ResizePlan.make`): a fraction gives
    resize-then-centre-crop (the evaluation recipe of most ImageNet models; borders are cut),
    ``None`` a plain resize (the whole image is seen, stretched). Use
    ``dataclasses.replace(p, crop_fraction=None)`` to switch. :meth:`view` gives the
    ``size × size`` RGB image the tensor was made from, to draw explanations on.
    """

    size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_fraction: float | None = 0.875
    resample: Image.Resampling = Image.Resampling.BILINEAR

    def plan(self, img: Image.Image) -> ResizePlan:
        """The geometric transform applied to ``img``."""
        return ResizePlan.make(img.width, img.height, self.size, self.crop_fraction)

    def view(self, img: Image.Image) -> Image.Image:
        """The resized (and cropped) RGB image the network sees."""
        return self.plan(img).image(to_rgb(img), self.resample)

    def __call__(self, img: Image.Image) -> Tensor:
        return to_tensor(self.view(img), self.mean, self.std)
