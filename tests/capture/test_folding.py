"""camkit.capture.folding: the folded channels-last copy that runs explain's forward pass."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torchvision
from torch import nn

import camkit
from camkit.capture import folding
from tests.methods.test_perturbation import ResidualNet, Untraceable

GRADIENT_FAMILY = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigengradcam"]


@pytest.fixture
def net() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=7).eval()
    with torch.no_grad():  # batch norms that do something: random statistics and affine
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def runs_copy(model: nn.Module, layers: dict[str, nn.Module], x: torch.Tensor) -> bool:
    return folding.forward_model(model, layers, (x,))[0] is not model


@pytest.mark.parametrize("layer", ["layer4", "layer3.1.bn2", ["layer3", "layer4"]])
def test_the_copy_gives_the_models_maps(net, x, layer):
    # XGrad-CAM divides by each channel's activation sum, which nears 0 for a batch norm's
    # signed output: rounding differences are amplified there, so it is left out for it.
    methods = [m for m in GRADIENT_FAMILY + ["eigencam"]
               if not (layer == "layer3.1.bn2" and m == "xgradcam")]
    fast = camkit.explain(net, x, [[1, 4]] * 3, methods, layer)
    plain = camkit.explain(net, x, [[1, 4]] * 3, methods, layer, fast=False)
    for method in plain:
        scale = plain.raw[method].abs().amax()
        torch.testing.assert_close(fast.raw[method] / scale, plain.raw[method] / scale,
                                   rtol=0, atol=1e-5)
        torch.testing.assert_close(fast[method], plain[method], rtol=0, atol=1e-4)
    names = layer if isinstance(layer, list) else [layer]
    assert runs_copy(net, {n: net.get_submodule(n) for n in names}, x)


def test_batch_norms_are_folded_except_a_target_layer(net, x):
    camkit.explain(net, x, 0, "gradcam", "layer3.1.bn2")
    copy = folding._kept[net].model
    norms = {name for name, m in copy.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert norms == {"layer3.1.bn2"}  # its own conv is not folded either: it feeds the layer
    assert isinstance(copy.get_submodule("layer3.1.conv2"), nn.Conv2d)
    conv = copy.get_submodule("conv1")
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not any(p.requires_grad for p in copy.parameters())


def test_the_model_is_left_as_it_was(net, x):
    state = {k: v.clone() for k, v in net.state_dict().items()}
    flags = [p.requires_grad for p in net.parameters()]
    net.train()
    camkit.explain(net, x, 0, "gradcam", "layer4")
    assert net.training and all(m.training for m in net.modules())
    assert [p.requires_grad for p in net.parameters()] == flags
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())


def test_new_weights_make_a_new_copy(net, x):
    before = camkit.explain(net, x, 2, "gradcam", "layer4")
    torch.manual_seed(5)
    net.load_state_dict(torchvision.models.resnet18(num_classes=7).state_dict())
    after = camkit.explain(net, x, 2, "gradcam", "layer4")
    plain = camkit.explain(net, x, 2, "gradcam", "layer4", fast=False)
    torch.testing.assert_close(after["gradcam"], plain["gradcam"], rtol=0, atol=1e-4)
    assert not torch.allclose(before["gradcam"], after["gradcam"], atol=1e-2)


def test_a_change_through_data_needs_forget(net, x):
    camkit.explain(net, x, 2, "gradcam", "layer4")
    net.fc.weight.data.mul_(-1)  # invisible to autograd's version counters
    assert torch.equal(camkit.explain(net, x, 2, "gradcam", "layer4").outputs,
                       folding._kept[net].model(x).detach())
    camkit.capture.forget(net)
    torch.testing.assert_close(camkit.explain(net, x, 2, "gradcam", "layer4").outputs,
                               net(x).detach(), rtol=1e-4, atol=1e-4)


def test_models_the_copy_cannot_stand_for_run_themselves(x):
    torch.manual_seed(0)
    small = torch.randn(2, 3, 8, 8)
    untraceable = Untraceable().eval()
    assert not runs_copy(untraceable, {"body": untraceable.body}, small)
    assert "TraceError" in folding._kept[untraceable].problem
    hooked = ResidualNet().eval()
    hooked.fc.register_forward_hook(lambda module, args, out: out * 2)
    assert not runs_copy(hooked, {"body": hooked.body}, small)
    training = ResidualNet().train()
    assert not runs_copy(training, {"body": training.body}, small)
    plain = ResidualNet().eval()
    assert runs_copy(plain, {"body": plain.body}, small)


def test_guided_and_attention_methods_run_the_model_itself(net, x):
    camkit.explain(net, x, 0, ["gradcam", "guided-gradcam"], "layer4")
    assert net not in folding._kept  # the graph reaches the input: no copy was made


def test_the_copy_goes_with_its_model(x):
    model = ResidualNet().eval()
    camkit.explain(model, torch.randn(1, 3, 8, 8), 0, "gradcam", "body")
    assert folding._kept[model].model is not None
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None  # the kept copy does not keep its model alive


class Recorder(nn.Module):
    """Doubles its input and records the batch sizes it ran."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.sizes: list[int] = []
        self.fail = fail

    def forward(self, x):
        if self.fail:
            raise RuntimeError("no compiler\nmore lines")
        self.sizes.append(x.shape[0])
        return {"out": 2 * x, "fixed": torch.ones(3)}


def test_a_fixed_batch_pads_short_batches_to_the_first_size():
    compiled, reports = Recorder(), []
    fixed = folding.FixedBatch(compiled, Recorder(), reports.append)
    x = torch.randn(5, 2)
    for n in (5, 3, 5, 1):
        out = fixed(x[:n])
        assert torch.equal(out["out"], 2 * x[:n]) and torch.equal(out["fixed"], torch.ones(3))
    assert compiled.sizes == [5, 5, 5, 5]
    assert len(reports) == 1 and reports[0]["compile"].startswith("compiled")


def test_a_fixed_batch_falls_back_when_compiling_fails():
    fallback, reports = Recorder(), []
    fixed = folding.FixedBatch(Recorder(fail=True), fallback, reports.append)
    assert torch.equal(fixed(torch.ones(2, 2))["out"], 2 * torch.ones(2, 2))
    assert fixed(torch.ones(1, 2))["out"].shape == (1, 2)
    assert fallback.sizes == [2, 2]
    assert reports[0]["compile"] == "not compiled (RuntimeError: no compiler)"


def test_compiled_perturbation_passes_give_the_same_maps():
    torch.manual_seed(0)
    model = ResidualNet().eval()
    x = torch.randn(2, 3, 8, 8)
    plain = camkit.explain(model, x, [[0], [1]], "occlusion", "body", window=3, batch_size=7)
    fast = camkit.explain(model, x, [[0], [1]], "occlusion", "body", window=3, batch_size=7,
                          compile=True)
    torch.testing.assert_close(fast.raw["occlusion"], plain.raw["occlusion"], rtol=1e-5,
                               atol=1e-6)
    assert "compile" in fast.details["occlusion"]
    with pytest.raises(TypeError, match="compile must be True or False"):
        camkit.explain(model, x, 0, "occlusion", "body", compile="yes")
