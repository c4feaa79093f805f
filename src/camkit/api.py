"""``camkit.explain``, the :class:`Explanation` it returns, and the one-method classes."""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar, cast

import numpy as np
import torch
from torch import Tensor, nn

from . import capture
from .capture import LayerPass
from .capture.layers import LayerSpec, Reshape, choose_layer, find_layer, module_name, to_spatial
from .fusion import check_fusion, fuse
from .methods import registry
from .methods.eigen import check_channel_terms, eigen_smoothed
from .methods.registry import ATTENTION, GRADIENTS, INPUT_GRADIENTS, Method
from .postprocess import minmax, postprocess
from .targets import ScoreFn, TargetSpec, resolve


class Explanation(Mapping[str, Tensor]):
    """The maps of one ``camkit.explain`` call.

    ``expl[name]`` is ``(B, K, H, W)`` float32 in [0, 1] on the input's device;
    ``expl.raw[name]`` the map before ReLU, upsampling and normalisation;
    ``expl.constant[name]`` a ``(B, K)`` bool tensor of maps that were constant (returned as
    zeros); ``expl.targets`` the ``(B, K)`` class indices (``None`` for custom scores);
    ``expl.scores`` the ``(B, K)`` target scores; ``expl.outputs`` the model output;
    ``expl.layer`` the target layer's name; ``expl.details`` what methods reported.

    With several layers (``layer=[...]``), ``expl[name]`` is the fused map, ``expl.raw[name]``
    the fusion before its min-max, ``expl.layer`` the names joined by ``+``, and
    ``expl.per_layer[layer_name]`` each layer's own :class:`Explanation`.

    Plain data: :func:`camkit.explanation_to_html` writes its HTML report and
    :func:`camkit.save_explanation` the report, PNG figures and maps.
    """

    def __init__(self, maps: dict[str, Tensor], raw: dict[str, Tensor],
                 constant: dict[str, Tensor], targets: Tensor | None, scores: Tensor,
                 outputs: Any, layer: str, details: dict[str, Any],
                 per_layer: dict[str, Explanation] | None = None) -> None:
        self.maps, self.raw, self.constant = maps, raw, constant
        self.targets, self.scores, self.outputs = targets, scores, outputs
        self.layer, self.details = layer, details
        self.per_layer = per_layer or {}

    @property
    def layers(self) -> tuple[str, ...]:
        """The names of the explained layers (one, or each fused layer)."""
        return tuple(self.per_layer) or (self.layer,)

    def __getitem__(self, method: str) -> Tensor:
        if method not in self.maps:
            raise KeyError(f"{method!r} was not computed; this explanation has {list(self.maps)}")
        return self.maps[method]

    def __iter__(self) -> Iterator[str]:
        return iter(self.maps)

    def __len__(self) -> int:
        return len(self.maps)

    @property
    def classes(self) -> Tensor:
        """:attr:`targets` where they must be class indices: ``(B, K)``, or a ``ValueError``
        for an explanation of custom score targets."""
        if self.targets is None:
            raise ValueError("these maps explain custom score targets, not classes")
        return self.targets

    def numpy(self, method: str) -> np.ndarray:
        """``expl[method]`` as a float32 numpy array on the CPU."""
        return self[method].detach().cpu().numpy()

    def __repr__(self) -> str:
        shape = tuple(next(iter(self.maps.values())).shape) if self.maps else ()
        return f"Explanation(methods={list(self.maps)}, shape={shape}, layer={self.layer!r})"


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
                                      eigen_smooth=eigen_smooth, **options)
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
            cap = capture.run_forward_layers(
                model, layers, inputs, layer_grad=GRADIENTS in needs,
                input_grad=INPUT_GRADIENTS in needs, from_input=ATTENTION in needs,
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


class CAMMethod:
    """One method bound to a model and a layer: ``maps = Method(model, layer)(x, targets)``."""

    method: ClassVar[str]

    def __init__(self, model: nn.Module, layer: LayerSpec = None, **options: Any) -> None:
        registry.get_method(self.method)
        self.model, self.layer, self.options = model, layer, options

    def explain(self, x: Tensor | Sequence[Tensor], targets: TargetSpec = None) -> Explanation:
        """The full :class:`Explanation` for ``x``."""
        return explain(self.model, x, targets, (self.method,), self.layer, **self.options)

    def __call__(self, x: Tensor | Sequence[Tensor], targets: TargetSpec = None) -> Tensor:
        """``(B, K, H, W)`` maps in [0, 1]."""
        return self.explain(x, targets)[self.method]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layer={self.layer!r})"


def method_class(class_name: str, method: str) -> type[CAMMethod]:
    """A :class:`CAMMethod` subclass for a registered method name, documented like a
    function: ``help(camkit.GradCAM)`` shows the maths, the paper, the options and an
    example."""
    return type(class_name, (CAMMethod,), {"method": method,
                                           "__doc__": class_doc(class_name, method)})


EXAMPLE = """\
>>> import torch
>>> from torch import nn
>>> model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
...                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
>>> x = torch.rand(2, 3, 32, 32)
"""


def class_doc(class_name: str, method: str) -> str:
    """The docstring of a method's class: summary, the equations of its pure functions,
    paper, options with their defaults, and a doctest."""
    m = registry.get_method(method)
    maths = "\n\n".join(_indented(inspect.getdoc(f) or f.__name__) for f in m.maths)
    defaults = {name: p.default for name, p in inspect.signature(m.compute).parameters.items()
                if p.default is not inspect.Parameter.empty}
    options = ", ".join(f"``{o}={defaults[o]!r}``" if o in defaults else f"``{o}``"
                        for o in m.options) or "none"
    example = m.example or (f">>> maps = camkit.{class_name}(model, layer=\"1\")(x, targets=3)\n"
                            ">>> tuple(maps.shape), bool(maps.min() >= 0), bool(maps.max() <= 1)"
                            "\n((2, 1, 32, 32), True, True)\n")
    return (f"{m.summary[0].upper()}{m.summary[1:]} (``{method}``).\n\n"
            f"``{class_name}(model, layer, **options)(x, targets)`` gives ``(B, K, H, W)`` maps "
            f"in [0, 1]; ``.explain(x, targets)`` the full :class:`Explanation`. It is "
            f"``camkit.explain(model, x, targets, [{method!r}], layer, **options)``.\n\n"
            f"Maths:\n\n{maths}\n\nPaper: {m.paper}.\n\nOptions: {options}.\n\n"
            f"Example:\n\n{_indented(EXAMPLE + example)}\n")


def _indented(text: str) -> str:
    return "\n".join("    " + line if line else "" for line in text.splitlines())
