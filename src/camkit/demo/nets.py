"""The demo's small networks: a four-convolution CNN, its training loops and its file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from camkit.artifacts import check_format, check_tensors, read_safetensors, write_safetensors
from camkit.embedding import squared_distances
from camkit.progress import Progress

NET_FORMAT = "camkit.demo-net"


class DemoNet(nn.Module):
    """Four 3×3 convolutions with ReLU (``features``: ``(B, 2·width, H/8, W/8)``), global
    average pooling and a linear layer: class logits (a GAP → FC head), or with
    ``embedding=True`` an L2-normalised embedding of ``outputs`` dimensions."""

    def __init__(self, outputs: int, width: int = 32, embedding: bool = False) -> None:
        super().__init__()
        wide = 2 * width
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, 2, 1), nn.ReLU(), nn.Conv2d(width, wide, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(wide, wide, 3, 1, 1), nn.ReLU(), nn.Conv2d(wide, wide, 3, 2, 1), nn.ReLU())
        self.fc = nn.Linear(wide, outputs)
        self.embedding = embedding

    def forward(self, x: Tensor) -> Tensor:
        out = self.fc(self.features(x).mean(dim=(2, 3)))
        return F.normalize(out, dim=1) if self.embedding else out


def seeded_net(seed: int, *args: Any, **kwargs: Any) -> DemoNet:
    """A :class:`DemoNet` initialised from ``seed`` (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DemoNet(*args, **kwargs)


def train_net(net: nn.Module, batches: Iterator[tuple[Tensor, Tensor]],
              loss_fn: Callable[[Tensor, Tensor], Tensor], steps: int, desc: str,
              progress: bool | None, lr: float = 3e-3) -> nn.Module:
    """``steps`` Adam steps of ``loss_fn(net(x), y)`` over ``batches``; returns the network
    frozen and in eval mode."""
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    with Progress(steps, desc, progress, unit="step") as bar:
        for _, (x, y) in zip(range(steps), batches, strict=False):
            loss = loss_fn(net(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            bar.update(1)
    return net.eval().requires_grad_(False)


def random_batches(x: Tensor, y: Tensor, size: int, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless shuffled epochs of ``(x, y)`` in batches of ``size``."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        for rows in torch.randperm(len(x), generator=generator).split(size):
            yield x[rows], y[rows]


def balanced_batches(x: Tensor, labels: Tensor, per_class: int, seed: int
                     ) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless batches of ``per_class`` images (drawn with replacement) of every class."""
    generator = torch.Generator().manual_seed(seed)
    members = [(labels == c).nonzero()[:, 0] for c in labels.unique()]
    while True:
        rows = torch.cat([m[torch.randint(len(m), (per_class,), generator=generator)]
                          for m in members])
        yield x[rows], labels[rows]


def batch_hard_loss(embeddings: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Batch-hard triplet loss (Hermans, Beyer & Leibe 2017): every anchor with its farthest
    positive and nearest negative of the batch, ``mean [d(a,p) − d(a,n) + m]_+``."""
    d = squared_distances(embeddings, embeddings)
    same = labels[:, None] == labels[None]
    farthest_positive = d.masked_fill(~same, 0.0).amax(dim=1)
    nearest_negative = d.masked_fill(same, float("inf")).amin(dim=1)
    return F.relu(farthest_positive - nearest_negative + margin).mean()


def save_net(net: nn.Module, path: Path) -> Path:
    """The network's weights as safetensors (see :func:`camkit.artifacts.write_safetensors`)."""
    tensors = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    return write_safetensors(tensors, {"format": NET_FORMAT}, path)


def load_net(net: nn.Module, path: Path) -> nn.Module:
    """``net`` with the weights of a :func:`save_net` file; frozen and in eval mode."""
    tensors, header = read_safetensors(path, "demo network")
    check_format(header, NET_FORMAT, None, path, "camkit demo network")
    expected = {k: (tuple(v.shape), v.dtype) for k, v in net.state_dict().items()}
    check_tensors(tensors, expected, path, "demo network")
    net.load_state_dict(tensors)
    return net.eval().requires_grad_(False)
