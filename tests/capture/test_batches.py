"""camkit.capture.batches: batches under a memory budget, and the search for the fastest size."""

from __future__ import annotations

import pytest
import torch

from camkit.capture import batches
from camkit.capture.batches import Batching, SizeSearch, run_items
from camkit.metrics import faithfulness


def walk(search: SizeSearch, per_item: dict[int, float], rounds: int) -> list[int]:
    """The sizes a search picks when a batch of ``n`` items takes ``n · per_item[n]`` s."""
    sizes = [search.size]
    for _ in range(rounds):
        sizes.append(search.next_size(sizes[-1], sizes[-1] * per_item[sizes[-1]]))
    return sizes


def test_the_search_doubles_while_items_get_cheaper_then_keeps_the_best():
    per_item = {4: 1.0, 8: 0.6, 16: 0.5, 32: 0.52, 64: 0.1}  # 64 is never tried: 32 was slower
    search = SizeSearch(cap=64, key="model-a")
    assert walk(search, per_item, 6) == [4, 4, 8, 16, 32, 16, 16]  # warm-up batch first
    assert SizeSearch(cap=64, key="model-a").size == 16  # remembered under its key
    assert SizeSearch(cap=8, key="model-a").size == 8  # never above the memory bound
    assert SizeSearch(cap=64, key="model-b").size == 4


def test_small_gains_do_not_grow_the_batch_and_the_cap_stops_it():
    assert walk(SizeSearch(cap=64), {4: 1.0, 8: 0.97}, 4) == [4, 4, 8, 4, 4]
    assert walk(SizeSearch(cap=6), {4: 1.0, 6: 0.5}, 4) == [4, 4, 6, 6, 6]


def test_a_short_last_batch_is_not_a_measurement():
    search = SizeSearch(cap=64)
    search.next_size(4, 100.0)  # warm-up
    assert search.next_size(2, 100.0) == 4 and search.best is None


@pytest.mark.parametrize("batch_size", [1, 3, 50, None, "auto"])
def test_results_do_not_depend_on_the_batches(batch_size):
    values = torch.randn(37, 2)
    size = Batching(batch_size, max_batch_memory=1000).sizes(100)
    got = run_items(37, lambda index: values[index] * 2, size, device=values.device,
                    desc="test", progress=False)
    assert torch.equal(got, values * 2)


def test_bad_batch_sizes_are_refused():
    for bad in (0, -1, 2.5, "fast", True):
        with pytest.raises(ValueError, match="batch_size"):
            Batching(bad)  # type: ignore[arg-type]


def test_a_metric_is_the_same_with_every_batch_size(monkeypatch):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                                torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 5)).eval()
    x, maps = torch.randn(3, 3, 8, 8), torch.rand(3, 2, 8, 8)
    targets = torch.tensor([[0, 1], [2, 3], [4, 0]])
    monkeypatch.setattr(batches, "_found", type(batches._found)())
    fixed = faithfulness.deletion_auc(model, x, maps, targets, batch_size=1, steps=8)
    auto = faithfulness.deletion_auc(model, x, maps, targets, steps=8)
    torch.testing.assert_close(auto, fixed, rtol=0, atol=1e-6)
