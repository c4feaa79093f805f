"""camkit.batch: data-set jobs, their shards and manifest, reading results back, the CLI."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

import camkit
from camkit.batch import (
    FolderBusy,
    ModelSpec,
    SettingsMismatch,
    explain_dataset,
    open_results,
)
from camkit.batch.store import BatchResult, decode, encode
from camkit.cli import explain_dataset as explain_dataset_command
from camkit.cli.arguments import parse_options

SPEC = ModelSpec("mobilenet_v3_small", random_init=True)  # ~20 ms per 224² image on 1 core


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread: on a shared 2-core machine, spinning threads only waste time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_images(folder: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` noise images of assorted sizes, every third in a sub-folder; their ids."""
    rng = np.random.default_rng(seed)
    ids = []
    for i in range(n):
        rel = f"sub/img{i:02d}.png" if i % 3 == 0 else f"img{i:02d}.jpg"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / rel)
        ids.append(rel)
    return sorted(ids)


def run_job(data: object, out: Path, **kwargs: object) -> camkit.batch.DatasetResults:
    settings = {"model": SPEC, "batch_size": 3, "shard_size": 4, "workers": 0,
                "progress": False} | kwargs
    return explain_dataset(data, out, **settings)  # type: ignore[arg-type]


def test_stored_maps_equal_explain_on_the_same_batches(tmp_path: Path) -> None:
    ids = make_images(tmp_path / "images", 7)
    results = run_job(f"folder:{tmp_path / 'images'}", tmp_path / "out",
                      methods=["gradcam", "layercam"], map_size=56, workers=1)
    assert list(results) == ids and results.complete and not results.failed
    loaded = SPEC.load()
    x = torch.stack([loaded.preprocess(camkit.data.load_image(tmp_path / "images" / i))
                     for i in ids])
    for start, stop in [(0, 3), (3, 4), (4, 7)]:  # batches of 3 inside shards of 4
        expl = camkit.explain(loaded.model, x[start:stop], None, ["gradcam", "layercam"],
                              loaded.layer)
        chunk = ids[start:stop]
        for method in ("gradcam", "layercam"):
            expected = F.interpolate(expl[method], size=(56, 56), mode="area").half().float()
            assert torch.equal(results.maps(method, chunk), expected)
            assert torch.equal(results.constant(method, chunk), expl.constant[method])
        assert torch.equal(results.scores(chunk), expl.scores)
        assert torch.equal(results.targets(chunk), expl.targets)
    one = results[ids[5]]
    assert one.maps["gradcam"].shape == (1, 56, 56)
    assert torch.equal(one.maps["layercam"], results.maps("layercam", [ids[5]])[0])
    assert results.maps("gradcam", [ids[6], ids[0]]).shape == (2, 1, 56, 56)
    assert torch.equal(results.maps("gradcam", [ids[6], ids[0]])[0], results.maps("gradcam")[6])


def test_manifest_records_settings_versions_and_shards(tmp_path: Path) -> None:
    ids = make_images(tmp_path / "images", 5)
    run_job(f"folder:{tmp_path / 'images'}", tmp_path / "out", methods="gradcam++")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    settings = manifest["settings"]
    assert settings["model"] == {"arch": "mobilenet_v3_small", "weights_sha256": None,
                                 "random_init": True, "seed": 0}
    assert settings["layer"] == "features" and settings["methods"] == ["gradcam++"]
    assert (settings["map_size"], settings["dtype"], settings["target"]) == (224, "float16",
                                                                               "pred")
    assert manifest["versions"]["torch"] == torch.__version__
    assert [(s["start"], s["stop"], s["images"], s["complete"]) for s in manifest["shards"]] == [
        (0, 4, 4, True), (4, 5, 1, True)]
    assert json.loads((tmp_path / "out" / "ids.json").read_text()) == ids
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        ".lock", "ids.json", "manifest.json", "shard-00000.safetensors",
        "shard-00001.safetensors"]


def test_unreadable_images_are_recorded_with_the_reason_and_skipped(tmp_path: Path) -> None:
    ids = make_images(tmp_path / "images", 4)
    (tmp_path / "images" / "broken.jpg").write_text("not a picture")
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(["# one path per line", *[f"images/{i}" for i in ids[:2]],
                                  "images/missing.png", "images/broken.jpg"]) + "\n")
    results = run_job(f"list:{listing}", tmp_path / "out")
    assert list(results) == [f"images/{i}" for i in ids[:2]]
    assert set(results.failed) == {"images/missing.png", "images/broken.jpg"}
    assert "FileNotFoundError" in results.failed["images/missing.png"]
    assert "cannot read" in results.failed["images/broken.jpg"]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [f["id"] for f in manifest["shards"][0]["failed"]] == ["images/missing.png",
                                                                  "images/broken.jpg"]
    assert manifest["complete"] and manifest["shards"][0]["images"] == 2
    with pytest.raises(KeyError, match="could not be read"):
        results["images/broken.jpg"]


