"""The one data-spec grammar: parsing, errors, and ``folder:DIR`` meaning the same thing for
evaluation, multi-label training and dataset jobs."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from camkit.batch import as_source
from camkit.data import Preprocess
from camkit.data.files import evaluation_data
from camkit.data.multilabel import MultiLabelImages
from camkit.data.specs import FORMS, DataSpec, folder_images, parse_spec, spec_help


def test_parse_forms() -> None:
    assert parse_spec("coco:a.json:img", FORMS) == DataSpec("coco:a.json:img", "coco",
                                                             ("a.json", "img"))
    assert parse_spec("folder:C:/photos", FORMS).args == ("C:/photos",)  # the last arg keeps ':'
    assert parse_spec("imagenet-grid", FORMS).count(default=8) == 8
    assert parse_spec("imagenet-grid:3", FORMS).count(default=8) == 3
    assert parse_spec("quokka", FORMS).args == ()


@pytest.mark.parametrize("text, accepted, message", [
    ("coco:a.json", FORMS, "has the form coco:JSON:DIR"),
    ("quokka:x", FORMS, "has the form quokka"),
    ("synthetic:0", FORMS, "positive integer"),
    ("synthetic:", FORMS, "has the form synthetic:N"),
    ("foldr:x", ("folder", "list"), "did you mean folder:DIR"),
    ("coco:a:b", ("folder", "list"), "use folder:DIR .* or list:FILE"),
])
def test_parse_errors(text: str, accepted, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_spec(text, accepted)


def test_help_lists_the_accepted_forms() -> None:
    text = spec_help(("folder", "imagenet-grid"))
    assert text.startswith("folder:DIR (") and " or imagenet-grid[:N] (" in text


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """``loose.png``, ``cat/a.png`` (+ its mask), ``cat/deep/b.jpg``, ``dog/c.png``, a hidden
    file and a text file."""
    for name in ("loose.png", "cat/a.png", "cat/a.mask.png", "cat/deep/b.jpg", "dog/c.png",
                 ".hidden/d.png"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (200, 10, 10)).save(path)
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    return tmp_path


def test_folder_images(tree: Path) -> None:
    found = [(i.relative, i.folder) for i in folder_images(tree, "folder:x")]
    assert found == [("cat/a.png", "cat"), ("cat/deep/b.jpg", "cat"), ("dog/c.png", "dog"),
                     ("loose.png", None)]
    with pytest.raises(FileNotFoundError, match="no folder at"):
        folder_images(tree / "absent", "folder:absent")


def test_folder_means_the_same_images_everywhere(tree: Path) -> None:
    spec = f"folder:{tree}"
    job = as_source(spec)
    evaluation, kinds = evaluation_data(spec, Preprocess(8, (0.0,) * 3, (1.0,) * 3, None),
                                        ["cat", "dog"])
    assert job.ids == ["cat/a.png", "cat/deep/b.jpg", "dog/c.png", "loose.png"]
    assert [(p.relative_to(tree).as_posix(), label) for p, label in evaluation.files] == [
        ("cat/a.png", 0), ("cat/deep/b.jpg", 0), ("dog/c.png", 1), ("loose.png", None)]
    assert kinds == ("mask",) and "mask" in evaluation[0] and "mask" not in evaluation[1]
    with pytest.raises(ValueError, match="outside the class sub-folders"):
        MultiLabelImages.from_folders(tree)  # training needs every image labelled
    (tree / "loose.png").unlink()
    training = MultiLabelImages.from_folders(tree)
    assert [p.relative_to(tree).as_posix() for p in training.paths] == job.ids[:3]
    assert training.class_names == ["cat", "dog"]
