"""The Ray engine gives the local engine's results, on a local Ray instance with 2 CPUs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camkit.batch import ModelSpec, explain_dataset

ray = pytest.importorskip(
    "ray", reason="the Ray engine needs Ray: pip install 'camkit[ray]' (or 'ray[data]')")
pytest.importorskip("ray.data", reason="the Ray engine needs Ray Data: pip install 'ray[data]'")
# Ray Data reads its own deprecated settings when it copies its context.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

SETTINGS = {"methods": ["gradcam", "gradcam++"], "model": ModelSpec("mobilenet_v3_small",
                                                                    random_init=True),
            "batch_size": 2, "shard_size": 3, "map_size": 28, "progress": False}


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture
def images(tmp_path: Path) -> str:
    folder = tmp_path / "images"
    rng = np.random.default_rng(1)
    for i in range(7):
        (folder / f"part{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20 + i, 28, 3), dtype=np.uint8)).save(
            folder / f"part{i % 2}" / f"{i}.png")
    (folder / "part0" / "broken.png").write_text("not a picture")
    return f"folder:{folder}"


def test_ray_engine_equals_local_engine(local_ray: None, images: str, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = explain_dataset(images, tmp_path / "local", workers=0, **SETTINGS)
    finally:
        torch.set_num_threads(threads)
    on_ray = explain_dataset(images, tmp_path / "ray", engine="ray", **SETTINGS)
    assert on_ray.complete and len(on_ray) == 7
    assert list(on_ray) == list(local) and on_ray.failed == local.failed
    assert set(on_ray.failed) == {"part0/broken.png"}
    for method in SETTINGS["methods"]:
        assert torch.equal(on_ray.maps(method), local.maps(method))
        assert torch.equal(on_ray.constant(method), local.constant(method))
    assert torch.equal(on_ray.scores(), local.scores())
    assert torch.equal(on_ray.targets(), local.targets())
    manifests = [json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("local", "ray")]
    assert manifests[0]["settings"] == manifests[1]["settings"]
    assert manifests[0]["shards"] == manifests[1]["shards"]

    # The same folder format either way: a shard lost from the local run is redone on Ray.
    (tmp_path / "local" / "shard-00001.safetensors").unlink()
    with pytest.warns(RuntimeWarning, match="shard-00001.safetensors is missing"):
        resumed = explain_dataset(images, tmp_path / "local", engine="ray", **SETTINGS)
    assert resumed.complete
    assert torch.equal(resumed.maps("gradcam"), on_ray.maps("gradcam"))
