"""The HTML report: panels and labels, well-formed self-contained HTML, saved files."""

from __future__ import annotations

import base64
import io
import math
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import camkit
from camkit.viz import colorize
from camkit.viz.report import (
    ReportItem,
    ReportSection,
    TargetRow,
    evaluation_metrics,
    explanation_to_html,
    grid_rows,
    render_report,
    report_from_results,
    report_item,
    report_items,
    save_explanation,
    save_grid,
)
from tests.models import TinyCNN, TinyDeepHead

METHODS = ("gradcam", "gradcam++", "layercam")
CLASSES = ["cat", 'the <b>"quoted"</b> & escaped class', "dog", "a " + "very " * 30 + "long name"]
TARGETS = [[0, 1], [2, 3]]
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}
BOTTOM = (68, 1, 84)  # viridis at 0


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    ancestors: tuple[Element, ...]
    parts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join("".join(self.parts).split())

    def has_class(self, name: str) -> bool:
        return name in self.attrs.get("class", "").split()


class Page(HTMLParser):
    """The parsed page; fails on a close tag that does not match the open one."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[Element] = []
        self.elements: list[Element] = []
        self.feed(text)
        self.close()
        assert not self.stack, f"unclosed tags: {[e.tag for e in self.stack]}"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs}, tuple(self.stack))
        self.elements.append(element)
        if tag not in VOID:
            self.stack.append(element)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack, f"</{tag}> closes nothing"
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        for element in self.stack:
            element.parts.append(data)

    def find(self, tag: str, cls: str | None = None, inside: Element | None = None
             ) -> list[Element]:
        return [e for e in self.elements if e.tag == tag
                and (cls is None or e.has_class(cls))
                and (inside is None or any(a is inside for a in e.ancestors))]

    def one(self, tag: str, cls: str | None = None, inside: Element | None = None) -> Element:
        found = self.find(tag, cls, inside)
        assert len(found) == 1, f"{len(found)} <{tag} class={cls}>"
        return found[0]


def decode(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as picture:
        assert picture.format == "PNG"
        return np.asarray(picture.convert("RGB"))


def make_explanation(seed: int = 3, size: int = 16) -> tuple[camkit.Explanation, list]:
    torch.manual_seed(seed)
    model = TinyDeepHead().eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    expl = camkit.explain(model, x, TARGETS, METHODS, "body")
    rng = np.random.default_rng(seed)
    views = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(2)]
    return expl, views


@pytest.fixture(scope="module")
def explained() -> tuple[camkit.Explanation, list]:
    return make_explanation()


@pytest.fixture(scope="module")
def page(explained) -> Page:
    expl, views = explained
    items = report_items(expl, views, CLASSES, names=["first.png", "second.png"])
    return Page(render_report(items, {"model": "TinyDeepHead"}))


def test_report_has_exactly_the_panels_with_their_labels(explained, page) -> None:
    expl, _ = explained
    panels = page.find("figure", "panel")
    found = [(int(p.attrs["data-image"]), p.attrs["data-method"], p.attrs["data-target"])
             for p in panels]
    expected = [(b + 1, m, CLASSES[TARGETS[b][k]])
                for b in range(2) for k in range(2) for m in METHODS]
    assert sorted(found) == sorted(expected) and len(found) == 12
    for panel, (_, method, label) in zip(panels, found, strict=True):
        assert page.one("span", "method", panel).text == method
        assert page.one("img", "heat", panel).attrs["alt"] == f"{method} map for {label}"
    sections = page.find("section", "item")
    assert [page.one("h2", inside=s).text for s in sections] == ["1first.png", "2second.png"]
    rows = [page.one("span", "label", r).text for r in page.find("div", "target-row")]
    assert rows == [CLASSES[t] for per_image in TARGETS for t in per_image]


def test_each_panel_shows_its_own_map(explained, page) -> None:
    expl, _ = explained
    # Precondition: the three methods give different maps here, so a swap would show.
    for a, b in ((0, 1), (1, 2), (0, 2)):
        assert not torch.allclose(expl[METHODS[a]], expl[METHODS[b]], atol=0.05)
    for panel in page.find("figure", "panel"):
        b, method = int(panel.attrs["data-image"]) - 1, panel.attrs["data-method"]
        k = [CLASSES[t] for t in TARGETS[b]].index(panel.attrs["data-target"])
        shown = decode(page.one("img", "heat", panel).attrs["src"]).astype(int)
        levels = np.rint(expl[method][b, k].numpy() * 255) / 255
        np.testing.assert_allclose(shown, colorize(levels), atol=1)
        raw = expl.raw[method][b, k].numpy()
        assert decode(page.one("img", "raw", panel).attrs["src"]).shape[:2] == raw.shape
        low = page.one("span", "range", panel).text
        assert low == f"raw: {raw.min():.3g} to {raw.max():.3g}"


def test_predictions_and_target_scores(explained, page) -> None:
    expl, _ = explained
    probabilities = expl.outputs.softmax(dim=1)
    first = page.find("section", "item")[0]
    names = [e.text for e in page.find("span", "cls", first)]
    assert names == [CLASSES[i] for i in probabilities[0].argsort(descending=True).tolist()]
    heading = page.find("div", "target-row")[0].text
    assert f"score {float(expl.scores[0, 0]):.3g}" in heading
    assert f"p {100 * float(probabilities[0, 0]):.1f}%" in heading


def test_html_is_well_formed_and_self_contained(explained) -> None:
    expl, views = explained
    text = render_report(report_items(expl, views, CLASSES), {"model": "tiny"},
                         {"gradcam": {"deletion": 0.1}})
    parsed = Page(text)  # asserts every element is closed in order
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"https?:", text, re.IGNORECASE)
    references = [v for e in parsed.elements for k, v in e.attrs.items()
                  if k in ("src", "href", "srcset", "poster", "data", "action")]
    assert len(references) > 24
    for ref in references:
        assert ref.startswith(("data:", "#")), ref[:40]
    css = "".join(e.text for e in parsed.find("style"))
    urls = re.findall(r"url\(\s*['\"]?([^'\")]*)", css)
    assert len(urls) == 2 and all(u.startswith("data:image/png;base64,") for u in urls)
    assert "@import" not in css and "@media print" in css
    assert [e.attrs.get("src") for e in parsed.find("script")] == [None]


def test_class_names_are_escaped_not_interpreted(page) -> None:
    assert not page.find("b", inside=page.find("div", "target-row")[1])
    assert page.find("span", "label")[1].text == CLASSES[1]


def constant_item() -> ReportItem:
    image = np.full((12, 10, 3), 200, np.uint8)
    return ReportItem(
        name="blank", image=image, targets=[TargetRow("x")],
        maps={"zero": np.zeros((1, 12, 10)), "flat": np.full((1, 12, 10), 0.4),
              "norawmap": np.zeros((1, 12, 10))},
        raw={"zero": np.zeros((1, 3, 3)), "flat": np.full((1, 3, 3), 2.5)},
    )


def test_zero_and_constant_maps_still_render() -> None:
    parsed = Page(render_report([constant_item()]))
    panels = {p.attrs["data-method"]: p for p in parsed.find("figure", "panel")}
    assert list(panels) == ["zero", "flat", "norawmap"]
    for panel in panels.values():
        assert parsed.one("span", "flag", panel).text == "constant"
        for img in parsed.find("img", inside=panel):
            pixels = decode(img.attrs["src"])
            assert (pixels == pixels[0, 0]).all()
    assert (decode(parsed.one("img", "heat", panels["zero"]).attrs["src"]) == BOTTOM).all()
    assert parsed.one("span", "range", panels["flat"]).text == "raw: constant 2.5"
    assert parsed.one("span", "range", panels["norawmap"]).text == "no raw map: normalised map"


def test_constant_maps_from_explain_render(tmp_path: Path) -> None:
    model = TinyCNN().eval()
    torch.nn.init.zeros_(model.fc.weight)  # no class depends on the image: zero gradients
    with pytest.warns(RuntimeWarning, match="constant"):
        expl = camkit.explain(model, torch.randn(1, 3, 8, 8), 0, ("gradcam",))
    image = np.zeros((8, 8, 3), np.uint8)
    path = explanation_to_html(expl, [image], None, tmp_path / "r.html")
    parsed = Page(path.read_text(encoding="utf-8"))
    assert parsed.one("span", "flag", parsed.one("figure", "panel")).text == "constant"
    assert parsed.one("span", "label").text == "class 0"


def test_a_panel_flags_only_constant_maps(page) -> None:
    assert not page.find("span", "flag", page.find("section", "item")[0])


def test_maps_are_resized_to_the_image() -> None:
    heat = np.zeros((1, 4, 4))
    heat[0, :, :2] = 1.0
    item = ReportItem("small map", np.zeros((16, 32, 3), np.uint8), [TargetRow("t")],
                      {"m": torch.from_numpy(heat)})
    shown = decode(Page(render_report([item])).one("img", "heat").attrs["src"])
    assert shown.shape == (16, 32, 3)
    assert tuple(shown[8, 0]) != tuple(shown[8, 31])


def test_metrics_table_rows_columns_and_intervals() -> None:
    metrics = {"gradcam": {"deletion": (0.1234, 0.1, 0.15), "time per image (s)": 0.02},
               "layercam": {"insertion": 0.5, "deletion": (0.2, math.nan, math.nan),
                            "time per image (s)": math.nan}}
    parsed = Page(render_report([], metrics=metrics))
    table = parsed.one("table", "metrics")
    assert [e.text for e in parsed.find("th", inside=parsed.one("thead", inside=table))] == [
        "method", "deletion", "time per image (s)", "insertion"]
    rows = [[c.text for c in parsed.find("td", inside=r)] + [parsed.one("th", inside=r).text]
            for r in parsed.find("tr", inside=parsed.one("tbody", inside=table))]
    assert rows == [["0.123 [0.1, 0.15]", "0.02", "–", "gradcam"],
                    ["0.2", "–", "0.5", "layercam"]]
    assert not parsed.find("button")  # no images, nothing to toggle


def test_no_metrics_no_table(page) -> None:
    assert not page.find("table", "metrics")
    assert page.one("button").attrs["id"] == "view-toggle"


def settings_of(parsed: Page) -> dict[str, str]:
    table = parsed.one("table", "settings")
    return {parsed.one("th", inside=r).text: parsed.one("td", inside=r).text
            for r in parsed.find("tr", inside=table)}


def test_settings_and_versions_are_shown(page) -> None:
    settings = settings_of(page)
    assert settings["model"] == "TinyDeepHead"
    assert settings["torch"] == metadata.version("torch")
    for key in ("camkit", "torch", "torchvision", "numpy", "pillow", "python", "platform"):
        assert settings[key]


def test_explanation_to_html_adds_layer_and_methods(explained, tmp_path: Path) -> None:
    expl, views = explained
    path = explanation_to_html(expl, views, CLASSES, tmp_path / "sub" / "r.html",
                               settings={"model": "TinyDeepHead", "options": {"seed": 0}})
    settings = settings_of(Page(path.read_text(encoding="utf-8")))
    assert settings["layer"] == "body"
    assert settings["methods"] == ", ".join(METHODS)
    assert settings["options"] == "seed=0"


def test_save_explanation_writes_report_grids_and_maps(explained, tmp_path: Path) -> None:
    expl, views = explained
    saved = save_explanation(expl, tmp_path / "out", views, CLASSES, names=["a b.png", "a b.jpg"])
    assert saved.report.name == "report.html" and saved.report.stat().st_size > 0
    assert [p.name for p in saved.grids] == ["a_b.png", "a_b-2.png"]
    with Image.open(saved.grid) as figure, Image.open(saved.grids[0]) as one:
        # Rows: 2 images × 2 targets; columns: the input and 3 methods.
        assert one.width == figure.width
        row_height = (one.height - 4) / 2
        assert figure.height == pytest.approx(4 * row_height + 4)
        assert one.width == 4 * 16 + 5 * 4
    maps = np.load(saved.maps)
    for m in METHODS:
        np.testing.assert_array_equal(maps[f"maps/{m}"], expl[m].numpy())
        np.testing.assert_array_equal(maps[f"raw/{m}"], expl.raw[m].numpy())
        assert maps[f"constant/{m}"].shape == (2, 2)
    np.testing.assert_array_equal(maps["targets"], TARGETS)


@dataclass
class FakeResult:
    report: ReportItem


def test_report_from_results_shows_the_command(explained, tmp_path: Path) -> None:
    expl, views = explained
    results = [FakeResult(report_item(expl, b, views[b], CLASSES, name=f"p{b}.jpg",
                                      predictions=[("cat", 0.75)])) for b in range(2)]
    path = report_from_results(results, tmp_path / "r.html", model="tiny", layer="body",
                               methods=METHODS, options={"alpha": 0.4}, alpha=0.4,
                               command="camkit explain p0.jpg p1.jpg --report r.html")
    parsed = Page(path.read_text(encoding="utf-8"))
    settings = settings_of(parsed)
    assert settings["command"] == "camkit explain p0.jpg p1.jpg --report r.html"
    assert settings["options"] == "alpha=0.4" and settings["layer"] == "body"
    assert [e.text for e in parsed.find("span", "cls")] == ["cat", "cat"]
    assert parsed.find("input")[0].attrs == {
        "type": "range", "data-var": "--alpha", "min": "0", "max": "1", "step": "0.05",
        "value": "0.4"}


@pytest.mark.parametrize(("change", "message"), [
    ({"maps": {"m": np.zeros((2, 4, 4))}}, r"maps\['m'\] must be \(K=1"),
    ({"raw": {"other": np.zeros((1, 4, 4))}}, "no normalised maps"),
    ({"targets": []}, "no targets"),
    ({"image": np.zeros((4, 4, 3))}, "uint8"),
])
def test_bad_items_are_refused(change: dict, message: str) -> None:
    fields = {"name": "x", "image": np.zeros((4, 4, 3), np.uint8), "targets": [TargetRow("t")],
              "maps": {"m": np.zeros((1, 4, 4))}} | change
    with pytest.raises((ValueError, TypeError), match=message):
        ReportItem(**fields)


def test_mismatched_images_and_classes_are_refused(explained) -> None:
    expl, views = explained
    with pytest.raises(ValueError, match="1 images for an explanation of 2 images"):
        report_items(expl, views[:1])
    with pytest.raises(ValueError, match="is out of range for 2 class names"):
        report_items(expl, views, ["a", "b"])
    with pytest.raises(ValueError, match="alpha"):
        render_report([], alpha=2.0)


def test_metrics_from_camkit_evaluate() -> None:
    from camkit.evaluate import evaluate

    torch.manual_seed(0)
    data = [(torch.randn(3, 16, 16), i % 5) for i in range(3)]
    results = evaluate(TinyCNN().eval(), data, ["gradcam", "layercam"], ["deletion"],
                       "features", progress=False)
    metrics = evaluation_metrics(results)
    assert list(metrics) == ["gradcam", "layercam"]
    summary = results.summary("gradcam", "deletion")
    assert metrics["gradcam"] == {
        "deletion ↓": (summary.mean, summary.low, summary.high),
        "explain ms / image": 1000 * results.seconds_per_image("gradcam")}
    parsed = Page(render_report([], results.settings, metrics))
    head = parsed.find("th", inside=parsed.one("thead"))
    assert [e.text for e in head] == ["method", "deletion ↓", "explain ms / image"]


def test_custom_score_targets_are_numbered(tmp_path: Path) -> None:
    torch.manual_seed(0)
    expl = camkit.explain(TinyDeepHead().eval(), torch.randn(1, 3, 8, 8),
                          lambda out: out[:, 1:3], ("gradcam",), "body")
    (item,) = report_items(expl, [np.zeros((8, 8, 3), np.uint8)], CLASSES)
    assert [t.label for t in item.targets] == ["target 1", "target 2"]
    assert [t.probability for t in item.targets] == [None, None]
    assert [t.score for t in item.targets] == pytest.approx(expl.scores[0].tolist())


def test_sections_group_their_items_text_and_metrics(explained) -> None:
    expl, views = explained
    first, second = report_items(expl, views, CLASSES, names=["a.png", "b.png"])
    parsed = Page(render_report([
        constant_item(),
        ReportSection("Part <one>", [first], "Some <i>text</i>", {"gradcam": {"m": 1.0}}),
        ReportSection("Part two", [second]),
    ]))
    parts = parsed.find("section", "part")
    assert [parsed.one("h2", "part-title", p).text for p in parts] == ["Part <one>", "Part two"]
    assert parsed.one("p", "part-text", parts[0]).text == "Some <i>text</i>"
    assert parsed.one("table", "metrics", parts[0]).ancestors[-2].attrs["id"] == "metrics-2"
    assert not parsed.find("table", "metrics", parts[1])
    items = parsed.find("section", "item")
    assert [i.attrs["id"] for i in items] == ["item-1", "item-2", "item-3"]
    assert not any(a.has_class("part") for a in items[0].ancestors)
    for item, part in zip(items[1:], parts, strict=True):
        assert any(a is part for a in item.ancestors)
    for n, item in enumerate(items, 1):
        assert {e.attrs["class"] for e in parsed.find("div", "stack", item)} == {f"stack bg-{n}"}
    links = [a.attrs["href"] for a in parsed.find("a", inside=parsed.one("nav"))]
    assert links == ["#item-1", "#part-2", "#item-2", "#part-3", "#item-3"]


def gallery_item() -> ReportItem:
    pictures = [np.full((8, 8, 3), v, np.uint8) for v in (10, 200)]
    return ReportItem("query", np.zeros((16, 16, 3), np.uint8), [TargetRow("t")],
                      {"m": np.zeros((1, 4, 4))},
                      gallery=[(pictures[0], "near <1>"), (pictures[1], "far")],
                      gallery_title="Nearest")


def test_gallery_pictures_are_shown_with_their_captions() -> None:
    parsed = Page(render_report([gallery_item()]))
    gallery = parsed.one("div", "gallery", parsed.one("div", "side"))
    assert parsed.one("h3", inside=gallery).text == "Nearest"
    assert [e.text for e in parsed.find("figcaption", inside=gallery)] == ["near <1>", "far"]
    assert [decode(e.attrs["src"])[0, 0, 0] for e in parsed.find("img", inside=gallery)] == [
        10, 200]
    assert not Page(render_report([constant_item()])).find("div", "gallery")


def test_png_grid_has_the_target_rows_then_the_gallery(tmp_path: Path) -> None:
    item = gallery_item()
    assert [[title for _, title in row] for row in grid_rows(item)] == [
        ["query: t", "m"], ["near <1>", "far"]]
    one = Image.open(save_grid([item], tmp_path / "one.png"))
    two = Image.open(save_grid([item, item], tmp_path / "two.png"))
    assert two.size[0] == one.size[0] and two.size[1] > 1.9 * one.size[1]
