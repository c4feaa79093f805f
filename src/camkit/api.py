"""``camkit.explain``: one forward (and at most one backward) pass, every requested method,
the post-processed maps as an :class:`~camkit.explanation.Explanation`."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from . import capture
from .capture import LayerPass
from .capture.layers import LayerSpec, Reshape, choose_layer, find_layer, module_name, to_spatial
from .explanation import Explanation
from .fusion import check_fusion, fuse
from .methods import registry
from .methods.eigen import check_channel_terms, eigen_smoothed
from .methods.registry import ATTENTION, GRADIENTS, INPUT_GRADIENTS, Method
from .postprocess import minmax, postprocess
from .targets import ScoreFn, TargetSpec, resolve


def as_inputs(x: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    """Validate the input: ``(B, C, H, W)`` or ``(C, H, W)``, or a tuple of tensors for a
    multi-input model; finite values only."""
    inputs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    if not inputs or not all(isinstance(t, Tensor) for t in inputs):
        raise TypeError("x must be a tensor (B, C, H, W) or a tuple of tensors")
    first = inputs[0]
    if first.dim() == 3:
        inputs = tuple(t.unsqueeze(0) for t in inputs)
        first = inputs[0]
    elif first.dim() != 4:
        raise ValueError(
            f"x must be an image batch (B, C, H, W) or one image (C, H, W); got shape "
            f"{tuple(first.shape)}"
        )
    if first.shape[0] == 0:
        raise ValueError("x holds no images (a batch of 0); pass at least one image")
    for t in inputs:
        if t.is_floating_point() and _not_finite(t):
            raise ValueError("x contains NaN or infinite values; clean the input first")
    return inputs


def _not_finite(t: Tensor) -> bool:
    """Whether ``t`` holds a NaN or an infinity. A sum is finite when every term is (one cheap
    reduction); only a non-finite sum, which overflow can also cause, takes the exact test."""
    return not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all())


def resolve_layer(
    model: nn.Module, layer: LayerSpec, inputs: tuple[Tensor, ...]
) -> tuple[str, nn.Module]:
    """The target layer as ``(dotted name, module)``; ``None`` picks the last spatial layer."""
    if isinstance(layer, nn.Module):
        return module_name(model, layer), layer
    if layer is None:
        with capture.borrowed(model):
            layer = choose_layer(model, inputs)
    if not isinstance(layer, str):
        raise TypeError(
            f"layer must be a module, a dotted name or None, got {type(layer).__name__}"
        )
    return layer, find_layer(model, layer)


def resolve_layers(
    model: nn.Module, layer: LayerSpec | Sequence[nn.Module | str], inputs: tuple[Tensor, ...]
) -> dict[str, nn.Module]:
    """The target layers as ``{dotted name: module}``: one, or each of a list."""
    specs = list(layer) if isinstance(layer, (list, tuple)) else [cast(LayerSpec, layer)]
    if not specs:
        raise ValueError("layer=[] names no layer; give a layer, a list of layers or None")
    return dict(resolve_layer(model, spec, inputs) for spec in specs)


def check_options(methods: list[Method], options: dict[str, Any]) -> list[dict[str, Any]]:
    """Each method's share of ``options``; a ``TypeError`` naming what the methods accept when
    an option belongs to none of them."""
    known = {name for m in methods for name in m.options}
    unknown = sorted(set(options) - known)
    if unknown:
        accepted = ", ".join(sorted(known)) or "none"
        raise TypeError(
            f"unknown option(s) {unknown} for methods {[m.name for m in methods]}; "
            f"they accept: {accepted}"
        )
    return [{k: v for k, v in options.items() if k in m.options} for m in methods]


def _layer_layout_inverse(raw: Tensor, spatial: Tensor) -> Reshape:
    """Map ``(n, C, h, w)`` back to the layer's own layout (for re-scoring modified maps)."""
    if raw.shape == spatial.shape:
        return lambda acts: acts
    if raw.dim() == 4 and raw.shape == spatial.permute(0, 2, 3, 1).shape:
        return lambda acts: acts.permute(0, 2, 3, 1)

    def unsupported(_acts: Tensor) -> Tensor:
        raise ValueError(
            f"this method replaces the layer's output, which needs a (B, C, h, w) or "
            f"(B, h, w, C) layer; this one outputs {tuple(raw.shape)}"
        )

    return unsupported


