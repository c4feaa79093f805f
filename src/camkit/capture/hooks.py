"""Everything that touches the model: hooks, modes, gradients, and their restoration.

The model is borrowed, never changed: hooks live only inside a call and are removed in
``finally``; train/eval flags and ``requires_grad`` are restored; no parameter gradient is
ever accumulated (gradients are taken with ``torch.autograd.grad`` with respect to the
captured activation only); an in-place operation after the target layer cannot corrupt the
captured activation, because the network downstream receives a copy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from ..targets import ScoreFn

Inputs = tuple[Tensor, ...]


@contextlib.contextmanager
def borrowed(model: nn.Module, eval_mode: bool = True) -> Iterator[None]:
    """Run the model in eval mode with frozen parameters; restore every flag afterwards."""
    training = [(m, m.training) for m in model.modules()]
    requires = [(p, p.requires_grad) for p in model.parameters()]
    try:
        if eval_mode:
            model.eval()
        for p, _ in requires:
            p.requires_grad_(False)
        yield
    finally:
        for m, flag in training:
            m.training = flag
        for p, flag in requires:
            p.requires_grad_(flag)


def _first_tensor(output: Any) -> Tensor:
    tensor = output[0] if isinstance(output, (tuple, list)) else output
    if not isinstance(tensor, Tensor):
        raise TypeError(f"the target layer returned {type(output).__name__}, not a tensor")
    return tensor


def _replace_first(output: Any, tensor: Tensor) -> Any:
    if isinstance(output, (tuple, list)):
        return type(output)([tensor, *output[1:]])
    return tensor


@contextlib.contextmanager
def layer_hook(
    layer: nn.Module, hook: Callable[[Tensor], Tensor], call: int | None = None
) -> Iterator[None]:
    """Pass the layer's (first) output through ``hook`` for the duration of the block.

    A module can be called several times in one forward pass (a shared activation, say);
    ``call`` restricts the hook to that call (0-based), ``None`` applies it to every call."""
    calls = [0]

    def forward_hook(_module: nn.Module, _args: Any, output: Any) -> Any:
        index, calls[0] = calls[0], calls[0] + 1
        if call is not None and index != call:
            return None
        return _replace_first(output, hook(_first_tensor(output)))

    handle = layer.register_forward_hook(forward_hook)
    try:
        yield
    finally:
        handle.remove()


class _GuidedSwitch:
    """Whether backward passes through ReLUs are guided right now (read at backward time)."""

    on = False


class _GuidedReLU(torch.autograd.Function):
    """Identity forward on a ReLU's output; backward keeps only positive gradients when the
    switch is on (guided backpropagation, Springenberg et al. 2015, eq. 6). The ReLU's own
    backward then applies the forward mask, so the product is ``ReLU(g) · 1[x > 0]``."""

    @staticmethod
    def forward(ctx: Any, relu_output: Tensor) -> Tensor:
        return relu_output.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad.clamp(min=0) if _GuidedSwitch.on else grad


class _GuidedMode(TorchFunctionMode):
    """Routes every ReLU / ReLU6 call (module or functional, in-place or not) through
    :class:`_GuidedReLU` without swapping any module of the user's model."""

    RELUS = {torch.relu, torch.relu_, F.relu, F.relu_, F.relu6, torch.Tensor.relu,
             torch.Tensor.relu_}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func in self.RELUS:
            kwargs.pop("inplace", None)
            out = (F.relu6 if func is F.relu6 else torch.relu)(*args[:1], **{})
            return _GuidedReLU.apply(out)
        return func(*args, **kwargs)


@dataclass
class Capture:
    """What one forward pass through the borrowed model captured."""

    outputs: Any
    activations: tuple[Tensor, ...]  # raw outputs of the layers, as produced (at each's last call)
    inputs: Inputs  # the inputs as run (requiring grad when input gradients are needed)
    calls: tuple[int, ...]  # the captured call of each layer (0-based): a shared module's last

    @property
    def activation(self) -> Tensor:
        """The (first) target layer's output."""
        return self.activations[0]

    @property
    def call(self) -> int:
        return self.calls[0]


def run_forward(
    model: nn.Module,
    layer: nn.Module,
    layer_name: str,
    inputs: Inputs,
    *,
    layer_grad: bool,
    input_grad: bool,
) -> Capture:
    """One forward pass that captures the target layer's output (see :func:`run_forward_layers`)."""
    return run_forward_layers(model, {layer_name: layer}, inputs,
                              layer_grad=layer_grad, input_grad=input_grad)


