"""Everything that touches the model: hooks, modes, gradients, and their restoration.

The model is borrowed, never changed: hooks live only inside a call and are removed in
``finally``; train/eval flags and ``requires_grad`` are restored; no parameter gradient is
ever accumulated (gradients are taken with ``torch.autograd.grad`` with respect to the
captured activation only); an in-place operation after the target layer cannot corrupt the
captured activation, because the network downstream receives a copy.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..targets import ScoreFn, Scores
from .guided import GuidedMode, GuidedSwitch

Inputs = tuple[Tensor, ...]


_locks: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The model's own re-entrant lock: borrowing a model from several threads serialises the
    borrows (hooks, modes and flags are the model's, so two calls cannot share them)."""
    with _locks_guard:
        return _locks.setdefault(model, threading.RLock())


@contextlib.contextmanager
def borrowed(model: nn.Module, eval_mode: bool = True) -> Iterator[None]:
    """Run the model in eval mode with frozen parameters; restore every flag afterwards.

    One thread at a time borrows a given model (the others wait). With ``eval_mode=False``
    the buffers (BatchNorm running statistics) are restored too: training-mode forwards
    update them, and explaining must not change the model. Flags are written only where they
    change (setting one costs far more than reading it, on every call)."""
    with model_lock(model):
        training = [(m, m.training) for m in model.modules()]
        requires = [(p, p.requires_grad) for p in model.parameters()]
        buffers = [] if eval_mode else [(b, b.clone()) for b in model.buffers()]
        try:
            if eval_mode and any(flag for _, flag in training):
                model.eval()
            for p, flag in requires:
                if flag:
                    p.requires_grad_(False)
            yield
        finally:
            for m, flag in training:
                if m.training != flag:
                    m.training = flag
            for p, flag in requires:
                if p.requires_grad != flag:
                    p.requires_grad_(flag)
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)


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


@dataclass
class Capture:
    """What one forward pass through the borrowed model captured."""

    outputs: Any
    activations: tuple[Tensor, ...]  # raw outputs of the layers, as produced (at each's last call)
    inputs: Inputs  # the inputs as run (requiring grad when input gradients are needed)
    calls: tuple[int, ...]  # the captured call of each layer (0-based): a shared module's last
    guided: GuidedSwitch | None = None  # the switch of the pass's guided ReLUs (input_grad)

    @property
    def activation(self) -> Tensor:
        """The (first) target layer's output."""
        return self.activations[0]

    @property
    def call(self) -> int:
        """The captured call of the (first) target layer."""
        return self.calls[0]


class LayerNotReachedError(ValueError):
    """The target layer is not called by the model's forward pass."""


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
    autograd: bool = False,
) -> Capture:
    """One forward pass that captures the outputs of several layers (``{name: module}``).

    With ``layer_grad`` the first activation reached is a leaf of the autograd graph (nothing
    before it is recorded) and later ones stay in the graph that grows from it, so one backward
    pass reaches them all; with ``input_grad`` the graph reaches back to the first input and
    ReLUs become switchable guided ReLUs; with ``autograd`` the pass runs with gradients on
    even without either, for what else it records (attention starts its own graph, which the
    layers then never cut). Without any, no graph is built at all.
    """
    captured: dict[str, list[Tensor]] = {name: [] for name in layers}

    def keeper(name: str) -> Callable[[Tensor], Tensor]:
        def keep(output: Tensor) -> Tensor:
            first = not any(captured.values())
            in_graph = input_grad or (output.requires_grad and (autograd or not first))
            act = output if in_graph else output.detach().requires_grad_(layer_grad)
            captured[name].append(act)
            return act.clone()  # downstream in-place ops act on the copy, never on `act`

        return keep

    if input_grad:
        inputs = (inputs[0].detach().requires_grad_(True), *inputs[1:])
    switch = GuidedSwitch() if input_grad else None
    guided = GuidedMode(switch) if switch else contextlib.nullcontext()
    grad_mode = (torch.enable_grad() if (layer_grad or input_grad or autograd)
                 else torch.no_grad())
    with contextlib.ExitStack() as hooks, grad_mode, guided:
        for name, layer in layers.items():
            hooks.enter_context(layer_hook(layer, keeper(name)))
        outputs = model(*inputs)
    missed = [name for name, acts in captured.items() if not acts]
    if missed:
        raise LayerNotReachedError(
            f"the layer {missed[0]!r} was not reached during the forward pass; choose a layer "
            "that the model's forward() actually calls"
        )
    return Capture(outputs, tuple(acts[-1] for acts in captured.values()), inputs,
                   tuple(len(acts) - 1 for acts in captured.values()), switch)


def batched_grad(scores: Tensor, wrt: Tensor, guided: GuidedSwitch | None = None) -> Tensor:
    """Gradients of every column of ``scores`` ``(B, K)`` with respect to ``wrt`` ``(B, ...)``,
    as ``(B, K, ...)``, from one batched backward pass (samples are independent, so the
    gradient of a column's sum gives each sample's own gradient). ``guided``: the pass's
    switch (:attr:`Capture.guided`), on for this backward pass (guided backpropagation)."""
    return batched_grads(scores, (wrt,), guided)[0]


