"""Multi-label loaders (COCO, NIH CSV, VinDr CSV, folders), skipping bad images, and the
synthetic data set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from camkit.data.multilabel import (
    ImageLoadError,
    MultiLabelImages,
    Skipped,
    collate_skipping,
    dataset_from_spec,
)
from camkit.data.synthetic import SyntheticMultiLabel
from tests.memory_fixtures import single_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


def write_images(folder: Path, names: list[str], size: tuple[int, int] = (6, 5)) -> None:
    """Valid RGB/grey images for ``names``, except ``bad*`` (corrupt bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        if name.startswith("bad"):
            (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
        else:
            mode = "L" if i % 2 else "RGB"  # a grey image must come out as RGB
            Image.new(mode, size, color=40 * i if mode == "L" else (10 * i, 20, 30)).save(
                folder / name)


@pytest.fixture
def coco(tmp_path: Path) -> tuple[Path, Path]:
    write_images(tmp_path / "img", ["a.png", "b.png", "bad.png", "e.png"])
    annotations = {
        "images": [{"id": 10, "file_name": "a.png"}, {"id": 11, "file_name": "b.png"},
                   {"id": 12, "file_name": "bad.png"}, {"id": 13, "file_name": "missing.png"},
                   {"id": 14, "file_name": "e.png"}],
        "categories": [{"id": 7, "name": "dog"}, {"id": 1, "name": "person"},
                       {"id": 3, "name": "car"}],
        "annotations": [
            {"image_id": 10, "category_id": 1, "bbox": [1, 2, 3, 4], "iscrowd": 0},
            {"image_id": 10, "category_id": 7, "bbox": [0, 0, 2, 2], "iscrowd": 0},
            {"image_id": 10, "category_id": 1, "bbox": [2, 2, 1, 1], "iscrowd": 1},
            {"image_id": 11, "category_id": 3, "bbox": [0, 1, 2, 3], "iscrowd": 0},
            {"image_id": 12, "category_id": 3, "bbox": [0, 1, 2, 3], "iscrowd": 0},
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(annotations))
    return path, tmp_path / "img"


def test_coco_labels_boxes_and_skipping(coco: tuple[Path, Path]) -> None:
    data = MultiLabelImages.from_coco(*coco)
    assert data.class_names == ["person", "car", "dog"]  # category ids 1, 3, 7
    assert len(data) == 4  # the missing image is left out ...
    assert data.skipped == [Skipped(str(coco[1] / "missing.png"), "missing file")]  # ... and said
    image, labels = data[0]
    assert image.shape == (3, 5, 6) and image.dtype == torch.float32 and image.max() <= 1
    assert labels.tolist() == [1.0, 0.0, 1.0]
    assert data.boxes[0].tolist()[0] == [0, 1, 2, 4, 6]  # person, xywh → xyxy
    assert len(data.boxes[0]) == 3
    assert data[1][1].tolist() == [0.0, 1.0, 0.0]
    assert data[1][0].shape[0] == 3  # grey → RGB
    assert data[3][1].tolist() == [0.0, 0.0, 0.0]  # no annotations: all negative
    bad = data[2]
    assert isinstance(bad, Skipped) and bad.path.endswith("bad.png") and bad.reason
    assert data.skipped[-1] == bad
    no_crowd = MultiLabelImages.from_coco(*coco, include_crowd=False)
    assert len(no_crowd.boxes[0]) == 2


def test_coco_on_error_raise(coco: tuple[Path, Path]) -> None:
    with pytest.raises(FileNotFoundError, match="1 of 5 images are missing"):
        MultiLabelImages.from_coco(*coco, on_error="raise")
    (coco[1] / "missing.png").write_bytes((coco[1] / "a.png").read_bytes())
    data = MultiLabelImages.from_coco(*coco, on_error="raise")
    with pytest.raises(ImageLoadError, match="bad.png"):
        data[2]


def test_coco_refuses_other_json(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="not a COCO instances file"):
        MultiLabelImages.from_coco(tmp_path / "x.json", tmp_path)
    (tmp_path / "z.json").write_text(json.dumps({
        "images": [], "categories": [], "annotations": [{"id": 5, "image_id": 1}]}))
    with pytest.raises(ValueError, match="annotation 5 refers to an image or category"):
        MultiLabelImages.from_coco(tmp_path / "z.json", tmp_path)
    (tmp_path / "y.json").write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        MultiLabelImages.from_coco(tmp_path / "y.json", tmp_path)


def test_nih_style_csv(tmp_path: Path) -> None:
    write_images(tmp_path / "img", ["1.png", "2.png", "3.png", "bad.png"])
    (tmp_path / "Data_Entry_2017.csv").write_text(
        "Image Index,Finding Labels,Patient ID\n"
        "1.png,Effusion|Atelectasis,1\n2.png,No Finding,2\n3.png,Effusion,3\n"
        "bad.png,Mass,4\nmissing.png,Mass,5\n")
    data = MultiLabelImages.from_csv(tmp_path / "Data_Entry_2017.csv", tmp_path / "img")
    assert data.class_names == ["Atelectasis", "Effusion", "Mass"]
    assert data.labels.tolist() == [[1, 1, 0], [0, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert [s.reason for s in data.skipped] == ["missing file"]
    assert isinstance(data[3], Skipped)
    with pytest.raises(ValueError, match="not in class_names"):
        MultiLabelImages.from_csv(tmp_path / "Data_Entry_2017.csv", tmp_path / "img",
                                  class_names=["Effusion"])
    with pytest.raises(ValueError, match="lacks the column"):
        MultiLabelImages.from_csv(tmp_path / "Data_Entry_2017.csv", tmp_path / "img",
                                  labels_column="Labels")


def test_vindr_style_csv_aggregates_findings_and_keeps_boxes(tmp_path: Path) -> None:
    write_images(tmp_path / "img", ["a.png", "b.png", "c.png"])
    (tmp_path / "train.csv").write_text(
        "image_id,rad_id,class_name,class_id,x_min,y_min,x_max,y_max\n"
        "a,R1,Aortic enlargement,0,1,2,3,4\n"
        "a,R2,Cardiomegaly,3,0,0,5,5\n"
        "b,R1,No finding,14,,,,\n"
        "c,R1,Cardiomegaly,3,1,1,2,2\n"
        "c,R2,Cardiomegaly,3,1,1,3,3\n"
        "d,R3,Cardiomegaly,3,1,1,3,3\n")
    data = MultiLabelImages.from_vindr(tmp_path / "train.csv", tmp_path / "img")
    assert data.class_names == ["Aortic enlargement", "Cardiomegaly"]
    assert data.labels.tolist() == [[1, 1], [0, 0], [0, 1]]
    assert data.boxes[0].tolist() == [[0, 1, 2, 3, 4], [1, 0, 0, 5, 5]]
    assert data.boxes[1].shape == (0, 5) and data.boxes[2].shape == (2, 5)
    assert data.skipped[0].path.endswith("d.png")
    assert data[2][1].tolist() == [0.0, 1.0]


def test_one_folder_per_class(tmp_path: Path) -> None:
    write_images(tmp_path / "CNV", ["x.jpeg", "y.png", "bad.png"])
    write_images(tmp_path / "NORMAL" / "sub", ["z.png"])
    (tmp_path / "NORMAL" / "notes.txt").write_text("not an image")
    data = MultiLabelImages.from_folders(tmp_path)
    assert data.class_names == ["CNV", "NORMAL"]
    assert [p.name for p in data.paths] == ["bad.png", "x.jpeg", "y.png", "z.png"]
    assert data.labels.tolist() == [[1, 0], [1, 0], [1, 0], [0, 1]]
    batch = [data[i] for i in range(len(data))]
    images, labels, skipped = collate_skipping(batch)
    assert images.shape == (3, 3, 5, 6) and labels.tolist() == [[1, 0], [1, 0], [0, 1]]
    assert [s.path for s in skipped] == [str(tmp_path / "CNV" / "bad.png")]
    with pytest.raises(FileNotFoundError):
        MultiLabelImages.from_folders(tmp_path / "absent")


def test_collate_in_a_dataloader_and_all_bad_batches(tmp_path: Path) -> None:
    write_images(tmp_path / "A", ["bad1.png", "bad2.png", "ok.png"])
    data = MultiLabelImages.from_folders(tmp_path, transform=lambda im: torch.zeros(2))
    batches = list(DataLoader(data, batch_size=2, collate_fn=collate_skipping))
    assert batches[0][0] is None and batches[0][1] is None and len(batches[0][2]) == 2
    assert batches[1][0].shape == (1, 2) and batches[1][2] == []
    with pytest.raises(ValueError, match="on_error"):
        MultiLabelImages.from_folders(tmp_path, on_error="ignore")


def test_dataset_from_spec(coco: tuple[Path, Path], tmp_path: Path) -> None:
    assert len(dataset_from_spec(f"coco:{coco[0]}:{coco[1]}")) == 4
    assert len(dataset_from_spec("synthetic:5")) == 5
    write_images(tmp_path / "f" / "a", ["1.png"])
    assert dataset_from_spec(f"folder:{tmp_path / 'f'}").class_names == ["a"]
    assert dataset_from_spec(str(tmp_path / "f")).class_names == ["a"]  # a bare folder
    for bad, message in [("coco:only-one-part", "has the form coco:JSON:DIR"),
                         ("nope:x", "unknown data spec"), ("folders:x", "did you mean folder:DIR"),
                         ("synthetic:many", "positive integer"), ("folder:", "has the form"),
                         ("quokka", "unknown data spec")]:
        with pytest.raises(ValueError, match=message):
            dataset_from_spec(bad)


def test_synthetic_is_deterministic_and_split_dependent() -> None:
    a, b = SyntheticMultiLabel(4, seed=1), SyntheticMultiLabel(4, seed=1)
    for i in range(4):
        assert all(torch.equal(x, y) for x, y in zip(a[i], b[i], strict=True))
    other = SyntheticMultiLabel(4, seed=1, split="test")
    assert not all(torch.equal(a[i][0], other[i][0]) for i in range(4))
    image, labels, masks = a[0]
    assert image.shape == (3, 64, 64) and labels.shape == (4,) and masks.shape == (4, 64, 64)
    assert image.dtype == torch.float32 and masks.dtype == torch.bool
    with pytest.raises(IndexError):
        a[4]


def test_synthetic_masks_are_exact() -> None:
    data = SyntheticMultiLabel(30, image_size=48, num_classes=6, seed=2)
    for i in range(len(data)):
        image, labels, masks = data[i]
        assert torch.equal(masks.any(dim=(1, 2)), labels.bool())
        assert not (masks.sum(0) > 1).any()  # one owner per pixel
        for k in labels.nonzero().flatten().tolist():
            pixels = image[:, masks[k]]  # each is 1.0 or 0.45 times the class colour
            colour = torch.tensor(data.colours[k], dtype=torch.float32)[:, None]
            scale = pixels.sum(0) / colour.sum()
            assert torch.allclose(pixels, scale * colour, atol=1e-5)
            assert torch.all((scale - 1).abs().lt(1e-4) | (scale - 0.45).abs().lt(1e-4))


def test_synthetic_cooccurrence_and_imbalance() -> None:
    data = SyntheticMultiLabel(600, image_size=16, num_classes=4, cooccur={(0, 1): 0.9},
                               imbalance={2: 0.1}, seed=0)
    labels = torch.stack([data[i][1] for i in range(len(data))]).numpy()
    with_0 = labels[:, 0] == 1
    assert labels[with_0, 1].mean() == pytest.approx(0.9, abs=0.05)
    assert labels[:, 2].mean() == pytest.approx(0.05, abs=0.03)
    assert labels[:, 3].mean() == pytest.approx(0.5, abs=0.06)
    assert np.isclose(labels[~with_0, 1].mean(), 0.5, atol=0.07)
    with pytest.raises(ValueError, match="out of range"):
        SyntheticMultiLabel(2, num_classes=3, imbalance={3: 0.5})