def run_forward_layers(
    model: nn.Module,
    layers: dict[str, nn.Module],
    inputs: Inputs,
    *,
    layer_grad: bool,
    input_grad: bool,
) -> Capture:
    """One forward pass that captures the outputs of several layers (``{name: module}``).

    With ``layer_grad`` the first activation reached is a leaf of the autograd graph (nothing
    before it is recorded) and later ones stay in the graph that grows from it, so one backward
    pass reaches them all; with ``input_grad`` the graph reaches back to the first input and
    ReLUs become switchable guided ReLUs. Without either, no graph is built at all.
    """
    captured: dict[str, list[Tensor]] = {name: [] for name in layers}

    def keeper(name: str) -> Callable[[Tensor], Tensor]:
        def keep(output: Tensor) -> Tensor:
            first = not any(captured.values())
            in_graph = input_grad or (output.requires_grad and not first)
            act = output if in_graph else output.detach().requires_grad_(layer_grad)
            captured[name].append(act)
            return act.clone()  # downstream in-place ops act on the copy, never on `act`

        return keep

    if input_grad:
        inputs = (inputs[0].detach().requires_grad_(True), *inputs[1:])
    guided = _GuidedMode() if input_grad else contextlib.nullcontext()
    grad_mode = torch.enable_grad() if (layer_grad or input_grad) else torch.no_grad()
    with contextlib.ExitStack() as hooks, grad_mode, guided:
        for name, layer in layers.items():
            hooks.enter_context(layer_hook(layer, keeper(name)))
        outputs = model(*inputs)
    missed = [name for name, acts in captured.items() if not acts]
    if missed:
        raise RuntimeError(
            f"the layer {missed[0]!r} was not reached during the forward pass; choose a layer "
            "that the model's forward() actually calls"
        )
    return Capture(outputs, tuple(acts[-1] for acts in captured.values()), inputs,
                   tuple(len(acts) - 1 for acts in captured.values()))


def batched_grad(scores: Tensor, wrt: Tensor, guided: bool = False) -> Tensor:
    """Gradients of every column of ``scores`` ``(B, K)`` with respect to ``wrt`` ``(B, ...)``,
    as ``(B, K, ...)``, from one batched backward pass (samples are independent, so the
    gradient of a column's sum gives each sample's own gradient)."""
    return batched_grads(scores, (wrt,), guided)[0]


def batched_grads(
    scores: Tensor, wrt: tuple[Tensor, ...], guided: bool = False
) -> tuple[Tensor, ...]:
    """:func:`batched_grad` with respect to several tensors at once (one backward pass)."""
    k = scores.shape[1]
    _GuidedSwitch.on = guided
    try:
        if k == 1:
            grads = torch.autograd.grad(scores.sum(), wrt, retain_graph=True)
            return tuple(g.unsqueeze(1) for g in grads)
        one_hot = torch.eye(k, dtype=scores.dtype, device=scores.device)
        grad_outputs = one_hot[:, None, :].expand(k, scores.shape[0], k)
        try:
            grads = torch.autograd.grad(
                scores, wrt, grad_outputs=grad_outputs, retain_graph=True, is_grads_batched=True
            )
        except RuntimeError:  # an op without a batching rule: one backward per target
            per_target = [torch.autograd.grad(scores[:, j].sum(), wrt, retain_graph=True)
                          for j in range(k)]
            grads = tuple(torch.stack(g) for g in zip(*per_target, strict=True))
        return tuple(g.transpose(0, 1) for g in grads)
    finally:
        _GuidedSwitch.on = False


def rescorer_for_inputs(
    model: nn.Module, score_fn: ScoreFn, n_inputs: int
) -> Callable[[Any, Tensor], Tensor]:
    """``f(inputs, rows) -> (n, K)`` float32 target scores of new inputs, without gradients.

    ``inputs`` is a tensor (for single-input models) or a tuple of tensors."""

    def rescore(new_inputs: Any, rows: Tensor) -> Tensor:
        args = new_inputs if isinstance(new_inputs, tuple) else (new_inputs,)
        if len(args) != n_inputs:
            raise ValueError(f"the model takes {n_inputs} inputs, got {len(args)}")
        with torch.no_grad():
            return score_fn.score(model(*args), rows).float()

    return rescore


def rescorer_for_activations(
    model: nn.Module, layer: nn.Module, call: int, inputs: Inputs, score_fn: ScoreFn,
    to_layer_layout: Callable[[Tensor], Tensor],
) -> Callable[[Tensor, Tensor], Tensor]:
    """``f(acts, rows) -> (n, K)``: target scores when the layer outputs ``acts``
    ``(n, C, h, w)`` at its captured ``call`` for original images ``rows``; full forward
    passes with the layer's output replaced (the generic path that works for every model)."""

    def rescore(acts: Tensor, rows: Tensor) -> Tensor:
        args = tuple(t[rows] for t in inputs)

        def replace(output: Tensor) -> Tensor:
            return to_layer_layout(acts).to(output.dtype)

        with layer_hook(layer, replace, call), torch.no_grad():
            return score_fn.score(model(*args), rows).float()

    return rescore
