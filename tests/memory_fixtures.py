"""Small models and data shared by the M-CAM memory tests."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from camkit.data.synthetic import SyntheticMultiLabel
from camkit.memory import BiasReducingMemory


class ShapeNet(nn.Module):
    """Three stride-2 convolutions ("features", post-ReLU, 8×8 at 64×64 input) → GAP → fc."""

    def __init__(self, classes: int = 4, channels: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(16, channels, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, 2, 1), nn.ReLU(),
        )
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def stacked(data: SyntheticMultiLabel) -> tuple[Tensor, Tensor]:
    """All images ``(n, 3, H, W)`` and labels ``(n, n_cls)`` of a synthetic data set."""
    items = [data[i] for i in range(len(data))]
    return torch.stack([x for x, _, _ in items]), torch.stack([y for _, y, _ in items])


@functools.lru_cache(maxsize=2)
def synthetic_tensors(n: int, split: str = "train") -> tuple[Tensor, Tensor]:
    """:func:`stacked` ``SyntheticMultiLabel(n, seed=0, split=split)``, made once per session."""
    return stacked(SyntheticMultiLabel(n, seed=0, split=split))


@functools.lru_cache(maxsize=1)
def trained_shape_net() -> ShapeNet:
    """A :class:`ShapeNet` trained for 80 Adam steps (about two seconds on one CPU thread) on
    256 synthetic 64×64 images; frozen and in eval mode. Cached for the test session."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = ShapeNet()
        images, labels = synthetic_tensors(256)
        optimizer = torch.optim.Adam(net.parameters(), lr=5e-3)
        generator = torch.Generator().manual_seed(0)
        for _ in range(80):
            rows = torch.randint(0, len(images), (32,), generator=generator)
            loss = nn.functional.binary_cross_entropy_with_logits(net(images[rows]), labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return net.eval().requires_grad_(False)


def random_memory(channels: int = 6, size: tuple[int, int] = (4, 5), classes: int = 5,
                  slots: int | None = None, temperature: float = 1.0,
                  seed: int = 0) -> BiasReducingMemory:
    """An untrained memory with non-trivial values (V and fc scaled up so scores vary)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        memory = BiasReducingMemory(channels, size, classes, slots, temperature,
                                    layer="features", input_size=(8, 10))
        with torch.no_grad():
            memory.values.mul_(50)
            memory.fc.weight.mul_(3)
    return memory.eval()


@pytest.fixture
def single_thread() -> Iterator[None]:
    """Run a test on one CPU thread: these tensors are tiny, and two threads contending on a
    busy two-core machine make them many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