def _spatial(grads: Tensor, reshape: Reshape | None) -> Tensor:
    """Layer-layout gradients ``(B, K, ...)`` → ``(B, K, C, h, w)`` float32, spatial layout."""
    spatial = to_spatial(grads.flatten(0, 1), reshape)
    return spatial.unflatten(0, grads.shape[:2]).float()


def _gradients(scores: Tensor, wrt: tuple[Tensor, ...], reshape: Reshape | None,
               detector: capture.DetectorRecord | None) -> list[Tensor]:
    """``(B, K, C, h, w)`` float32 gradients of ``scores`` at each layer, in spatial layout,
    from one batched backward pass, or where a detector's scores read the features."""
    grads = (capture.detector_gradients(scores, wrt, detector)
             if detector and detector.usable() else capture.batched_grads(scores, wrt))
    return [_spatial(g, reshape) for g in grads]


def explain(
    model: nn.Module,
    x: Tensor | Sequence[Tensor],
    targets: TargetSpec = None,
    methods: str | Sequence[str] = ("gradcam",),
    layer: LayerSpec | Sequence[nn.Module | str] = None,
    *,
    reshape: Reshape | None = None,
    eval_mode: bool = True,
    seed: int = 0,
    aug_smooth: bool = False,
    fusion: str = "mean",
    eigen_smooth: bool = False,
    fast: bool = True,
    **options: Any,
) -> Explanation:
    """Explain ``model``'s output on ``x`` with one or more methods, from one forward pass.

    Args:
        model: any ``nn.Module``; borrowed, never changed.
        x: ``(B, C, H, W)``, ``(C, H, W)``, or a tuple of tensors for multi-input models.
        targets: see :mod:`camkit.targets` (``None`` = predicted class).
        methods: method names (``camkit.available_methods()``).
        layer: module, dotted name, or ``None`` for the last spatial layer; or a list of them,
            explained from the same forward and backward pass and fused.
        reshape: maps the layer output to ``(B, C, h, w)`` when it cannot be inferred.
        eval_mode: run the model in eval mode for the call (its flags are restored).
        seed: seeds the generator of stochastic methods.
        aug_smooth: average each method's maps over the test-time augmentations of
            :data:`AUGMENTATIONS` (horizontal flip × brightness 0.9, 1, 1.1), each map flipped
            back, for the classes chosen on the clean input; six passes instead of one.
        fusion: how several layers' maps become one (:func:`camkit.fusion.fuse`): ``"mean"``
            of the normalised maps or ``"layercam"`` (tanh-scaled maximum).
        eigen_smooth: each map is the first principal component of its per-channel terms
            (``α_k A^k``, or ``g·A`` per channel, ...) instead of their sum, for methods whose
            map is a sum over the layer's channels (:attr:`Method.channel_terms`).
        fast: run the forward pass through a copy of the model kept for its present weights,
            with batch norm folded into the convolutions and channels-last weights
            (:mod:`camkit.capture.folding`; exact up to float rounding, checked against the
            model when made; one more copy of the weights in memory), in eval mode when no
            method needs gradients through the whole network. ``False`` runs the model itself.
            Changed weights are noticed, except a change through ``tensor.data``: then call
            ``camkit.capture.forget(model)``.
        **options: method options (each method receives those it declares).

    Example: two methods, two target classes per image, one forward and one backward pass.

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
    ...                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    >>> expl = camkit.explain(model, torch.rand(2, 3, 32, 32), targets=[[0, 3], [1, 2]],
    ...                       methods=["gradcam", "layercam"], layer="1")
    >>> list(expl), tuple(expl["gradcam"].shape), expl.targets.tolist()
    (['gradcam', 'layercam'], (2, 2, 32, 32), [[0, 3], [1, 2]])
    """
    if aug_smooth:
        return _augmentation_smoothed(model, x, targets, methods, layer, reshape=reshape,
                                      eval_mode=eval_mode, seed=seed, fusion=fusion,
                                      eigen_smooth=eigen_smooth, fast=fast, **options)
    names = [methods] if isinstance(methods, str) else list(methods)
    chosen = [registry.get_method(n) for n in dict.fromkeys(names)]
    if eigen_smooth:
        check_channel_terms(chosen, registry.available_methods())
    per_method_options = check_options(chosen, options)
    check_fusion(fusion)
    inputs = as_inputs(x)
    layers = resolve_layers(model, layer, inputs)
    needs = frozenset().union(*(m.needs for m in chosen))
    graph = needs & {GRADIENTS, INPUT_GRADIENTS, ATTENTION}
    grad_mode = torch.enable_grad() if graph else torch.no_grad()
    recording = (capture.recording_attention(model) if ATTENTION in needs
                 else contextlib.nullcontext(None))
    detector = (capture.recording_detector(model, list(layers.values()), targets)
                if GRADIENTS in needs else contextlib.nullcontext(None))
    with capture.borrowed(model, eval_mode), grad_mode:
        with recording as attention, detector as detector_record:
            runner, run_layers = (capture.forward_model(model, layers, inputs)
                                  if fast and eval_mode and detector_record is None
                                  and not needs & {INPUT_GRADIENTS, ATTENTION}
                                  else (model, layers))
            cap = capture.run_forward_layers(
                runner, run_layers, inputs, layer_grad=GRADIENTS in needs,
                input_grad=INPUT_GRADIENTS in needs, autograd=ATTENTION in needs,
            )
        score_fn = resolve(targets, cap.outputs, inputs[0].shape[0])
        scores = _checked_scores(score_fn, cap.outputs, inputs[0].shape[0])
        passes = _layer_passes(model, layers, inputs, cap, score_fn, scores, needs, reshape, seed,
                               attention, detector_record)
        del cap
        raw = [{m.name: _raw_map(m, layer_pass, opts, eigen_smooth)
                for m, opts in zip(chosen, per_method_options, strict=True)}
               for layer_pass in passes]
    per_layer = {p.layer_name: _explanation(chosen, r, p, score_fn.indices)
                 for p, r in zip(passes, raw, strict=True)}
    expl = per_layer[passes[0].layer_name] if len(passes) == 1 else _fused(per_layer, fusion)
    for method, constant in expl.constant.items():
        _warn_constant(method, constant)
    return expl