def batched_grads(
    scores: Tensor, wrt: tuple[Tensor, ...], guided: GuidedSwitch | None = None
) -> tuple[Tensor, ...]:
    """:func:`batched_grad` with respect to several tensors at once (one backward pass)."""
    k = scores.shape[1]
    if guided is not None:
        guided.on = True
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
        if guided is not None:
            guided.on = False


def module_output_gradients(
    model: nn.Module, modules: list[nn.Module], inputs: Inputs, score: Scores,
) -> tuple[Tensor, list[tuple[nn.Module, Tensor]]]:
    """One forward pass from the first input and one backward pass per target: the gradients
    of ``score(outputs, None)`` ``(B, K)`` with respect to the first input,
    ``(B, K, *x.shape[1:])``, and to the output of every call of each of ``modules``, as
    ``(module, (B, K, ...))`` pairs in call order (a module called twice appears twice; zeros
    for an output the scores do not depend on, such as an auxiliary head's). Each output
    reaches the network as a copy, so a later in-place operation cannot change what is
    differentiated."""
    outputs: list[tuple[nn.Module, Tensor]] = []

    def keeper(module: nn.Module) -> Callable[[Tensor], Tensor]:
        def keep(output: Tensor) -> Tensor:
            outputs.append((module, output))
            return output.clone()

        return keep

    x = inputs[0].detach().requires_grad_(True)
    with contextlib.ExitStack() as hooks, torch.enable_grad():
        for module in dict.fromkeys(modules):
            hooks.enter_context(layer_hook(module, keeper(module)))
        scores = score(model(x, *inputs[1:]), None)
        wrt = [x, *(t for _, t in outputs)]
        per_target = [torch.autograd.grad(scores[:, k].sum(), wrt, retain_graph=True,
                                          allow_unused=True, materialize_grads=True)
                      for k in range(scores.shape[1])]
    grads = [torch.stack(g, dim=1).float() for g in zip(*per_target, strict=True)]
    return grads[0], [(m, g) for (m, _), g in zip(outputs, grads[1:], strict=True)]


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


def gradient_and_hessian_product(scores: Tensor, activation: Tensor) -> tuple[Tensor, Tensor]:
    """``g = ∂s/∂A`` and the Hessian-vector product ``H A = ∂(g·A)/∂A`` (``A`` held fixed), each
    ``(n, K, ...)``, for scores ``(n, K)`` of a graph that starts at ``activation`` ``(n, ...)``;
    one double backward pass per target, ``H A = 0`` where ``g`` does not depend on ``A``."""
    grads, products = [], []
    for k in range(scores.shape[1]):
        (g,) = torch.autograd.grad(scores[:, k].sum(), activation, create_graph=True)
        product = None
        if g.requires_grad:
            try:
                (product,) = torch.autograd.grad(g, activation, grad_outputs=activation.detach(),
                                                 retain_graph=True, allow_unused=True)
            except RuntimeError as error:
                if "double backward" not in str(error):
                    raise
                raise ValueError(
                    f"this method needs second derivatives after the layer, and an operation "
                    f"of the model has none ({error}); a detector's RoI align is one") from error
        grads.append(g.detach())
        products.append(torch.zeros_like(g) if product is None else product.detach())
    return torch.stack(grads, dim=1), torch.stack(products, dim=1)


def layer_gradients_for_inputs(
    model: nn.Module, layer: nn.Module, call: int, score_fn: ScoreFn,
    to_spatial: Callable[[Tensor], Tensor],
) -> Callable[..., Tensor]:
    """``f(inputs, rows, hessian=False)``: one forward pass of new inputs whose graph starts at
    the layer's captured ``call``, and the gradients ``g`` of their target scores ``(n, K)``
    (original images ``rows``) with respect to that activation, ``to_spatial`` ``(n, K, C, h,
    w)``; with ``hessian=True`` ``(2, n, K, C, h, w)``, ``g`` and ``H A``
    (:func:`gradient_and_hessian_product`). For methods that need gradients at perturbed
    inputs (SmoothGrad-CAM++) or second derivatives (Shapley-CAM)."""

    def gradients_at(new_inputs: Any, rows: Tensor, hessian: bool = False) -> Tensor:
        args = new_inputs if isinstance(new_inputs, tuple) else (new_inputs,)
        captured: list[Tensor] = []

        def keep(output: Tensor) -> Tensor:
            captured.append(output.detach().requires_grad_(True))
            return captured[-1].clone()

        with layer_hook(layer, keep, call), torch.enable_grad():
            scores = score_fn.score(model(*args), rows)
            if not hessian:
                return to_spatial(batched_grad(scores, captured[-1]))
            pair = gradient_and_hessian_product(scores, captured[-1])
            return torch.stack([to_spatial(part) for part in pair])

    return gradients_at


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
