"""Part 1: the pretrained EfficientNet-Lite0 explains real photos with every classic method."""

from __future__ import annotations

from pathlib import Path

from camkit import api
from camkit.data import imagenet_samples, quokka
from camkit.demo.settings import ClassicSettings, Part
from camkit.viz.outputs import explain_images
from camkit.viz.report import ReportSection, save_grid
from camkit.zoo import load_model


def classic_methods() -> list[str]:
    """Every registered method that needs no trained artifact and no attention (the demo's
    model is a convolutional network)."""
    return [m for m in api.available_methods() if api.registry.needed_artifact(m) is None
            and api.registry.ATTENTION not in api.registry.get_method(m).needs]


def classic_part(out: Path, s: ClassicSettings, progress: bool | None) -> Part:
    """EfficientNet-Lite0 on the quokka and ``s.images`` ImageNet samples, every classic
    method; per-photo overlays, grids and maps under ``out/images/``."""
    photo = out / "quokka.png"
    out.mkdir(parents=True, exist_ok=True)
    quokka().image.save(photo)
    paths = [photo, *(sample.path for sample in imagenet_samples()[: s.images])]
    loaded, methods = load_model(), classic_methods()
    results, _ = explain_images(paths, loaded, methods, out / "images", options=s.options())
    items = [r.report for r in results]
    section = ReportSection(
        "Classic methods on real photos", items,
        f"The pretrained {loaded.arch} (ImageNet) explains photos that ship inside installed "
        f"packages, for its top class, with every classic method ({len(methods)}).")
    first = results[0]
    return Part("classic", section, [save_grid(items, out / "grids" / "classic.png"),
                                     *(r.out_dir / "grid.png" for r in results)],
                f"{len(results)} photos × {len(methods)} methods; {first.path.stem} → "
                f"{first.predictions[0][0]} {first.predictions[0][1]:.0%}",
                {"model": loaded.arch, "layer": loaded.layer, "methods": methods,
                 **s.options()})
