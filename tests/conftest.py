"""Fixtures shared by the tests."""

from __future__ import annotations

import pytest
import torch

from tests.models import TinyCNN, TinyDeepHead


@pytest.fixture
def tiny() -> TinyCNN:
    torch.manual_seed(0)
    return TinyCNN().eval()


@pytest.fixture
def deep() -> TinyDeepHead:
    torch.manual_seed(1)
    return TinyDeepHead().eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
