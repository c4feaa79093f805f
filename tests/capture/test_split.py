"""camkit.split (the model cut at a layer), camkit.folding (the folded copy for the masked
passes), camkit.progress (the one progress bar) and the perturbation methods on the command
line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import camkit
from camkit.capture import folding, split
from camkit.cli import main
from camkit.data import quokka
from camkit.progress import Progress
from tests.methods.test_perturbation import TARGETS, ResidualNet, Untraceable
from tests.models import TinyCNN


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


class NormAct(nn.BatchNorm2d):
    """A batch norm with its own activation module (as camkit.zoo makes for EfficientNet-Lite):
    torch.fx cannot trace into it (batch norm checks its input's dimensions), so a layer
    ``norm.act`` can be cut only at ``norm``, and only when ``act`` is its last operation."""

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__(channels)
        self.act, self.scale = nn.ReLU(), scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(super().forward(x))
        return out if self.scale == 1 else out * self.scale


class NormActNet(nn.Module):
    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1, stride=2)
        self.norm = NormAct(6, scale)
        self.fc = nn.Linear(6, 5)
        with torch.no_grad():
            self.norm.running_mean.uniform_(-0.2, 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.size(0)  # read after the layer: taken from the activation in the tail
        return self.fc(self.norm(self.conv(x)).reshape(n, 6, -1).mean(dim=2))


@pytest.mark.filterwarnings("ignore:Ablation-CAM divides")
@pytest.mark.parametrize("scale, path", [(1.0, "split"), (2.0, "full-forward")])
def test_cut_at_the_enclosing_module_only_when_the_layer_ends_it(x, scale, path):
    torch.manual_seed(0)
    model = NormActNet(scale).eval()
    expl = camkit.explain(model, x, TARGETS, "ablationcam", "norm.act")
    full = camkit.explain(model, x, TARGETS, "ablationcam", "norm.act", split=False)
    note = expl.details["ablationcam"]
    assert note["path"] == path
    if path == "split":
        assert note["cut"] == "norm"
    else:
        assert "cannot trace" in note["reason"]
    torch.testing.assert_close(expl.raw["ablationcam"], full.raw["ablationcam"])


def test_folded_copy_keeps_batch_norm_subclasses(x):
    torch.manual_seed(0)
    model = NormActNet().eval()
    copy = folding.folded_copy(model)  # traceable although NormAct's batch norm is not
    assert isinstance(copy.get_submodule("norm"), NormAct)  # it has an activation: not folded
    with torch.no_grad():
        torch.testing.assert_close(copy(x), model(x))


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


def test_tracing_leaves_no_proxy_on_the_model(x):
    class Remembers(ResidualNet):
        def forward(self, x):
            self.last_input = x  # a forward with a side effect
            return super().forward(x)

    torch.manual_seed(0)
    model = Remembers().eval()
    expl = camkit.explain(model, x, TARGETS, "ablationcam", "body")
    assert expl.details["ablationcam"]["path"] == "split"
    assert type(model.last_input) is torch.Tensor


def test_folded_copy_folds_batch_norm_without_touching_the_model(x):
    torch.manual_seed(0)
    net = ResidualNet().eval()
    copy = folding.folded_copy(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in copy.modules())
    assert isinstance(net.stem[1], nn.BatchNorm2d)  # the original keeps its layers
    conv = next(m for m in copy.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(copy(x), net(x))
    scores = net(x).detach()[:, :2]
    model, note = folding.evaluation_model(net, (x,), scores, lambda out, rows: out[:, :2])
    assert model is not net and note.startswith("a folded")
    untraceable = Untraceable().eval()
    model, note = folding.evaluation_model(untraceable, (x,), scores, lambda out, rows: out[:, :2])
    assert model is untraceable and "TraceError" in note
    model, note = folding.evaluation_model(net, (x,), scores + 1, lambda out, rows: out[:, :2])
    assert model is net and "did not reproduce" in note


def test_command_line_runs_perturbation_methods_with_a_progress_bar(tmp_path, capsys,
                                                                    monkeypatch):
    monkeypatch.setenv("CAMKIT_PROGRESS", "1")  # the bar at once, as for a long call
    photo, weights = tmp_path / "quokka.jpg", tmp_path / "resnet18.pth"
    quokka().image.save(photo)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), weights)  # traceable: split path
    rc = main(["explain", str(photo), "--arch", "resnet18", "--weights", str(weights),
               "--methods", "gradcam,ablationcam,eigencam", "--out", str(tmp_path / "o")])
    assert rc == 0
    captured = capsys.readouterr()
    assert "ablationcam" in captured.err and "ablationcam" not in captured.out
    maps = np.load(tmp_path / "o" / "quokka" / "maps.npz")
    assert {"gradcam", "ablationcam", "eigencam"} <= set(maps.files)
    assert maps["ablationcam"].shape == (1, 224, 224)


class WithTensorConstant(nn.Module):
    """A forward that builds a tensor (``torch.fx`` stores it as ``_tensor_constant0``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc((self.conv(x) * torch.tensor([2.0])).mean((2, 3)))


def test_a_traced_tensor_constant_survives_the_split(x):
    """MaxViT's case: the constants tracing stores on the model reach the tail."""
    model = WithTensorConstant().eval()
    cut = split.split_model(model, model.conv)
    acts = model.conv(x)
    rows = torch.arange(len(x))
    with torch.no_grad():
        torch.testing.assert_close(cut.bind((x,))(acts, rows), model(x))
    assert not hasattr(model, "_tensor_constant0")  # the model is left as it was


def test_a_tail_that_cannot_be_cut_is_a_split_error(monkeypatch, x):
    model = TinyCNN().eval()

    def broken(*_args):
        raise AttributeError("no such constant")

    monkeypatch.setattr(split, "_cut", broken)
    with pytest.raises(split.SplitError, match="cannot be cut"):
        split.split_model(model, model.features, fresh=True)
    expl = camkit.explain(model, x, 0, ["ablationcam"], "features")  # on the full model
    assert expl["ablationcam"].shape == (2, 1, 8, 8) and not expl.constant["ablationcam"].any()
