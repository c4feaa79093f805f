"""Mosaics of real labelled images: determinism, masks that agree with labels and pixels, the
requested co-occurrence and imbalance rates, a decorrelated test split, and the ImageNet grid
for the pretrained model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from camkit.cli.evaluate import metrics_for
from camkit.data.files import evaluation_data
from camkit.data.images import Preprocess
from camkit.data.mosaic import (
    ImageNetGrid,
    ImagePool,
    MosaicMultiLabel,
    fashion_pool,
    imagenet_pool,
    mask_boxes,
)
from camkit.evaluate import evaluate
from camkit.zoo import load_model
from tests.models import TinyCNN

PAIRS = {(0, 1): 0.9, (2, 3): 0.9}
RARE = {4: 0.1, 5: 0.1}


def tiny_pool(classes: int = 6, per_class: int = 3, side: int = 2) -> ImagePool:
    """``per_class`` random grey ``side × side`` images of each of ``classes`` labels
    (label values 10, 11, ...: not positions)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (classes * per_class, side, side), dtype=np.uint8)
    labels = np.repeat(np.arange(10, 10 + classes), per_class)
    return ImagePool(images, labels, {10 + k: f"c{k}" for k in range(classes)})


def labels_of(data: MosaicMultiLabel) -> np.ndarray:
    return np.stack([data[i].label.numpy() for i in range(len(data))]).astype(bool)


@pytest.fixture(scope="module")
def biased() -> tuple[MosaicMultiLabel, np.ndarray]:
    data = MosaicMultiLabel(tiny_pool(), 4000, grid=(3, 3), cooccur=PAIRS, imbalance=RARE,
                            seed=1)
    return data, labels_of(data)


def test_same_seed_same_mosaics_and_another_seed_or_split_differs():
    pool = tiny_pool()
    a, b = (MosaicMultiLabel(pool, 5, grid=(3, 3), seed=3) for _ in range(2))
    for i in range(5):
        for x, y in zip(a[i][:5], b[i][:5], strict=True):
            assert torch.equal(x.nan_to_num(-1), y.nan_to_num(-1))
    images = torch.stack([a[i].image for i in range(5)])
    for other in (MosaicMultiLabel(pool, 5, grid=(3, 3), seed=4), a.decorrelated()):
        assert not torch.equal(images, torch.stack([other[i].image for i in range(5)]))


def test_requested_cooccurrence_and_imbalance_rates_are_measured(biased):
    _, present = biased
    for (a, b), p in PAIRS.items():
        both = present[:, a] & present[:, b]
        assert both.sum() / present[:, a].sum() == pytest.approx(p, abs=0.03)
    base = present[:, [0, 2]].mean()  # classes whose frequency no dial changes
    for k, ratio in RARE.items():
        assert present[:, k].mean() / base == pytest.approx(ratio, abs=0.03)


def test_the_decorrelated_test_split_breaks_the_pairs_and_shows_every_class_alone(biased):
    data, _ = biased
    test = data.decorrelated(2000)
    present = labels_of(test)
    assert test.split == "test" and not test.cooccur and not test.imbalance
    for a, b in PAIRS:
        assert present[present[:, a], b].mean() == pytest.approx(0.5, abs=0.06)
    assert present.mean(axis=0) == pytest.approx([0.5] * 6, abs=0.05)
    alone = present & (present.sum(axis=1, keepdims=True) == 1)
    assert (alone.sum(axis=0) >= 10).all()


def test_masks_boxes_and_cells_agree_with_labels_and_pixels():
    pool = fashion_pool("test")
    data = MosaicMultiLabel(pool, 12, classes=[0, 1, 5, 7], grid=(2, 2), seed=0)
    assert data.class_names == ["T-shirt/top", "Trouser", "Sandal", "Sneaker"]
    for i in range(len(data)):
        item = data[i]
        present = item.label.bool()
        assert item.image.shape == (3, 56, 56) and item.mask.shape == (4, 56, 56)
        assert torch.equal(item.mask.flatten(1).any(1), present)
        assert torch.equal(item.cells >= 0, present)
        assert item.mask.sum(0).max() <= 1  # objects never overlap
        assert torch.equal(item.box.isnan().all(1), ~present)
        for k in present.nonzero().flatten().tolist():
            row, col = divmod(int(item.cells[k]), 2)
            cell = item.mask[k, 28 * row:28 * row + 28, 28 * col:28 * col + 28]
            assert cell.sum() == item.mask[k].sum()  # the mask lies in its cell
            grey = item.image[0, 28 * row:28 * row + 28, 28 * col:28 * col + 28]
            assert torch.equal(cell, grey > 0.1)
            ys, xs = item.mask[k].nonzero().T
            box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert item.box[k].tolist() == [float(v) for v in box]
        assert item.image[:, ~item.mask.any(0)].max() <= 0.1  # outside objects: dark


