"""IDX reading and the cluttered canvas data set, on tiny IDX files written here."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from camkit.data.canvas import CanvasDataset, fashion_mnist, read_idx


def write_idx(path: Path, array: np.ndarray, code: int, compress: bool = False) -> Path:
    """The IDX layout written byte by byte: 0, 0, type code, rank, big-endian sizes, data."""
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">i", s) for s in array.shape)
    big = array.astype(array.dtype.newbyteorder(">")).tobytes()
    data = header + big
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def items(n: int = 6, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Bright squares (of side 4 + i % 3) centred on black 8 × 8 tiles."""
    out = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n):
        side = 4 + i % 3
        start = (size - side) // 2
        out[i, start:start + side, start:start + side] = 100 + 20 * i
    return out, np.arange(n) % 3


@pytest.mark.parametrize(("dtype", "code"), [(np.uint8, 0x08), (np.int32, 0x0C),
                                             (np.float32, 0x0D)])
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path: Path, dtype: type, code: int, compress: bool) -> None:
    array = (np.arange(24).reshape(2, 3, 4) * 7 - 20).astype(dtype)
    if dtype is np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    got = read_idx(write_idx(tmp_path / "a.idx", array, code, compress))
    assert got.dtype == np.dtype(dtype) and np.array_equal(got, array)


def test_read_idx_refuses_damaged_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "missing.idx")
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x08\x01")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad.idx")
    path = write_idx(tmp_path / "short.idx", np.zeros((3, 2), np.uint8), 0x08)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match="promises shape"):
        read_idx(path)


def test_fashion_mnist_reads_the_four_files(tmp_path: Path) -> None:
    images, labels = items()
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, 0x08, True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels.astype(np.uint8), 0x08, True)
    got_images, got_labels = fashion_mnist("test", tmp_path)
    assert np.array_equal(got_images, images) and got_labels.tolist() == labels.tolist()
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist("train", tmp_path)
    with pytest.raises(ValueError, match="split"):
        fashion_mnist("val", tmp_path)


def test_canvas_box_and_mask_are_exact() -> None:
    images, labels = items()
    data = CanvasDataset(images, labels, canvas_size=20, clutter=3, fragment_size=(2, 4),
                         noise=0.02, mask_threshold=0.1, seed=4)
    for i in range(len(data)):
        image, label, box, mask = data[i]
        assert image.shape == (1, 20, 20) and image.dtype == torch.float32
        assert int(label) == labels[i] and mask.dtype == torch.bool
        item = images[i] / 255
        visible = item > 0.1
        # the mask is the item's bright pixels, pasted at one offset where the item fits
        offsets = [(y, x) for y in range(13) for x in range(13)
                   if np.array_equal(mask.numpy()[y:y + 8, x:x + 8], visible)
                   and int(mask.sum()) == int(visible.sum())]
        assert len(offsets) >= 1
        y, x = offsets[0]
        np.testing.assert_allclose(image[0].numpy()[y:y + 8, x:x + 8][visible],
                                   item[visible], atol=1e-6)
        rows = [r for r in range(20) if mask[r].any()]
        cols = [c for c in range(20) if mask[:, c].any()]
        assert box.tolist() == [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
        assert float(image.min()) >= 0 and float(image.max()) <= 1


def test_canvases_are_deterministic_by_seed_and_item() -> None:
    images, labels = items()
    a = CanvasDataset(images, labels, canvas_size=16, seed=1, fragment_size=(2, 3))
    b = CanvasDataset(images, labels, canvas_size=16, seed=1, fragment_size=(2, 3))
    c = CanvasDataset(images, labels, canvas_size=16, seed=2, fragment_size=(2, 3))
    assert all(torch.equal(x, y) for x, y in zip(a[3], b[3], strict=True))
    assert not torch.equal(a[3][0], c[3][0])
    stacked = a.stack([3, 1])
    assert torch.equal(stacked[0][0], a[3][0]) and stacked[1].tolist() == [labels[3], labels[1]]
    assert [t.shape for t in a.stack()] == [(6, 1, 16, 16), (6,), (6, 4), (6, 16, 16)]


def test_scaled_items_and_rgb_canvases() -> None:
    images, labels = items()
    data = CanvasDataset(images, labels, canvas_size=24, scale=(1.5, 2.0), channels=3,
                         fragment_size=(2, 3))
    image, _, box, mask = data[0]
    assert image.shape == (3, 24, 24) and torch.equal(image[0], image[2])
    assert (box[2] - box[0]) > 4 and int(mask.sum()) > 16  # a 4 × 4 square, enlarged


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"canvas_size": 6}, "must fit the canvas"),
    ({"scale": (2.0, 1.0)}, "positive and ordered"),
    ({"fragment_size": (5, 12)}, "fragment_size"),
    ({"channels": 2}, "channels must be 1 or 3"),
])
def test_bad_settings_are_refused(kwargs: dict, message: str) -> None:
    images, labels = items()
    with pytest.raises(ValueError, match=message):
        CanvasDataset(images, labels, **{"fragment_size": (2, 3), **kwargs})
    with pytest.raises(ValueError, match="uint8"):
        CanvasDataset(images.astype(np.float32), labels, fragment_size=(2, 3))
    with pytest.raises(IndexError):
        CanvasDataset(images, labels, fragment_size=(2, 3))[6]
