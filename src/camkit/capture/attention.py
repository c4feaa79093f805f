"""The attention probabilities of a transformer's blocks and the gradients of per-block scores
with respect to them (what LeGrad reads).

During the one forward pass of ``camkit.explain``, which then starts at the input, every
``scaled_dot_product_attention`` call inside a block of the model (timm's and Hugging Face's
attention, torchvision's ``nn.MultiheadAttention``) is computed explicitly as
``P = softmax(q kᵀ · scale + mask)``, ``out = P v``, the same value, so that ``P``
``(B, heads, N, N)`` is a tensor of the graph; the block's output tokens ``Z`` ``(B, N, D)``
are kept too. Nothing of the model is changed.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from ..targets import Scores
from .hooks import batched_grad
from .layers import repeated_blocks

TokenHead = Callable[[Tensor], Any]  # tokens (B, N, D) -> the model's output for them


@dataclass
class BlockAttention:
    """One block's captured tensors: its output tokens ``(B, N, D)`` and attention
    probabilities ``(B, heads, N, N)``, both in the graph of the pass."""

    name: str
    tokens: Tensor
    probabilities: Tensor


class _AttentionMode(TorchFunctionMode):
    """Computes every ``scaled_dot_product_attention`` inside a block explicitly and records
    its probabilities for the innermost block being run (``stack``)."""

    def __init__(self, stack: list[str], found: dict[str, Tensor]) -> None:
        super().__init__()
        self.stack, self.found = stack, found

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and self.stack:
            probabilities, out = explicit_attention(*args, **kwargs)
            self.found[self.stack[-1]] = probabilities
            return out
        if func is F.multi_head_attention_forward and self.stack:
            probabilities, out = explicit_multi_head_attention(
                **_MHA.bind(*args, **kwargs).arguments)
            self.found[self.stack[-1]] = probabilities
            return out, None
        return func(*args, **kwargs)


_MHA = inspect.signature(F.multi_head_attention_forward)


def explicit_multi_head_attention(query: Tensor, key: Tensor, value: Tensor, num_heads: int,
                                  in_proj_weight: Tensor | None, in_proj_bias: Tensor | None,
                                  out_proj_weight: Tensor, out_proj_bias: Tensor | None,
                                  attn_mask: Tensor | None = None, dropout_p: float = 0.0,
                                  training: bool = True, is_causal: bool = False,
                                  **rest: Any) -> tuple[Tensor, Tensor]:
    """``F.multi_head_attention_forward`` (``nn.MultiheadAttention``'s computation) written out
    for self-attention with a packed input projection: the probabilities ``(B, heads, L, L)``
    of :func:`explicit_attention` and the output ``(L, B, E)`` (inputs are ``(L, B, E)``)."""
    extras = [name for name in ("bias_k", "bias_v", "add_zero_attn", "key_padding_mask",
                                "use_separate_proj_weight", "static_k", "static_v")
              if rest.get(name) is not None and rest.get(name) is not False]
    if query is not key or key is not value or in_proj_weight is None or extras:
        raise ValueError("legrad reads nn.MultiheadAttention only as self-attention with a "
                         "packed input projection and no "
                         + ", ".join(extras or ["separate key/value inputs"]))
    length, batch, embed = query.shape
    q, k, v = F.linear(query, in_proj_weight, in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(length, batch, num_heads, -1).permute(1, 2, 0, 3) for t in (q, k, v))
    probabilities, out = explicit_attention(q, k, v, attn_mask, dropout_p if training else 0.0,
                                            is_causal)
    out = out.permute(2, 0, 1, 3).reshape(length, batch, embed)
    return probabilities, F.linear(out, out_proj_weight, out_proj_bias)


def explicit_attention(query: Tensor, key: Tensor, value: Tensor,
                       attn_mask: Tensor | None = None, dropout_p: float = 0.0,
                       is_causal: bool = False, scale: float | None = None,
                       enable_gqa: bool = False) -> tuple[Tensor, Tensor]:
    """``F.scaled_dot_product_attention`` written out: the probabilities
    ``P = softmax(q kᵀ · scale + mask)`` ``(..., L, S)`` and the output ``P v``."""
    if dropout_p > 0:
        raise ValueError("legrad needs deterministic attention, but the model's attention "
                         f"applies dropout (p={dropout_p}); explain it in eval mode")
    if enable_gqa:
        repeat = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(repeat, -3), value.repeat_interleave(repeat, -3)
    factor = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    logits = query @ key.transpose(-2, -1) * factor
    if is_causal:
        length, source = logits.shape[-2:]
        causal = torch.ones(length, source, dtype=torch.bool, device=logits.device).tril()
        logits = logits.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        logits = (logits.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool
                  else logits + attn_mask)
    probabilities = logits.softmax(dim=-1)
    return probabilities, probabilities @ value


@contextlib.contextmanager
def _tracking(model: nn.Module, blocks: list[str], stack: list[str],
              tokens: dict[str, Tensor]) -> Iterator[None]:
    """Hooks that keep ``stack`` the names of the blocks being run and record each block's
    output tokens; removed on exit."""
    modules = dict(model.named_modules())
    handles = []

    def enter(name: str) -> Callable[..., None]:
        return lambda _module, _args: stack.append(name)

    def leave(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            stack.pop()
            first = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(first, Tensor):
                tokens[name] = first

        return hook

    try:
        for name in blocks:
            handles.append(modules[name].register_forward_pre_hook(enter(name)))
            handles.append(modules[name].register_forward_hook(leave(name)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def recording_attention(model: nn.Module) -> Iterator[list[BlockAttention]]:
    """Inside the block, every forward pass of ``model`` computes its blocks' attention
    explicitly (same values); on exit, the list it yields holds, in call order, the blocks that
    computed an attention, with their output tokens and probabilities (empty for a model
    without attention). A graph reaches them when the pass runs with gradients from an input
    that requires them (which also keeps ``nn.MultiheadAttention`` off its fused fast path)."""
    stack: list[str] = []
    found: dict[str, Tensor] = {}
    tokens: dict[str, Tensor] = {}
    captured: list[BlockAttention] = []
    with _tracking(model, sorted(repeated_blocks(model)), stack, tokens), _AttentionMode(
            stack, found):
        yield captured
    captured += [BlockAttention(name, tokens[name], found[name]) for name in tokens
                 if name in found and tokens[name].dim() == 3]


def with_attention(captured: list[BlockAttention], model: nn.Module) -> list[BlockAttention]:
    """``captured`` when it holds a block; else a clear error for a model without attention."""
    if not captured:
        raise ValueError(
            f"legrad explains vision transformers, but no block of {type(model).__name__} "
            "computed an attention (a scaled_dot_product_attention call inside a block of a "
            "repeated sequence, with (B, N, D) output tokens); use a map method such as "
            "'gradcam' for this model"
        )
    return captured


def attention_gradients(blocks: list[BlockAttention], head: TokenHead, score: Scores
                        ) -> Iterator[Tensor]:
    """For each block ``l``: ``∂s^l / ∂P^l`` ``(B, K, heads, N, N)``, where ``s^l =
    score(head(Z^l))`` ``(B, K)`` are the target scores the model's head gives the block's
    tokens; one batched backward pass per block."""
    for block in blocks:
        with torch.enable_grad():
            scores = score(head(block.tokens), None)
            yield batched_grad(scores, block.probabilities).float()


def token_head(model: nn.Module) -> TokenHead:
    """The model's head applied to the mean of a block's tokens, ``head(norm(mean_i Z_i))``
    (LeGrad's per-block read-out), for torchvision's and timm's ``VisionTransformer``."""
    encoder, heads = getattr(model, "encoder", None), getattr(model, "heads", None)
    if isinstance(heads, nn.Module) and isinstance(getattr(encoder, "ln", None), nn.Module):
        norm = encoder.ln  # type: ignore[union-attr]
        return lambda z: heads(norm(z.mean(dim=1)))
    parts = [getattr(model, name, None) for name in ("norm", "fc_norm", "head")]
    if all(isinstance(part, nn.Module) for part in parts):
        norm, fc_norm, linear = parts
        return lambda z: linear(fc_norm(norm(z.mean(dim=1))))  # type: ignore[misc]
    raise ValueError(
        f"legrad reads each block's tokens through the model's head, and knows the heads of "
        f"torchvision's and timm's VisionTransformer, not {type(model).__name__}'s; pass "
        "head=f, a function from tokens (B, N, D) to the model's output"
    )
