"""A faster copy of a model for the many forward passes of the perturbation methods.

Score-CAM, its variants and occlusion run one model on hundreds of modified inputs. They run
a copy of it in which every convolution absorbs the batch normalisation that follows it
(``BN(conv(x)) = conv'(x)`` with folded weights and bias: exact algebra, torch.fx's ``fuse``),
with weights in channels-last layout, the fastest exact layout for convolutions. The user's
model is never modified: the copy is a deep copy, made for the call and dropped after it, and
it must reproduce the model's own scores before it is used; when it cannot be made (untraceable
forward, training mode, ...) or does not reproduce them, the model itself runs the passes.
Measured on resnet18 (batch 27, 2 CPU cores; `benchmarks/bench_perturbation.py`, `layout` rows):
folded and channels-last 0.84× the time of the plain model on an AMD EPYC, 0.33× with bf16
autocast; the gain depends on the CPU (an earlier measurement on an Intel Xeon: 0.70×, 0.20×).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.fx.experimental.optimization import fuse

from ..targets import Scores
from . import split


def folded_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` (in eval mode) with convolution + batch norm pairs folded and
    4-D weights in channels-last layout; raises when torch.fx cannot trace the model. Only
    plain ``BatchNorm2d`` modules are folded: a subclass may do more (e.g. an activation)."""
    if model.training:
        raise ValueError("batch norm folding needs the model in eval mode")
    graph = split.traced(copy.deepcopy(model))
    return fuse(graph, inplace=True, no_trace=True).to(memory_format=torch.channels_last)


def evaluation_model(model: nn.Module, inputs: tuple[Tensor, ...], scores: Tensor,
                     score: Scores, rtol: float = 1e-4) -> tuple[nn.Module, str]:
    """The model that should run the perturbation passes and a note saying which it is: the
    folded copy when it reproduces ``scores`` ``(B, K)`` (the model's target scores, as read by
    ``score`` from the outputs) on ``inputs`` within ``rtol``, else ``model`` itself."""
    try:
        copy = folded_copy(model)
        with torch.no_grad():
            got = score(copy(*inputs), None).float()
    except Exception as error:  # noqa: BLE001 - any failure means "use the model itself"
        return model, f"the model itself (no folded copy: {type(error).__name__}: {error})"
    scale = float(scores.abs().max().clamp(min=1.0))
    if got.shape == scores.shape and torch.allclose(got, scores, rtol=rtol, atol=rtol * scale):
        return copy, "a folded channels-last copy"
    return model, "the model itself (the folded copy did not reproduce its scores)"
