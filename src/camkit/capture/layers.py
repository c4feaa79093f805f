"""Target-layer lookup (by module, dotted name or automatically) and token-to-grid reshapes."""

from __future__ import annotations

import difflib
import math
import weakref
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor, nn

LayerSpec = nn.Module | str | None
Reshape = Callable[[Tensor], Tensor]

# Automatic choices, per model and input shape, so the probe forward runs once.
_auto_cache: weakref.WeakKeyDictionary[nn.Module, dict[tuple, str]] = weakref.WeakKeyDictionary()


def module_name(model: nn.Module, module: nn.Module) -> str:
    """The dotted name of ``module`` inside ``model``; a clear error if it is not part of it."""
    for name, candidate in model.named_modules():
        if candidate is module:
            return name or "<model>"
    raise ValueError(
        f"the layer {type(module).__name__} is not a submodule of the model "
        f"{type(model).__name__}; pass one of model.named_modules() or its dotted name"
    )


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (``"layer4"``, ``"features.28"``, ``"blocks.-1"``)."""
    modules = dict(model.named_modules())
    if name in modules:
        return modules[name]
    module: nn.Module = model
    try:  # allow negative indices into containers, e.g. "encoder.layers.-1"
        for part in name.split("."):
            module = (cast(Any, module)[int(part)] if part.lstrip("-").isdigit()
                      else getattr(module, part))
        if isinstance(module, nn.Module):
            return module
    except (AttributeError, IndexError, KeyError, TypeError):
        pass
    close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.5)
    children = [n for n, _ in model.named_children()]
    hint = (f"Closest names: {', '.join(close)}" if close
            else f"Its top-level modules: {', '.join(children[:12])}"
                 + (", ..." if len(children) > 12 else ""))
    raise ValueError(
        f"the model has no layer named {name!r}. {hint}. Dotted names reach inside them "
        "(e.g. 'layer4.1.conv2'; every name: [n for n, _ in model.named_modules()])."
    )


def is_spatial(t: object) -> bool:
    """True for a ``(B, C, h, w)`` tensor with more than one spatial position."""
    return isinstance(t, Tensor) and t.dim() == 4 and t.shape[-1] * t.shape[-2] > 1


def choose_layer(model: nn.Module, inputs: tuple[Tensor, ...]) -> str:
    """The automatic target layer: the last module on the forward path whose output is
    spatial ``(B, C, h, w)``; but for a model that ends in tokens (a vision transformer, after
    its patch embedding) the first module of its last block with a token-grid output
    ``(B, N, C)``, the input of the last block's attention (``blocks.-1.norm1`` in timm,
    ``encoder.layers.-1.ln_1`` in torchvision), whose patch tokens still carry the class's
    gradient (the final norm's, read only through the class token, do not).

    Runs one probe forward of the first image without gradients, once per model and input
    shape; the answer is cached.
    """
    key = tuple((tuple(t.shape[1:]), t.dtype, t.device) for t in inputs)
    cached = _auto_cache.setdefault(model, {})
    if key in cached:
        return cached[key]
    names = {m: n for n, m in model.named_modules()}
    spatial: list[str] = []
    tokens: list[str] = []  # token-grid outputs, in call order
    called: list[str] = []  # every module, in the order its call returned
    ends_in_tokens = False

    def record(module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        nonlocal ends_in_tokens
        called.append(names[module])
        if is_spatial(output) and _follows_an_input(output, (*args, *kwargs.values())):
            spatial.append(names[module])
            ends_in_tokens = False
        elif is_token_grid(output):
            tokens.append(names[module])
            ends_in_tokens = True

    handles = [m.register_forward_hook(record, with_kwargs=True) for m in names if m is not model]
    try:
        with torch.no_grad():
            model(*(t[:1] for t in inputs))
    finally:
        for h in handles:
            h.remove()
    chosen = (last_block_input(model, called, tokens) if ends_in_tokens or not spatial
              else spatial[-1])
    if chosen is None:
        raise ValueError(
            "found no layer with a spatial (B, C, h, w) output, nor a transformer block with "
            "token outputs, on the forward path; pass layer= explicitly"
        )
    cached[key] = chosen
    return chosen


def last_block_input(model: nn.Module, called: list[str], token_modules: list[str]
                     ) -> str | None:
    """Of the modules with token outputs (names in call order), the first one inside the
    model's last block: the last-called child of a container of repeated blocks, descending
    into nested ones (a Swin stage's blocks). ``called``: every module in call order."""
    blocks = repeated_blocks(model)
    block: str | None = None
    while True:
        inner = [n for n in called if n in blocks
                 and (block is None or n.startswith(block + "."))]
        if not inner:
            break
        block = inner[-1]
    if block is None:
        return None
    return next((n for n in token_modules if n.startswith(block + ".")), block)


def repeated_blocks(model: nn.Module) -> set[str]:
    """Names of the blocks of ``Sequential`` / ``ModuleList`` containers of two or more
    composite modules of one type (``blocks.3`` of timm's ViT, torchvision's
    ``encoder.layers.encoder_layer_3``, a Swin stage and its blocks)."""
    found = set()
    for name, module in model.named_modules():
        children = list(module.named_children())
        if (isinstance(module, (nn.Sequential, nn.ModuleList)) and len(children) > 1
                and len({type(c) for _, c in children}) == 1
                and all(any(True for _ in c.children()) for _, c in children)):
            found |= {f"{name}.{child}" if name else child for child, _ in children}
    return found


def is_token_grid(t: object) -> bool:
    """True for ``(B, N, C)`` tokens that :func:`token_grid` turns into a grid."""
    if not isinstance(t, Tensor) or t.dim() != 3:
        return False
    n = t.shape[1]
    return any(n > extra and math.isqrt(n - extra) ** 2 == n - extra and n - extra > 1
               for extra in EXTRA_TOKENS)


def _follows_an_input(output: Any, args: tuple) -> bool:
    """Whether the module was called on a tensor with the output's batch size: not a
    parameter-only table such as a relative position bias ``(1, heads, N, N)``."""
    return any(isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == output.shape[0]
               for a in args)


# Leading non-patch tokens: none, class, class + distillation (DeiT), 4 registers, class + 4.
EXTRA_TOKENS = (0, 1, 2, 4, 5)


def token_grid(tokens: Tensor) -> Tensor:
    """``(B, N, C)`` tokens → ``(B, C, g, g)`` when ``N = g² + t`` for ``t`` in
    :data:`EXTRA_TOKENS` leading non-patch tokens, which are dropped."""
    n = tokens.shape[1]
    for extra in EXTRA_TOKENS:
        side = math.isqrt(n - extra) if n > extra else 0
        if side > 1 and side * side == n - extra:
            return tokens[:, extra:].unflatten(1, (side, side)).permute(0, 3, 1, 2)
    raise ValueError(
        f"cannot infer a square patch grid from {n} tokens (tried {EXTRA_TOKENS} leading class/"
        "register tokens); pass reshape=f mapping the layer output to (B, C, h, w)"
    )


def to_spatial(output: Tensor, reshape: Reshape | None = None) -> Tensor:
    """The captured layer output as ``(B, C, h, w)``.

    ``(B, C, h, w)`` is kept; ``(B, N, C)`` tokens go through :func:`token_grid`; a Swin-style
    channels-last ``(B, h, w, C)`` (``h == w != C``) is permuted. A user ``reshape`` wins.
    """
    if reshape is not None:
        out = reshape(output)
        if out.dim() != 4:
            raise ValueError(f"reshape must return (B, C, h, w), got shape {tuple(out.shape)}")
        return out
    if output.dim() == 3:
        return token_grid(output)
    if output.dim() == 4:
        _, d1, d2, d3 = output.shape
        if d1 == d2 and d3 != d1:
            return output.permute(0, 3, 1, 2)
        return output
    raise ValueError(
        f"the target layer outputs shape {tuple(output.shape)}, which is not spatial; choose "
        "a layer with a (B, C, h, w) or (B, N, C) token output, or pass reshape=f"
    )