def _layer_passes(
    model: nn.Module, layers: dict[str, nn.Module], inputs: tuple[Tensor, ...],
    cap: capture.Capture, score_fn: ScoreFn, scores: Tensor, needs: frozenset[str],
    reshape: Reshape | None, seed: int, attention: list[capture.BlockAttention] | None,
    detector: capture.DetectorRecord | None,
) -> list[LayerPass]:
    """One :class:`LayerPass` per captured layer; gradients of all from one backward pass."""
    activations = [to_spatial(a, reshape) for a in cap.activations]
    gradients: list[Tensor | None] = (
        list(_gradients(scores, cap.activations, reshape, detector)) if GRADIENTS in needs
        else [None] * len(layers))
    input_gradients = (capture.batched_grad(scores, cap.inputs[0], cap.guided).float()
                       if INPUT_GRADIENTS in needs else None)
    outputs, device = _detached(cap.outputs), inputs[0].device
    return [
        LayerPass(
            activations=spatial.detach().float(),
            gradients=grads,
            input_gradients=input_gradients,
            scores=scores.detach().float(),
            target_indices=score_fn.indices,
            outputs=outputs,
            inputs=inputs,
            model=model,
            layer=module,
            layer_name=name,
            rescore_inputs=capture.rescorer_for_inputs(model, score_fn, len(inputs)),
            rescore_activations=capture.rescorer_for_activations(
                model, module, call, inputs, score_fn, _layer_layout_inverse(act, spatial)),
            input_size=(inputs[0].shape[-2], inputs[0].shape[-1]),
            generator=torch.Generator(device=device).manual_seed(seed),
            score_outputs=score_fn.score,
            gradients_for_inputs=capture.layer_gradients_for_inputs(
                model, module, call, score_fn, lambda grads: _spatial(grads, reshape)),
            attention=attention,
            notes={"gradients": dict(detector.summary)} if detector and detector.summary else {},
        )
        for (name, module), act, spatial, grads, call in zip(
            layers.items(), cap.activations, activations, gradients, cap.calls, strict=True)
    ]