def test_a_batch_with_no_readable_image_still_completes_its_shard(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        (folder / name).write_bytes(b"\x89PNG broken")
    results = run_job(f"folder:{folder}", tmp_path / "out")
    assert results.complete and len(results) == 0 and set(results.failed) == {"a.png", "b.png"}
    assert results.maps("gradcam").shape == (0, 1, 224, 224)


def test_other_settings_are_refused_naming_what_differs(tmp_path: Path) -> None:
    make_images(tmp_path / "images", 3)
    data, out = f"folder:{tmp_path / 'images'}", tmp_path / "out"
    run_job(data, out, map_size=28)
    written = (out / "shard-00000.safetensors").stat().st_mtime_ns
    with pytest.raises(SettingsMismatch) as refused:
        run_job(data, out, methods=["gradcam++"], map_size=56)
    message = str(refused.value)
    assert "methods: ['gradcam'] in the folder, ['gradcam++'] now" in message
    assert "map_size: 28 in the folder, 56 now" in message and "shard_size" not in message
    # Batch size and workers are not settings; the job is complete, so nothing is recomputed.
    again = run_job(data, out, map_size=28, batch_size=2, workers=1)
    assert again.complete and len(again) == 3
    assert (out / "shard-00000.safetensors").stat().st_mtime_ns == written
    make_images(tmp_path / "images", 4)  # one image more: another data set
    with pytest.raises(SettingsMismatch, match="data.images: 3 in the folder, 4 now"):
        run_job(data, out, map_size=28)


def test_a_folder_holding_other_files_or_in_use_is_refused(tmp_path: Path) -> None:
    make_images(tmp_path / "images", 2)
    data = f"folder:{tmp_path / 'images'}"
    (tmp_path / "busy").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty .*notes.txt.* holds no camkit manifest"):
        run_job(data, tmp_path / "full")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "busy" / ".lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderBusy, match="another camkit job is writing"):
            run_job(data, tmp_path / "busy")
    finally:
        holder.kill()
        holder.wait()


# Another process holding a folder's lock (a job writing into it), until it is killed.
HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


def test_a_damaged_shard_is_recomputed_on_rerun(tmp_path: Path) -> None:
    make_images(tmp_path / "images", 6)
    data, out = f"folder:{tmp_path / 'images'}", tmp_path / "out"
    first = run_job(data, out, map_size=16)
    reference = first.maps("gradcam")
    shard = out / "shard-00001.safetensors"
    untouched = (out / "shard-00000.safetensors").stat().st_mtime_ns
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.warns(RuntimeWarning, match="shard-00001.safetensors is missing or damaged"):
        second = run_job(data, out, map_size=16)
    assert torch.equal(second.maps("gradcam"), reference)
    assert (out / "shard-00000.safetensors").stat().st_mtime_ns == untouched


def test_python_data_sets_with_labels_ids_and_topk(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
              for _ in range(5)]
    labels = [7, 0, 999, 42, 7]
    names = [f"photo-{i}" for i in range(5)]
    by_label = run_job(list(zip(images, labels, strict=True)), tmp_path / "label",
                       target="label", ids=names)
    assert list(by_label) == names
    assert by_label.targets().flatten().tolist() == labels
    top = run_job(images, tmp_path / "top", target="top3", map_size=8)
    assert list(top) == ["0", "1", "2", "3", "4"] and top.maps("gradcam").shape == (5, 3, 8, 8)
    loaded = SPEC.load()
    logits = loaded.model(torch.stack([loaded.preprocess(i) for i in images]))
    assert torch.equal(top.targets(), logits.topk(3, dim=1).indices)
    with pytest.raises(ValueError, match="target 'label' needs a label for every image"):
        run_job(images, tmp_path / "nolabel", target="label")


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"data": "images:/nowhere"}, ValueError, "unknown data spec 'images:/nowhere'; use folder"),
    ({"data": "folder:/no/such/dir"}, FileNotFoundError, "no folder at"),
    ({"data": "list:/no/such/file"}, FileNotFoundError, "no list file at"),
    ({"data": "folder:EMPTY"}, ValueError, "no images found"),
    ({"data": 42}, TypeError, "spec string"),
    ({"map_size": 300}, ValueError, "map_size must be 1..224"),
    ({"options": {"memory": object()}}, TypeError, "unknown option"),
    ({"methods": "cam", "options": {"fc": object()}}, TypeError, "cannot be recorded"),
    ({"target": "top0"}, ValueError, "K must be 1..1000"),
    ({"target": "no such class"}, ValueError, "no class named"),
    ({"engine": "spark"}, ValueError, "unknown engine 'spark'; use one of local, ray"),
    ({"batch_size": 0}, ValueError, "batch_size must be an integer >= 1"),
    ({"workers": -1}, ValueError, "workers must be an integer >= 0"),
    ({"layer": "features.99"}, ValueError, "features"),
    ({"methods": "gradcma"}, ValueError, "Did you mean 'gradcam'"),
    ({"methods": []}, ValueError, "methods is empty"),
    ({"model": torch.nn.Linear(2, 2)}, TypeError, "ModelSpec or an architecture name"),
])
def test_bad_input_gets_a_clear_error(tmp_path: Path, kwargs: dict, error: type,
                                      match: str) -> None:
    make_images(tmp_path / "images", 1)
    (tmp_path / "EMPTY").mkdir()
    data = kwargs.pop("data", f"folder:{tmp_path / 'images'}")
    if data == "folder:EMPTY":
        data = f"folder:{tmp_path / 'EMPTY'}"
    with pytest.raises(error, match=match):
        run_job(data, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_the_ray_engine_without_ray_says_how_to_install_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_images(tmp_path / "images", 1)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'camkit\[ray\]'"):
        run_job(f"folder:{tmp_path / 'images'}", tmp_path / "out", engine="ray")
    assert not (tmp_path / "out").exists()


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'a' appears more than once"):
        run_job([torch.zeros(3, 8, 8)] * 2, tmp_path / "out", ids=["a", "a"])


def test_batch_results_round_trip_through_safetensors_bytes() -> None:
    result = BatchResult(
        index=np.array([3, 5]), scores=np.array([[1.5], [-2.0]], np.float32),
        targets=np.array([[1], [2]]), maps={"gradcam++": np.ones((2, 1, 4, 4), np.float16)},
        constant={"gradcam++": np.array([[False], [True]])}, failed=[(4, "ValueError: bad")])
    back = decode(encode(result))
    assert back.failed == result.failed and back.positions == [3, 5, 4]
    for name, array in result.tensors().items():
        np.testing.assert_array_equal(back.tensors()[name], array)
        assert back.tensors()[name].dtype == array.dtype
    merged = BatchResult.concat([back, decode(encode(BatchResult(
        index=np.array([0]), scores=np.zeros((1, 1), np.float32), targets=np.zeros((1, 1), int),
        maps={"gradcam++": np.zeros((1, 1, 4, 4), np.float16)},
        constant={"gradcam++": np.zeros((1, 1), bool)})))])
    assert merged.index.tolist() == [0, 3, 5] and merged.scores[:, 0].tolist() == [0, 1.5, -2]


def test_cli_explain_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_images(tmp_path / "images", 3)
    (tmp_path / "images" / "broken.png").write_text("no")
    parser = argparse.ArgumentParser(prog="camkit")
    explain_dataset_command.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([
        "explain-dataset", "--data", f"folder:{tmp_path / 'images'}", "--out",
        str(tmp_path / "out"), "--methods", "gradcam,xgradcam", "--arch", "mobilenet_v3_small",
        "--random-init", "--map-size", "14", "--shard-size", "2", "--batch-size", "2",
        "--workers", "0", "--target", "3", "--no-progress"])
    assert args.run(args) == 1  # an image was skipped
    captured = capsys.readouterr()
    assert captured.out.strip() == (f"3 images explained with gradcam, xgradcam into "
                                    f"{tmp_path / 'out'} (2 shards; 1 unreadable images skipped "
                                    "(listed in the manifest))")
    assert "camkit: skipped broken.png: ValueError: cannot read" in captured.err
    results = open_results(tmp_path / "out")
    assert results.settings["target"] == "class:3"
    assert results.targets().flatten().tolist() == [3, 3, 3]


def test_parse_options() -> None:
    assert parse_options(["batch_size=64", "mode=fast", "ratio=0.5"]) == {
        "batch_size": 64, "mode": "fast", "ratio": 0.5}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_options(["oops"])


def test_open_results_of_a_folder_without_results(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no camkit results in"):
        open_results(tmp_path)


def test_the_default_shard_keeps_the_work_of_a_short_job(tmp_path: Path) -> None:
    from camkit.batch.runner import default_shard_size

    assert default_shard_size(200, 8) == 10 and default_shard_size(10, 8) == 8
    assert default_shard_size(10**6, 32) == 1000
    make_images(tmp_path / "images", 6)
    results = run_job(f"folder:{tmp_path / 'images'}", tmp_path / "out", shard_size=None,
                      batch_size=1, map_size=14)
    assert len(results.manifest["shards"]) == 6  # a kill loses at most one image's work
