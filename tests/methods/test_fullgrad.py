"""FullGrad against a per-image, per-layer loop, and the completeness that defines it: on a
piecewise-linear network the input term and the bias terms add up to the output."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import camkit
from camkit.capture import module_output_gradients
from camkit.methods.fullgrad import effective_bias

TOL = dict(atol=1e-5, rtol=1e-5)


def biased_net() -> nn.Module:
    """conv → BN → ReLU (in place) → conv → ReLU → pool → bias-free linear."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                        nn.Conv2d(4, 5, 3, stride=2, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3, bias=False))
    bn = net[1]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.3, 0.3)
    return net.eval()


def slow_minmax_upsampled(channel: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """One ``(h, w)`` channel: ``|·|``, min-max, then bilinear upsampling."""
    values = channel.abs()
    low, high = float(values.min()), float(values.max())
    normalised = (values - low) / (high - low + 1e-7) if high > low else values * 0
    return F.interpolate(normalised[None, None], size=size, mode="bilinear",
                         align_corners=False)[0, 0]


def slow_fullgrad(net: nn.Module, x: torch.Tensor, cls: int) -> torch.Tensor:
    """One image: a forward pass with hooks per bias module, gradients of the class logit."""
    layers = [m for m in net.modules() if effective_bias(m) is not None]
    outputs: list = []
    handles = [m.register_forward_hook(lambda mod, i, o: (outputs.append((mod, o)), o.clone())[1])
               for m in layers]
    image = x[None].clone().requires_grad_(True)
    logit = net(image)[0, cls]
    for handle in handles:
        handle.remove()
    grads = torch.autograd.grad(logit, [image, *(o for _, o in outputs)])
    size = tuple(x.shape[-2:])
    total = sum(slow_minmax_upsampled(c, size) for c in (grads[0] * image)[0])
    for (module, _), grad in zip(outputs, grads[1:], strict=True):
        bias = effective_bias(module)
        for c in range(grad.shape[1]):
            total = total + slow_minmax_upsampled(grad[0, c] * bias[c], size)
    return total.detach()


def test_fullgrad_matches_slow_per_layer_loops(images):
    net = biased_net()
    targets = [[0, 2], [1, 0], [2, 1]]
    expl = camkit.explain(net, images, targets, "fullgrad", "3")
    assert expl.details["fullgrad"] == {"bias_terms": 3}  # two convs and the batch norm
    for b in range(3):
        for t, cls in enumerate(targets[b]):
            torch.testing.assert_close(expl.raw["fullgrad"][b, t],
                                       slow_fullgrad(net, images[b], cls), **TOL)


def test_input_and_bias_terms_add_up_to_the_output(images):
    """Srinivas & Fleuret's completeness: ``f(x) = ∇ₓf·x + Σ_l Σ ∇_{z_l}f ⊙ b_l``."""
    net = biased_net()
    layers = [m for m in net.modules() if effective_bias(m) is not None]
    with torch.no_grad():
        logits = net(images)
    input_grad, module_grads = module_output_gradients(net, layers, (images,),
                                                       lambda out, rows: out[:, :2])
    total = (input_grad * images[:, None]).sum(dim=(2, 3, 4))
    for module, grad in module_grads:
        total += (grad * effective_bias(module)[:, None, None]).sum(dim=(2, 3, 4))
    torch.testing.assert_close(total, logits[:, :2], **TOL)


def test_batch_norm_effective_bias_is_the_affine_maps_offset():
    bn = biased_net()[1]
    zero = torch.zeros(1, 4, 1, 1)
    torch.testing.assert_close(effective_bias(bn), bn(zero).flatten())
    assert effective_bias(nn.Conv2d(3, 4, 1, bias=False)) is None


class WithAuxiliaryHead(nn.Module):
    """``biased_net`` returning ``{"out": logits, "aux": ...}``: the auxiliary head's conv has a
    bias but does not reach ``out`` (as torchvision's FCN and DeepLabV3 with ``aux_loss``)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = biased_net()
        torch.manual_seed(4)
        self.aux = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.net(x), "aux": self.aux(self.net[:3](x))}


def test_a_bias_the_target_does_not_reach_adds_nothing(images):
    with_aux = WithAuxiliaryHead().eval()
    expl = camkit.explain(with_aux, images, lambda out: out["out"][:, [0, 2]], "fullgrad")
    alone = camkit.explain(with_aux.net, images, [[0, 2]] * 3, "fullgrad", "3")
    torch.testing.assert_close(expl.raw["fullgrad"], alone.raw["fullgrad"], **TOL)
    assert expl.details["fullgrad"] == {"bias_terms": 6}  # conv and BN called twice, conv, aux