def _explanation(chosen: list[Method], raw: dict[str, Tensor], layer_pass: LayerPass,
                 targets: Tensor | None) -> Explanation:
    """The post-processed maps of one layer."""
    maps, constant = {}, {}
    for m in chosen:
        maps[m.name], constant[m.name] = postprocess(raw[m.name], layer_pass.input_size, m.relu)
    return Explanation(maps, raw, constant, targets, layer_pass.scores, layer_pass.outputs,
                       layer_pass.layer_name, layer_pass.notes)


def _fused(per_layer: dict[str, Explanation], fusion: str) -> Explanation:
    """One :class:`Explanation` whose maps fuse each layer's (:func:`camkit.fusion.fuse`)."""
    first = next(iter(per_layer.values()))
    raw = {m: fuse([e[m] for e in per_layer.values()], fusion) for m in first}
    maps, constant = {}, {}
    for m in first:
        maps[m], constant[m] = minmax(raw[m].clone(), inplace=True)
    details = {name: e.details for name, e in per_layer.items()}
    return Explanation(maps, raw, constant, first.targets, first.scores, first.outputs,
                       "+".join(per_layer), details, per_layer)


def _raw_map(method: Method, layer_pass: LayerPass, options: dict[str, Any],
             eigen_smooth: bool) -> Tensor:
    if eigen_smooth:
        return eigen_smoothed(method, layer_pass, options)
    return method.compute(layer_pass, **options).float()


# Test-time augmentations of aug_smooth: (horizontal flip, brightness factor), clean first.
AUGMENTATIONS = ((False, 1.0), (False, 0.9), (False, 1.1), (True, 0.9), (True, 1.0), (True, 1.1))


def _augmentation_smoothed(model: nn.Module, x: Tensor | Sequence[Tensor], targets: TargetSpec,
                           methods: str | Sequence[str],
                           layer: LayerSpec | Sequence[nn.Module | str], **settings: Any
                           ) -> Explanation:
    """``explain`` averaged over :data:`AUGMENTATIONS`: each augmented first input
    ``flip(x) · factor`` is explained for the clean input's classes, its maps (and raw maps)
    are flipped back, and the mean of the maps is min-max normalised again."""
    inputs = as_inputs(x)
    clean = explain(model, inputs, targets, methods, layer, **settings)
    chosen = targets if clean.targets is None else clean.targets
    runs = [clean]
    for flip, factor in AUGMENTATIONS[1:]:
        first = inputs[0].flip(-1) if flip else inputs[0]
        expl = explain(model, (first * factor, *inputs[1:]), chosen, methods, layer, **settings)
        if flip:
            expl.maps = {name: m.flip(-1) for name, m in expl.maps.items()}
            expl.raw = {name: m.flip(-1) for name, m in expl.raw.items()}
        runs.append(expl)
    maps, raw, constant = {}, {}, {}
    for name in clean.maps:
        mean = torch.stack([r.maps[name] for r in runs]).mean(dim=0)
        maps[name], constant[name] = postprocess(mean, (mean.shape[-2], mean.shape[-1]), False)
        raw[name] = torch.stack([r.raw[name] for r in runs]).mean(dim=0)
    details = {**clean.details, "aug_smooth": {"augmentations": AUGMENTATIONS}}
    return Explanation(maps, raw, constant, clean.targets, clean.scores, clean.outputs,
                       clean.layer, details)


def _checked_scores(score_fn: ScoreFn, outputs: Any, batch: int) -> Tensor:
    scores = score_fn.score(outputs)
    if scores.shape[0] != batch:
        raise ValueError(
            f"the target function returned {scores.shape[0]} rows for a batch of {batch}"
        )
    return scores


def _detached(outputs: Any) -> Any:
    if isinstance(outputs, Tensor):
        return outputs.detach()
    if isinstance(outputs, dict):
        return type(outputs)({k: _detached(v) for k, v in outputs.items()})
    if isinstance(outputs, (tuple, list)) and not hasattr(outputs, "_fields"):
        return type(outputs)(_detached(v) for v in outputs)
    return outputs


def _warn_constant(method: str, constant: Tensor) -> None:
    count = int(constant.sum())
    if count:
        warnings.warn(
            f"{count} of {constant.numel()} {method} maps were constant and are returned as "
            f"zeros; expl.constant[{method!r}] says which",
            RuntimeWarning, stacklevel=3,
        )


def available_methods() -> dict[str, str]:
    """Method names with one-line descriptions."""
    return registry.available_methods()
