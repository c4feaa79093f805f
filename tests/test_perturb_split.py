"""camkit.split (the model cut at a layer) and camkit.progress (the one progress bar)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import camkit
from camkit import split
from camkit.progress import Progress
from tests.models import TinyCNN
from tests.test_perturbation_methods import TARGETS, ResidualNet


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))


def test_tail_with_side_values_reproduces_the_model(x):
    torch.manual_seed(0)
    net = ResidualNet().eval()
    cut = split.split_model(net, net.body)
    assert cut.head is not None  # the skip connection's input is computed before the layer
    acts = net.body(net.stem(x))
    rows = torch.tensor([1, 0, 1])
    with torch.no_grad():
        torch.testing.assert_close(cut.bind((x,))(acts[rows], rows), net(x[rows]))
    assert split.split_model(net, net.body) is cut  # cached


def test_tail_without_side_values(x):
    model = TinyCNN().eval()
    cut = split.split_model(model, model.features)
    assert cut.head is None
    with torch.no_grad():
        out = cut.tail(model.features(x))
    torch.testing.assert_close(out, model(x))


def test_unsplittable_models_say_why():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.conv(self.conv(x)).mean((1, 2, 3))

    model = Twice()
    with pytest.raises(split.SplitError, match="called 2 times"):
        split.split_model(model, model.conv)
    with pytest.raises(split.SplitError, match="whole model"):
        split.split_model(model, model)


@pytest.mark.filterwarnings("ignore:Ablation-CAM divides")
def test_a_stale_cached_split_is_retraced(x):
    torch.manual_seed(0)
    net = ResidualNet().eval()
    camkit.explain(net, x, TARGETS, "ablationcam", "body")
    net.fc = nn.Linear(6, 5)  # the cached tail still holds the old classifier
    expl = camkit.explain(net, x, TARGETS, "ablationcam", "body")
    full = camkit.explain(net, x, TARGETS, "ablationcam", "body", split=False)
    assert expl.details["ablationcam"]["path"] == "split"
    torch.testing.assert_close(expl.raw["ablationcam"], full.raw["ablationcam"])


def test_progress_appears_only_for_long_work(capsys, monkeypatch):
    monkeypatch.delenv("CAMKIT_PROGRESS", raising=False)
    with Progress(10, "quick", min_seconds=60) as quick:
        quick.update(1)
        assert not quick.shown
    with Progress(10, "slow", min_seconds=0) as slow:
        slow.update(1)  # the estimate from the first step exceeds the threshold
        assert slow.shown
        slow.update(9)
    with Progress(10, "never", show=False, min_seconds=0) as never:
        never.update(1)
        assert not never.shown
    captured = capsys.readouterr()
    assert captured.out == "" and "slow" in captured.err and "never" not in captured.err


def test_progress_environment_switch(monkeypatch):
    monkeypatch.setenv("CAMKIT_PROGRESS", "0")
    with Progress(10, "off", min_seconds=0) as off:
        off.update(1)
        assert not off.shown
    monkeypatch.setenv("CAMKIT_PROGRESS", "1")
    with Progress(10, "on", min_seconds=60) as on:
        assert on.shown
    with pytest.raises(TypeError, match="progress"):
        Progress(1, "bad", show="yes")  # type: ignore[arg-type]
