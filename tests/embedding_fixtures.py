"""A tiny embedding network and labelled images shared by the embedding tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

MARGIN = 0.5


class TinyEmbedding(nn.Module):
    """``features`` (conv → ReLU → strided conv → ReLU, ``(B, 8, 6, 6)`` for 12 × 12 inputs),
    then a non-linear head (1×1 conv → ReLU → 2×2 max pool → linear), L2-normalised output:
    gradients at ``features`` vary across positions."""

    def __init__(self, dim: int = 5, channels: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(),
            nn.Conv2d(6, channels, 3, padding=1, stride=2), nn.ReLU(),
        )
        self.mix = nn.Conv2d(channels, 6, 1)
        self.fc = nn.Linear(6 * 4, dim)

    def head(self, acts: Tensor) -> Tensor:
        """The embedding from the ``features`` activation."""
        pooled = F.adaptive_max_pool2d(F.relu(self.mix(acts)), 2)
        return F.normalize(self.fc(pooled.flatten(1)), dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def tiny_embedding(seed: int = 0) -> TinyEmbedding:
    torch.manual_seed(seed)
    return TinyEmbedding().eval()


def labelled_images(n: int = 12, classes: int = 3, seed: int = 1) -> tuple[Tensor, Tensor]:
    """``(n, 3, 12, 12)`` images and ``(n,)`` labels ``0, 1, ..., classes - 1, 0, ...``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 12, 12, generator=g), torch.arange(n) % classes


def loop_gradient(model: TinyEmbedding, anchor: Tensor, positive: Tensor, negative: Tensor,
                  hinge: bool = True, margin: float = MARGIN) -> tuple[Tensor, Tensor]:
    """``(A (C, h, w), ∂L/∂A (C, h, w))`` of one triplet, the obvious way."""
    acts = model.features(anchor[None]).detach().requires_grad_(True)
    e_a = model.head(acts)[0]
    with torch.no_grad():
        e_p, e_n = model(positive[None])[0], model(negative[None])[0]
    loss = ((e_a - e_p) ** 2).sum() - ((e_a - e_n) ** 2).sum() + margin
    loss = torch.clamp(loss, min=0) if hinge else loss
    (grad,) = torch.autograd.grad(loss, acts)
    return acts[0].detach(), grad[0]
