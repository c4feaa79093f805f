"""Guided backpropagation's ReLUs (Springenberg et al. 2015), without touching the model: a
torch-function mode routes every ReLU of one forward pass through an identity whose backward
keeps only positive gradients while that pass's switch is on."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode


class GuidedSwitch:
    """Whether backward passes through one forward pass's ReLUs are guided right now (read at
    backward time; each pass has its own switch, so concurrent passes cannot mix)."""

    on = False


class _GuidedReLU(torch.autograd.Function):
    """Identity forward on a ReLU's output; backward keeps only positive gradients when the
    switch is on (guided backpropagation, Springenberg et al. 2015, eq. 6). The ReLU's own
    backward then applies the forward mask, so the product is ``ReLU(g) · 1[x > 0]``."""

    @staticmethod
    def forward(ctx: Any, relu_output: Tensor, switch: GuidedSwitch) -> Tensor:
        ctx.switch = switch
        return relu_output.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return (grad.clamp(min=0) if ctx.switch.on else grad), None


class GuidedMode(TorchFunctionMode):
    """Routes every ReLU / ReLU6 call (module or functional, in-place or not; ``nn.ReLU6``
    reaches torch as ``hardtanh(x, 0, 6)``) through
    :class:`_GuidedReLU` without swapping any module of the user's model."""

    RELUS = {torch.relu, torch.relu_, F.relu, F.relu_, F.relu6, torch.Tensor.relu,
             torch.Tensor.relu_}

    def __init__(self, switch: GuidedSwitch) -> None:
        super().__init__()
        self.switch = switch

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func in self.RELUS:
            kwargs.pop("inplace", None)
            out = (F.relu6 if func is F.relu6 else torch.relu)(*args[:1], **{})
            return _GuidedReLU.apply(out, self.switch)
        if func is F.hardtanh and _bounds(args, kwargs)[0] == 0:
            # nn.ReLU6 (and any hardtanh clipped at 0) calls hardtanh, not relu6
            return _GuidedReLU.apply(F.hardtanh(args[0], *_bounds(args, kwargs)), self.switch)
        return func(*args, **kwargs)


def _bounds(args: tuple, kwargs: dict) -> tuple[float, float]:
    """``hardtanh``'s ``(min_val, max_val)`` from its call arguments."""
    low = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
    high = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
    return float(low), float(high)
