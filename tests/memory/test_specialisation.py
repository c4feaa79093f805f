"""Does the memory specialise? A toy set where each class has its own pattern: every class
must land in its own slot and the slot search must return it; the random start of the seed's
§1.7 (the control) does not get there. Also the diagnostics, the collapse warning and what
they leave in the memory file."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from camkit.memory import BiasReducingMemory, train_memory
from camkit.memory.diagnostics import collapse_reasons, spatial_drift, summary_lines
from camkit.memory.init import class_templates
from tests.memory_fixtures import single_thread  # noqa: F401  (a fixture)

pytestmark = pytest.mark.usefixtures("single_thread")
CLASSES, CHANNELS, SIDE = 4, 8, 4


def toy_features(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` feature maps ``(n, 8, 4, 4)`` and multi-hot labels ``(n, 4)`` (each class present
    with probability 0.4): a noisy background of 0.2 plus, for every present class ``k``, its
    pattern: channels ``2k, 2k+1`` at 1 on the ``k``-th 2×2 quadrant."""
    generator = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, CLASSES, generator=generator) < 0.4).float()
    patterns = torch.zeros(CLASSES, CHANNELS, SIDE, SIDE)
    for k in range(CLASSES):
        rows, cols = 2 * (k // 2), 2 * (k % 2)
        patterns[k, 2 * k:2 * k + 2, rows:rows + 2, cols:cols + 2] = 1.0
    noise = 0.05 * torch.rand(n, CHANNELS, SIDE, SIDE, generator=generator)
    return 0.2 + noise + torch.einsum("nk,kchw->nchw", labels, patterns), labels


def train_toy(seed: int, **options: object) -> BiasReducingMemory:
    features, labels = toy_features(512, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the control collapses
        return train_memory(lambda x: x, "toy", TensorDataset(features, labels), CLASSES,
                            epochs=10, batch_size=32, seed=seed, progress=False, **options)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_class_lands_in_its_own_slot_and_the_search_returns_it(seed: int) -> None:
    """Defaults (class-template start, T = 0.1): slot ``n`` belongs to class ``n mod 4``. For
    every class the search of Algorithm 1 returns one of that class's slots, and p_s picks
    the slot p' picks for most images of the class (measured ≥ 0.43 over seeds 0-3)."""
    record = train_toy(seed).metrics["diagnostics"]
    assert [slot % CLASSES for slot in record["search_slot"]] == list(range(CLASSES))
    assert min(record["search_slot_share"]) >= 0.4
    assert min(record["agreement_spatial"]) >= 0.4
    assert record["entropy_spatial"] < 0.7 * record["max_entropy"]


def test_the_random_start_of_the_seed_does_not_specialise() -> None:
    """The control: from ``K, S ~ N(0, 1)`` the same training leaves S near its start and the
    search returns the same slot for several classes (measured: slots [0, 0, 6, 6])."""
    record = train_toy(0, init="random").metrics["diagnostics"]
    assert record["spatial_start_cosine"] > 0.99
    assert record["distinct_search_slots"] < CLASSES


def test_the_papers_temperature_is_flagged_as_collapsed() -> None:
    """At T = 1 even the class-template start leaves p_s within 5 % of ln N: train_memory
    warns, names the reason and records it."""
    features, labels = toy_features(256, 0)
    with pytest.warns(RuntimeWarning, match="collapsed: p_s is nearly uniform"):
        memory = train_memory(lambda x: x, "toy", TensorDataset(features, labels), CLASSES,
                              epochs=2, batch_size=32, progress=False, addr_temperature=1.0)
    assert memory.metrics["collapse"] and "nearly uniform" in memory.metrics["collapse"][0]


def test_one_slot_taking_every_image_is_warned_about() -> None:
    """Every image has the same features: p_s sends all of them to one slot, and train_memory
    warns with that slot's share (the entropy of p_s need not be high for this)."""
    features = torch.rand(1, CHANNELS, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    labels = (torch.rand(64, CLASSES, generator=torch.Generator().manual_seed(2)) < 0.4).float()
    with pytest.warns(RuntimeWarning, match=r"collapsed: .*slot \d+ takes 64 of 64 images"):
        memory = train_memory(lambda x: x, "toy", TensorDataset(features.expand(64, -1, -1, -1),
                                                                labels), CLASSES,
                              epochs=1, batch_size=32, progress=False)
    assert any("takes 64 of 64" in reason for reason in memory.metrics["collapse"])


def test_collapse_reasons_name_a_dominant_slot_and_nothing_for_a_healthy_record() -> None:
    healthy = {"entropy_spatial": 0.5, "max_entropy": math.log(8),
               "slot_usage_spatial": [10, 10, 10, 10, 0, 0, 0, 0]}
    assert collapse_reasons(healthy) == []
    dominant = healthy | {"slot_usage_spatial": [91, 9, 0, 0, 0, 0, 0, 0]}
    assert collapse_reasons(dominant) == ["slot 0 takes 91 of 100 images under p_s"]


def test_spatial_drift_is_one_and_zero_for_an_unmoved_dictionary() -> None:
    start = torch.randn(3, 2, 2, 2)
    assert spatial_drift(start, start) == pytest.approx(
        {"spatial_start_cosine": 1.0, "spatial_relative_change": 0.0})
    moved = spatial_drift(-start, start)
    assert moved["spatial_start_cosine"] == pytest.approx(-1.0)
    assert moved["spatial_relative_change"] == pytest.approx(2.0)


def test_diagnostics_are_saved_in_the_memory_file_and_printable(tmp_path) -> None:
    memory = train_toy(0)
    loaded = BiasReducingMemory.load(memory.save(tmp_path / "m.safetensors"))
    record = loaded.metrics["diagnostics"]
    assert record == memory.metrics["diagnostics"]
    assert len(record["search_slot"]) == CLASSES and len(record["slot_usage_spatial"]) == 8
    assert sum(record["slot_usage_spatial"]) == 512
    assert any(line.startswith("slot found per class") for line in summary_lines(record))


def test_class_templates_separate_two_classes_that_almost_always_co_occur() -> None:
    """Features are the sum of the present classes' templates plus a shared 0.5: the fit
    recovers each template although class 0 never appears without class 1 and class 1 only
    once without class 0 (a class mean would mix the two)."""
    templates = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 1.0]])
    labels = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    fitted = class_templates(labels @ templates + 0.5, labels)
    assert torch.allclose(fitted, templates, atol=0.05)
