"""Tiny models shared by the tests."""

from __future__ import annotations

import torch
from torch import nn


class TinyCNN(nn.Module):
    """conv → ReLU → conv → ReLU ("features") → global average pool → fc: a GAP → FC head."""

    def __init__(self, classes: int = 5, channels: int = 6, inplace: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=inplace),
            nn.Conv2d(4, channels, 3, padding=1, stride=2), nn.ReLU(inplace=inplace),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class TinyDeepHead(nn.Module):
    """A non-linear head after the layer ("body"): conv → ReLU → pool → fc, so gradients vary
    across positions and Grad-CAM differs from HiRes-CAM, Grad-CAM++ and XGrad-CAM."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.Tanh())
        self.head = nn.Sequential(
            nn.Conv2d(5, 7, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(2), nn.Flatten(),
            nn.Linear(28, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class LinearScore(nn.Module):
    """Two classes with logits ``(Σ_chw w ⊙ x, 0)``: a linear model whose per-pixel effects
    ``Σ_c w_c x_c`` are known exactly."""

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, height, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (self.weight * x).sum(dim=(1, 2, 3))
        return torch.stack([score, torch.zeros_like(score)], dim=1)


def metric_case(targets: list[list[int]], size: tuple[int, int], seed: int
                ) -> tuple[TinyCNN, torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator]:
    """A seeded 5-class :class:`TinyCNN`, random images ``(B, 3, H, W)`` and maps
    ``(B, K, H, W)`` for ``targets`` ``(B, K)``, and the generator that drew them (for more
    draws in the same stream)."""
    torch.manual_seed(0)
    model = TinyCNN(classes=5).eval()
    g = torch.Generator().manual_seed(seed)
    chosen = torch.tensor(targets)
    x = torch.randn(chosen.shape[0], 3, *size, generator=g)
    maps = torch.rand(*chosen.shape, *size, generator=g)
    return model, x, maps, chosen, g


def labelled_case(images: int, size: int) -> tuple[TinyCNN, list[dict[str, object]]]:
    """A seeded 4-class :class:`TinyCNN` and ``images`` random ``(3, size, size)`` samples
    labelled 0, 1, 2, 3, 0, … (a data set for :func:`camkit.evaluate`)."""
    torch.manual_seed(0)
    model = TinyCNN(classes=4).eval()
    g = torch.Generator().manual_seed(1)
    data = [{"image": torch.randn(3, size, size, generator=g), "label": i % 4}
            for i in range(images)]
    return model, data
