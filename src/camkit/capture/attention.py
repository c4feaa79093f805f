"""The attention of a transformer's blocks and the gradients of per-block scores with respect
to its probabilities (what LeGrad reads).

During the one forward pass of ``camkit.explain``, every ``scaled_dot_product_attention`` call
inside a block of the model (timm's and Hugging Face's attention, torchvision's
``nn.MultiheadAttention`` written out around it) runs as it would, fused, and its output
``O = P V`` ``(B, heads, N, d)`` is kept with the values ``V`` it weighs; the block's output
tokens ``Z`` ``(B, N, D)`` are kept too. The probabilities ``P = softmax(q kᵀ · scale + mask)``
are never formed: ``P`` reaches anything after it only through ``O = P V``, so the gradient of
a score ``s`` with respect to ``P`` is ``(∂s/∂O) Vᵀ``. ``O`` is in the graph of the pass: a
leaf of it when nothing before it is (the graph then starts at the first block's attention).
Nothing of the model is changed.
"""

from __future__ import annotations

import contextlib
import inspect
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
    """One block's captured tensors: its output tokens ``(B, N, D)`` and its attention's output
    ``O = P V`` ``(B, heads, N, d)``, both in the graph of the pass, and the values ``V``
    ``(B, heads, N, d)``."""

    name: str
    tokens: Tensor
    output: Tensor
    values: Tensor


class _AttentionMode(TorchFunctionMode):
    """Records the output and values of every ``scaled_dot_product_attention`` inside a block
    (:func:`attention_in_graph`) for the innermost block being run (``stack``)."""

    def __init__(self, stack: list[str], found: dict[str, tuple[Tensor, Tensor]]) -> None:
        super().__init__()
        self.stack, self.found = stack, found

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and self.stack:
            out, values = attention_in_graph(*args, **kwargs)
            self.found[self.stack[-1]] = out, values
            return out.clone()  # the model's in-place ops act on a copy, never on `out`
        if func is F.multi_head_attention_forward and self.stack:
            self.found[self.stack[-1]], out = multi_head_attention(
                **_MHA.bind(*args, **kwargs).arguments)
            return out, None
        return func(*args, **kwargs)


_MHA = inspect.signature(F.multi_head_attention_forward)


def multi_head_attention(query: Tensor, key: Tensor, value: Tensor, num_heads: int,
                         in_proj_weight: Tensor | None, in_proj_bias: Tensor | None,
                         out_proj_weight: Tensor, out_proj_bias: Tensor | None,
                         attn_mask: Tensor | None = None, dropout_p: float = 0.0,
                         training: bool = True, is_causal: bool = False,
                         **rest: Any) -> tuple[tuple[Tensor, Tensor], Tensor]:
    """``F.multi_head_attention_forward`` (``nn.MultiheadAttention``'s computation) written out
    around :func:`attention_in_graph` for self-attention with a packed input projection: the
    attention's output and values ``(B, heads, L, d)`` and the output ``(L, B, E)`` (inputs
    are ``(L, B, E)``; a boolean ``attn_mask`` marks the pairs that may *not* attend, a float
    one is added, ``(L, L)`` or ``(B·heads, L, L)``)."""
    extras = [name for name in ("bias_k", "bias_v", "add_zero_attn", "key_padding_mask",
                                "use_separate_proj_weight", "static_k", "static_v")
              if rest.get(name) is not None and rest.get(name) is not False]
    if query is not key or key is not value or in_proj_weight is None or extras:
        raise ValueError("legrad reads nn.MultiheadAttention only as self-attention with a "
                         "packed input projection and no "
                         + ", ".join(extras or ["separate key/value inputs"]))
    length, batch, embed = query.shape
    tokens = query.transpose(0, 1).contiguous()  # (B, L, E): one matrix product per projection
    q, k, v = F.linear(tokens, in_proj_weight, in_proj_bias).unflatten(
        -1, (3, num_heads, -1)).permute(2, 0, 3, 1, 4)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device
                                    ).masked_fill(attn_mask, float("-inf"))
        if attn_mask.dim() == 3:
            attn_mask = attn_mask.reshape(batch, num_heads, length, length)
    heads, values = attention_in_graph(q, k, v, attn_mask, dropout_p if training else 0.0,
                                       is_causal and attn_mask is None)
    out = F.linear(heads.transpose(1, 2).reshape(batch, length, embed), out_proj_weight,
                   out_proj_bias)
    return (heads, values), out.transpose(0, 1)


def attention_in_graph(query: Tensor, key: Tensor, value: Tensor,
                       attn_mask: Tensor | None = None, dropout_p: float = 0.0,
                       is_causal: bool = False, scale: float | None = None,
                       enable_gqa: bool = False) -> tuple[Tensor, Tensor]:
    """``F.scaled_dot_product_attention`` as it runs (fused): its output ``O = P V``
    ``(..., L, d)``, made a leaf of the graph when nothing before it is in one, and the values
    ``V`` ``(..., S, d)`` that ``P`` ``(..., L, S)`` weighs (repeated for grouped-query
    attention)."""
    if dropout_p > 0:
        raise ValueError("legrad needs deterministic attention, but the model's attention "
                         f"applies dropout (p={dropout_p}); explain it in eval mode")
    out = F.scaled_dot_product_attention(query, key, value, attn_mask, 0.0, is_causal,
                                         scale=scale, enable_gqa=enable_gqa)
    if enable_gqa:
        value = value.repeat_interleave(query.shape[-3] // value.shape[-3], -3)
    return (out if out.requires_grad else out.detach().requires_grad_()), value


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
    """Inside the block, every forward pass of ``model`` keeps its blocks' attention outputs
    and values (:func:`attention_in_graph`; same values as without); on exit, the list it
    yields holds, in call order, the blocks that computed an attention, with their output
    tokens, attention outputs and values (empty for a model without attention). The pass must
    run with gradients on for the attention outputs to be in a graph (the recording itself
    keeps ``nn.MultiheadAttention`` off its fused fast path, which skips the functions it
    records)."""
    stack: list[str] = []
    found: dict[str, tuple[Tensor, Tensor]] = {}
    tokens: dict[str, Tensor] = {}
    captured: list[BlockAttention] = []
    with _tracking(model, sorted(repeated_blocks(model)), stack, tokens), _AttentionMode(
            stack, found):
        yield captured
    captured += [BlockAttention(name, tokens[name], *found[name]) for name in tokens
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
    """For each block ``l``: ``∂s^l / ∂P^l = (∂s^l / ∂O^l) V^lᵀ`` ``(B, K, heads, N, N)``,
    where ``s^l = score(head(Z^l))`` ``(B, K)`` are the target scores the model's head gives
    the block's tokens and ``O^l = P^l V^l`` is the only way the probabilities ``P^l`` reach
    them; one batched backward pass per block."""
    for block in blocks:
        with torch.enable_grad():
            scores = score(head(block.tokens), None)
            at_output = batched_grad(scores, block.output).float()  # (B, K, heads, N, d)
        yield at_output @ block.values.detach().float()[:, None].transpose(-2, -1)


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
