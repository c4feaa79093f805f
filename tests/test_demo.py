"""``camkit demo``'s parts on tiny settings: the cache, the M-CAM and embedding sections of the
report, and the pieces they are made of. (The full demo is too slow for the suite; the classic
part is the ``camkit explain`` path, tested in test_cli.py.)"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import pytest
import torch

import camkit
from camkit import demo
from camkit.artifacts import write_safetensors
from camkit.cli import demo as demo_command
from camkit.data.synthetic import SyntheticMultiLabel
from camkit.demo.mcam import mcam_configuration
from camkit.embedding import squared_distances
from tests.viz.report.test_report import Page, decode

MCAM = demo.McamSettings(train=200, test=24, width=8, steps=30, memory_epochs=2)
EMBEDDING = demo.EmbeddingSettings(train=60, test=30, width=8, dim=8, steps=20, triplets=5,
                                   top_m=4, queries=2, neighbours=3)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list, list]:
    """The two small parts run twice into one folder: ``(out, first run, second run)``."""
    out = tmp_path_factory.mktemp("demo")
    settings = {"mcam": MCAM, "embedding": EMBEDDING}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant maps of the tiny networks
        first = demo.run_parts(out, settings, progress=False)
        second = demo.run_parts(out, settings, progress=False)
    return out, first, second


@pytest.fixture(scope="module")
def page(runs: tuple[Path, list, list]) -> tuple[Page, str]:
    out, _, second = runs
    report = demo.write_demo_report(out, second, "camkit demo --test")
    text = report.read_text(encoding="utf-8")
    return Page(text), text


def cache_files(out: Path) -> dict[str, float]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns
            for p in (out / "cache").rglob("*") if p.is_file()}


def test_first_run_trains_and_second_run_reuses(runs) -> None:
    out, first, second = runs
    assert [(p.name, p.cache) for p in first] == [("mcam", "trained"), ("embedding", "trained")]
    assert [(p.name, p.cache) for p in second] == [("mcam", "reused"), ("embedding", "reused")]
    folders = sorted(p.name for p in (out / "cache").iterdir())
    assert [f.rsplit("-", 1)[0] for f in folders] == ["embedding", "mcam"]
    files = cache_files(out)
    for name in ("mcam-*/net.safetensors", "mcam-*/memory.safetensors",
                 "embedding-*/net.safetensors", "embedding-*/bank.safetensors"):
        assert any(Path(f).match(name) for f in files), name
    assert [p.summary for p in first] == [p.summary for p in second]


def test_reused_artifacts_are_not_rewritten(runs) -> None:
    out, _, _ = runs
    before = cache_files(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        (part,) = demo.run_parts(out, {"mcam": MCAM}, progress=False)
    assert part.cache == "reused"
    assert cache_files(out) == before


def test_report_has_the_mcam_and_embedding_sections(page) -> None:
    parsed, _ = page
    titles = [e.text for e in parsed.find("h2", "part-title")]
    assert titles == ["M-CAM against Grad-CAM on a biased data set",
                      "Grad-CAM for an embedding network, by weight transfer"]
    mcam, embedding = parsed.find("section", "part")
    mcam_panels = parsed.find("figure", "panel", inside=mcam)
    assert {e.attrs["data-method"] for e in mcam_panels} == {"gradcam", "mcam"}
    names = SyntheticMultiLabel(1, num_classes=MCAM.classes).class_names
    assert {e.attrs["data-target"] for e in mcam_panels} == {names[c] for c in MCAM.pair}
    items = parsed.find("section", "item", inside=mcam)
    inputs = [parsed.one("img", inside=parsed.one("figure", "input", inside=i)) for i in items]
    assert [e.attrs["alt"].removeprefix("input image ") for e in inputs] == [
        "together", f"{names[0]} alone", f"{names[1]} alone"]
    assert parsed.one("table", "metrics", inside=mcam)
    queries = parsed.find("section", "item", inside=embedding)
    assert len(queries) == EMBEDDING.queries
    for query in queries:
        assert len(parsed.find("img", inside=parsed.one("div", "gallery", inside=query))) == 3
    methods = {e.attrs["data-method"] for e in parsed.find("figure", "panel", inside=embedding)}
    assert methods == {"transfer, 1-NN", "transfer, 3-NN"}


def test_every_report_image_decodes(page) -> None:
    parsed, text = page
    images = parsed.find("img")
    assert len(images) > 20
    for image in images:
        assert decode(image.attrs["src"]).size > 0
    assert "http://" not in text and "https://" not in text


def test_grids_are_written(runs) -> None:
    _, _, second = runs
    for part in second:
        (grid,) = part.grids
        assert grid.name == f"{part.name}.png" and grid.stat().st_size > 0


def test_cached_builds_once_per_settings_and_never_half(tmp_path: Path) -> None:
    built = []

    def build(folder: Path) -> None:
        built.append(folder.name)
        (folder / "weights").write_text("w")

    a, reused = demo.cached(tmp_path, "part", MCAM, build)
    assert not reused and (a / "weights").exists() and (a / "settings.json").exists()
    assert demo.cached(tmp_path, "part", MCAM, build) == (a, True)
    b, reused = demo.cached(tmp_path, "part", demo.McamSettings(seed=1), build)
    assert not reused and b != a and len(built) == 2

    def crash(folder: Path) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        demo.cached(tmp_path, "part", demo.McamSettings(seed=2), crash)
    c, reused = demo.cached(tmp_path, "part", demo.McamSettings(seed=2), build)
    assert not reused and (c / "weights").exists()


def test_pair_cases_find_together_and_apart() -> None:
    labels = torch.tensor([[0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0], [0, 1, 0], [1, 1, 1]])
    assert demo.pair_cases(labels, (0, 1), ["a", "b", "c"]) == [
        (2, "together"), (3, "a alone"), (1, "b alone")]
    assert demo.pair_cases(labels[:3], (0, 1), ["a", "b", "c"]) == [
        (2, "together"), (1, "b alone")]


def test_batch_hard_loss_matches_a_loop() -> None:
    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(9, 4, generator=g), dim=1)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 1])
    d = squared_distances(emb, emb)
    expected = [max(0.0, float(max(d[a, p] for p in range(9) if labels[p] == labels[a])
                               - min(d[a, n] for n in range(9) if labels[n] != labels[a]) + 0.3))
                for a in range(9)]
    assert demo.batch_hard_loss(emb, labels, 0.3) == pytest.approx(sum(expected) / 9)


def test_saved_network_loads_into_a_fresh_one(tmp_path: Path) -> None:
    net = demo.seeded_net(0, 3, 4, embedding=True)
    path = demo.save_net(net, tmp_path / "net.safetensors")
    again = demo.load_net(demo.seeded_net(1, 3, 4, embedding=True), path)
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(net(x), again(x))
    with pytest.raises(ValueError, match="not .camkit.demo-net."):
        demo.load_net(net, write_safetensors({}, {"format": "other"}, tmp_path / "x"))


def test_classic_part_uses_every_method_without_a_trained_artifact() -> None:
    methods = demo.classic_methods()
    assert set(methods) == set(camkit.available_methods()) - {"mcam", "mcam-gradcam",
                                                              "embedding-gradcam", "legrad"}
    assert {"gradcam", "scorecam", "ablationcam", "eigencam", "guided-gradcam"} <= set(methods)


def args(**given: object) -> argparse.Namespace:
    return argparse.Namespace(**({"parts": "classic,mcam,embedding", "quick": False,
                                  "images": None} | given))


def test_command_line_settings() -> None:
    assert demo_command.demo_settings(args()) == demo.DEFAULTS
    quick = demo_command.demo_settings(args(quick=True, parts="mcam"))
    assert quick == {"mcam": demo.QUICK["mcam"]}
    assert demo_command.demo_settings(args(images=5))["classic"].images == 5
    with pytest.raises(ValueError, match="unknown demo part"):
        demo_command.demo_settings(args(parts="mcam,nope"))


def test_summary_table_has_a_line_per_part_and_a_total(runs) -> None:
    _, first, _ = runs
    lines = demo.summary_table(first).splitlines()
    assert lines[0].split() == ["part", "time", "training", "result"]
    assert [line.split()[0] for line in lines[1:]] == ["mcam", "embedding", "total"]
    assert "trained" in lines[1] and "mAP" in lines[1]


@pytest.mark.parametrize(("sharpness", "base", "words"), [
    (1.0, "none", "channel weights exp(τ) (the seed's weights)"),
    (30.0, "none", "channel weights exp(30 τ)"),
    (0.0, "value", "channel weights the gradient of the memory classifier's value half"),
    (1.0, "address", "channel weights the gradient of the found slot's key address × exp(τ)"),
])
def test_the_mcam_configuration_is_described_as_run(sharpness: float, base: str,
                                                     words: str) -> None:
    settings = demo.McamSettings(sharpness=sharpness, base=base)
    assert mcam_configuration(settings) == words