def test_fill_puts_a_distinct_class_in_every_cell():
    data = MosaicMultiLabel(tiny_pool(classes=9), 20, grid=(2, 2), fill=True, seed=2)
    seen = set()
    for i in range(len(data)):
        item = data[i]
        assert item.label.sum() == 4
        assert sorted(item.cells[item.cells >= 0].tolist()) == [0, 1, 2, 3]
        assert item.mask.all(0).sum() == 0 and item.mask.any(0).all()  # "cell" objects
        seen |= set(item.label.nonzero().flatten().tolist())
    assert seen == set(range(9))


def test_settings_that_cannot_work_are_refused():
    pool = tiny_pool()
    with pytest.raises(ValueError, match="at least as many cells"):
        MosaicMultiLabel(pool, 3, grid=(2, 2))  # 6 classes, 4 cells
    with pytest.raises(ValueError, match="fill needs"):
        MosaicMultiLabel(pool, 3, grid=(3, 3), fill=True)
    with pytest.raises(ValueError, match="no image of class"):
        MosaicMultiLabel(pool, 3, classes=[10, 99])
    with pytest.raises(ValueError, match="out of range"):
        MosaicMultiLabel(pool, 3, grid=(3, 3), cooccur={(0, 6): 0.5})
    with pytest.raises(ValueError, match="uint8"):
        ImagePool(np.zeros((2, 3, 4), dtype=np.uint8), np.zeros(2), {})


def test_mask_boxes_of_empty_and_full_masks():
    masks = np.zeros((2, 4, 5), dtype=bool)
    masks[1, 1:3, 2:5] = True
    boxes = mask_boxes(masks)
    assert np.isnan(boxes[0]).all() and boxes[1].tolist() == [2, 1, 5, 3]


@pytest.mark.filterwarnings("ignore:.*maps were constant")
def test_imagenet_grid_for_the_pretrained_model_and_the_harness():
    preprocess = Preprocess(size=64, mean=(0.5,) * 3, std=(0.25,) * 3, crop_fraction=None)
    grid = ImageNetGrid(3, preprocess, seed=1)
    pool = imagenet_pool(32)
    for i in range(len(grid)):
        item, mosaic = grid[i], grid.mosaics[i]
        shown = item["label"].nonzero().flatten()
        assert item["image"].shape == (3, 64, 64) and len(shown) == 4
        assert set(shown.tolist()) <= set(pool.labels.tolist())
        assert torch.allclose(item["image"], (mosaic.image - 0.5) / 0.25)
        assert (item["cells"] >= 0).sum() == 4
        for label in shown.tolist():
            k = grid.mosaics.classes.index(label)
            assert item["cells"][label] == mosaic.cells[k]
    torch.manual_seed(0)
    model = TinyCNN(classes=1000).eval()
    results = evaluate(model, grid, ["gradcam"], ["grid-pointing"], "features",
                       confidence="softmax", progress=False)
    values = results.values["gradcam"]["grid-pointing"]
    assert len(values) == 12 and np.isfinite(values).all() and not results.failures


def test_imagenet_grid_spec_of_the_command_line():
    loaded = load_model()
    data, kinds = evaluation_data("imagenet-grid:2", loaded.preprocess, loaded.class_names)
    assert len(data) == 2 and kinds == ("cells",)
    assert metrics_for("auto", kinds)[-1] == "grid-pointing"
    item = data[1]
    assert item["image"].shape == (3, 224, 224) and item["label"].shape == (1000,)
    assert data.mosaics.class_names[0] == loaded.class_names[data.mosaics.classes[0]]
    grids, _ = evaluation_data("imagenet-grid", loaded.preprocess, loaded.class_names)
    assert len(grids) == 8
