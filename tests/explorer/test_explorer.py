"""The Explain tab's logic: cached multi-class, multi-method maps, pictures, metrics, files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import camkit
from camkit import metrics
from camkit.explorer.explorer import Explorer, gradient_family, merged
from camkit.zoo import LoadedModel


def photo(seed: int = 0, size: int = 20) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


class ForwardCounter:
    def __init__(self, model: torch.nn.Module) -> None:
        self.calls = 0
        model.register_forward_hook(lambda *_: self.count())

    def count(self) -> None:
        self.calls += 1


@pytest.fixture
def explorer(tiny_loaded: LoadedModel, tmp_path: Path) -> Explorer:
    return Explorer(tiny_loaded, tmp_path / "out", top_k=3)


def test_switching_class_or_computed_method_calls_no_model(explorer: Explorer) -> None:
    key = explorer.add_image(photo(), "photo")
    counter = ForwardCounter(explorer.loaded.model)
    layer = explorer.loaded.layer
    first = explorer.picture(key, layer, "gradcam", 0)
    assert counter.calls == 1  # one forward pass for the whole gradient family
    assert explorer.missing(key, layer, "layercam") == []
    pictures = [explorer.picture(key, layer, m, k) for m in gradient_family() for k in range(3)]
    assert counter.calls == 1
    assert not all(np.array_equal(first, p) for p in pictures[1:])
    explorer.picture(key, layer, "eigencam", 2)  # a new method: one more call, merged in
    assert counter.calls == 2 and set(explorer.explanation(key, layer, "gradcam")) == {
        *gradient_family(), "eigencam"}


def test_cached_maps_equal_a_direct_call_for_the_same_classes(explorer: Explorer) -> None:
    image = photo(1)
    key = explorer.add_image(image)
    layer = explorer.loaded.layer
    explorer.explanation(key, layer, "gradcam")
    cached = explorer.explanation(key, layer, "eigencam")
    x = explorer.loaded.preprocess(image).unsqueeze(0)
    direct = camkit.explain(explorer.loaded.model, x, camkit.targets.TopK(3),
                            ["gradcam", "eigencam"], layer)
    assert cached.classes.tolist() == direct.classes.tolist()
    for method in ("gradcam", "eigencam"):
        torch.testing.assert_close(cached[method], direct[method])
    assert [c.index for c in explorer.classes(key, layer)] == direct.classes[0].tolist()
    probabilities = [c.probability for c in explorer.classes(key, layer)]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1


def test_merged_keeps_both_explanations_maps(explorer: Explorer) -> None:
    x = explorer.loaded.preprocess(photo()).unsqueeze(0)
    model, layer = explorer.loaded.model, explorer.loaded.layer
    a = camkit.explain(model, x, [[0, 1]], "gradcam", layer)
    b = camkit.explain(model, x, [[0, 1]], "hirescam", layer)
    both = merged(a, b)
    assert list(both) == ["gradcam", "hirescam"]
    assert both["hirescam"] is b["hirescam"] and both.constant["gradcam"] is a.constant["gradcam"]


def test_views_and_opacity(explorer: Explorer) -> None:
    key = explorer.add_image(photo(), "photo")
    layer = explorer.loaded.layer
    heat = explorer.picture(key, layer, "gradcam", 0, "map")
    faint = explorer.picture(key, layer, "gradcam", 0, "overlay", 0.1)
    strong = explorer.picture(key, layer, "gradcam", 0, "overlay", 0.9)
    view = explorer.images[key].view.astype(float)
    assert heat.shape == faint.shape == (16, 16, 3) and heat.dtype == np.uint8
    assert np.abs(faint - view).mean() < np.abs(strong - view).mean()
    with pytest.raises(ValueError, match="view must be one of"):
        explorer.picture(key, layer, "gradcam", 0, "sideways")


def test_same_pixels_are_one_image(explorer: Explorer) -> None:
    assert explorer.add_image(photo(3)) == explorer.add_image(photo(3))
    assert explorer.add_image(photo(3)) != explorer.add_image(photo(4))
    assert len(explorer.images) == 2


def test_bad_input_raises_a_readable_error(explorer: Explorer, tmp_path: Path) -> None:
    key = explorer.add_image(photo())
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        explorer.picture(key, "nope", "gradcam", 0)
    with pytest.raises(ValueError, match="unknown method"):
        explorer.picture(key, explorer.loaded.layer, "nomethod", 0)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="cannot read"):
        explorer.add_file(text)


def test_methods_needing_artifacts_are_offered_only_with_them(tiny_loaded, tmp_path) -> None:
    bare = Explorer(tiny_loaded, tmp_path).methods
    assert "mcam" not in bare and "embedding-gradcam" not in bare and "gradcam" in bare
    with_memory = Explorer(tiny_loaded, tmp_path, artifacts={"memory": object()}).methods
    assert "mcam" in with_memory and "embedding-gradcam" not in with_memory


def test_layers_start_with_the_default(explorer: Explorer) -> None:
    assert explorer.layers[0] == "features"
    assert set(explorer.layers) == {n for n, _ in explorer.loaded.model.named_modules() if n}


def test_measure_matches_the_metric_functions(explorer: Explorer) -> None:
    key = explorer.add_image(photo(), "photo")
    layer = explorer.loaded.layer
    rows = explorer.measure(key, layer, 1, ["gradcam", "layercam"])
    expl = explorer.explanation(key, layer, "gradcam")
    x, target = explorer.images[key].x, expl.classes[:, 1:2]
    drop = metrics.average_drop(explorer.loaded.model, x, expl["layercam"][:, 1:2], target)
    assert [r["method"] for r in rows] == ["gradcam", "layercam"]
    assert rows[1]["Average Drop %"] == pytest.approx(float(drop[0, 0]), rel=1e-5)
    assert all(np.isfinite(v) for r in rows for k, v in r.items() if k != "method")


def test_export_writes_maps_and_report_inside_out(explorer: Explorer) -> None:
    key = explorer.add_image(photo(), "../../escape")
    explorer.explanation(key, explorer.loaded.layer, "gradcam")
    saved = explorer.export(key, explorer.loaded.layer)
    assert saved.maps.resolve().is_relative_to(explorer.out.resolve())
    assert saved.report.resolve().is_relative_to(explorer.out.resolve())
    with np.load(saved.maps) as maps:
        assert maps["maps/gradcam"].shape == (1, 3, 16, 16)
        assert maps["targets"].tolist() == [[c.index for c in explorer.classes(
            key, explorer.loaded.layer)]]
    assert "escape" in saved.report.read_text()


def test_reload_keeps_the_model_on_a_bad_weights_file(explorer: Explorer, tmp_path) -> None:
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"not a state dict")
    before = explorer.loaded
    with pytest.raises((ValueError, RuntimeError)):
        explorer.reload("resnet18", weights)
    assert explorer.loaded is before
