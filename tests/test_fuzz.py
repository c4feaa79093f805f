"""Fuzzing (hypothesis): over image files, targets, layers and artefact files, every call
gives a valid map or a typed error, and the model is left exactly as it was."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import camkit
from camkit.data import Preprocess, load_image
from camkit.memory import BiasReducingMemory
from tests.models import TinyCNN

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

TYPED_ERRORS = (ValueError, TypeError, OSError)
FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
MODEL = TinyCNN(classes=4)
LAYERS = [name for name, _ in MODEL.named_modules()] + ["features.-1", "features.9", "nope"]
METHODS = ["gradcam", "gradcam++", "layercam", "scorecam", "ablationcam", "eigencam",
           "guided-backprop", "occlusion"]
TARGETS = st.one_of(st.none(), st.integers(-2, 6), st.text(max_size=3),
                    st.lists(st.integers(-1, 5), min_size=1, max_size=3),
                    st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=2),
                             min_size=2, max_size=2))


def model_state(model: torch.nn.Module) -> tuple[list, list, dict]:
    return ([m.training for m in model.modules()],
            [p.requires_grad for p in model.parameters()],
            {k: v.clone() for k, v in model.state_dict().items()})


def assert_same_state(model: torch.nn.Module, before: tuple[list, list, dict]) -> None:
    training, requires, tensors = model_state(model)
    assert training == before[0] and requires == before[1]
    assert all(torch.equal(tensors[k], before[2][k]) for k in tensors)
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())


@FUZZ
@given(layer=st.sampled_from(LAYERS), targets=TARGETS, method=st.sampled_from(METHODS),
       train=st.booleans(), batch=st.integers(0, 3), side=st.integers(1, 12))
def test_explain_gives_a_valid_map_or_a_typed_error(layer, targets, method, train, batch,
                                                     side):
    MODEL.train(train)
    before = model_state(MODEL)
    x = torch.rand(batch, 3, side, side, generator=torch.Generator().manual_seed(side))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expl = camkit.explain(MODEL, x, targets, [method], layer, eval_mode=not train)
    except TYPED_ERRORS:
        pass
    else:
        maps = expl[method]
        assert maps.shape[0] == batch and maps.shape[-2:] == (side, side)
        assert bool(torch.isfinite(maps).all()) and 0 <= float(maps.min())
        assert float(maps.max()) <= 1
    assert_same_state(MODEL, before)


MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "I;16", "I", "F", "CMYK", "YCbCr"]


@FUZZ
@given(mode=st.sampled_from(MODES), width=st.integers(1, 40), height=st.integers(1, 40),
       fmt=st.sampled_from(["PNG", "TIFF", "GIF", "JPEG", "BMP", "WEBP"]),
       seed=st.integers(0, 2**16), cut=st.one_of(st.none(), st.integers(0, 400)))
def test_any_image_file_loads_as_rgb_or_raises_value_error(tmp_path_factory, mode, width,
                                                            height, fmt, seed, cut):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    try:
        Image.fromarray(pixels).convert(mode).save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):
        hypothesis.assume(False)  # Pillow cannot write this mode in this format
    data = buffer.getvalue()
    path = tmp_path_factory.mktemp("images") / f"image.{fmt.lower()}"
    path.write_bytes(data if cut is None else data[:cut])  # cut: a truncated file
    try:
        image = load_image(path)
    except ValueError:
        return
    assert image.mode == "RGB" and image.size == (width, height)
    tensor = Preprocess(16, (0.5,) * 3, (0.5,) * 3, None)(image)
    assert tensor.shape == (3, 16, 16) and bool(torch.isfinite(tensor).all())


@FUZZ
@given(data=st.binary(max_size=3000))
def test_any_bytes_as_an_image_file_load_or_raise_value_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("bytes") / "image.png"
    path.write_bytes(data)
    try:
        assert load_image(path).mode == "RGB"
    except ValueError:
        pass


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


@pytest.fixture(scope="module")
def memory_bytes(tmp_path_factory) -> bytes:
    memory = BiasReducingMemory(6, (2, 2), num_classes=3, layer="features")
    return memory.save(tmp_path_factory.mktemp("memory") / "m.safetensors").read_bytes()


@FUZZ
@given(field=st.sampled_from(["slots", "channels", "spatial_size", "num_classes", "class_names",
                              "layer", "addr_temperature", "format_version", "input_size"]),
       value=JSON)
def test_a_memory_with_any_config_value_loads_or_raises_value_error(tmp_path_factory,
                                                                     memory_bytes, field,
                                                                     value):
    from safetensors.torch import load, save_file

    header = json.loads(json.loads(_metadata(memory_bytes))["camkit"])
    header[field] = value
    path = tmp_path_factory.mktemp("memory") / "m.safetensors"
    save_file(load(memory_bytes), str(path), metadata={"camkit": json.dumps(header)})
    check_memory_file(path)


@FUZZ
@given(position=st.integers(0, 10**6), byte=st.integers(0, 255), truncate=st.booleans())
def test_a_damaged_memory_file_loads_or_raises_value_error(tmp_path_factory, memory_bytes,
                                                           position, byte, truncate):
    data = bytearray(memory_bytes)
    position %= len(data)
    if truncate:
        del data[position:]
    else:
        data[position] = byte
    path = tmp_path_factory.mktemp("memory") / "m.safetensors"
    path.write_bytes(bytes(data))
    check_memory_file(path)


def check_memory_file(path) -> None:
    """Loading gives a usable memory (finite, explains TinyCNN's layer) or a ValueError."""
    try:
        memory = BiasReducingMemory.load(path)
    except ValueError:
        return
    assert all(bool(torch.isfinite(p).all()) for p in memory.parameters())
    before = model_state(MODEL.eval())
    try:
        expl = camkit.explain(MODEL, torch.rand(1, 3, 4, 4), 0, ["mcam"], "features",
                              memory=memory)
    except TYPED_ERRORS:
        pass
    else:
        assert bool(torch.isfinite(expl["mcam"]).all())
    assert_same_state(MODEL, before)


def _metadata(data: bytes) -> str:
    """The JSON header of a safetensors file's bytes (its ``__metadata__`` entry)."""
    size = int.from_bytes(data[:8], "little")
    return json.dumps(json.loads(data[8:8 + size])["__metadata__"])
