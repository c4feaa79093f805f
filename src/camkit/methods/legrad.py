"""LeGrad (Bou et al. 2024): how sensitive each block's read-out is to its attention
probabilities, for vision transformers.

Each block ``l``'s output tokens ``Z^l`` are read through the model's head (by default
``head(norm(mean_i Z^l_i))``, :func:`camkit.capture.attention.token_head`) to give the target
score ``s^l``; its gradient with respect to the block's attention probabilities ``P^l`` (read in
the call's one forward pass, then one batched backward pass per block) makes the map. The target
layer is unused: LeGrad reads the blocks themselves. Raw maps are ``(B, K, g, g)`` on the patch
grid (the leading class / register tokens dropped, :func:`camkit.capture.layers.token_grid`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from ..capture import LayerPass
from ..capture.attention import TokenHead, attention_gradients, token_head, with_attention
from ..capture.layers import token_grid
from .registry import ATTENTION, Method, register


def legrad_block(gradients: Tensor) -> Tensor:
    """One block's LeGrad relevance of each key token ``j``:
    ``E^l_j = 1/(H N) Σ_h Σ_i ReLU(∂s^l / ∂P^l_{h,i,j})``, the positive gradients of the
    block's score with respect to its attention probabilities averaged over the ``H`` heads
    and the ``N`` queries. ``(B, K, H, N, N)`` → ``(B, K, N)``."""
    return gradients.clamp(min=0).mean(dim=(2, 3))


def legrad(relevances: Iterable[Tensor]) -> Tensor:
    """LeGrad map ``E = 1/L Σ_l E^l``, the mean of :func:`legrad_block` over the ``L``
    explained blocks: ``L`` × ``(B, K, N)`` → ``(B, K, N)``."""
    return torch.stack(list(relevances)).mean(dim=0)


def _checked_blocks(blocks: int | None, available: int) -> int:
    if blocks is None:
        return available
    if isinstance(blocks, bool) or not isinstance(blocks, int) or not 1 <= blocks <= available:
        raise ValueError(f"blocks must be a number of last blocks from 1 to {available} (or "
                         f"None for all), got {blocks!r}")
    return blocks


def _legrad(layer_pass: LayerPass, blocks: int | None = None, head: TokenHead | None = None
            ) -> Tensor:
    captured = with_attention(layer_pass.block_attention, layer_pass.model)
    captured = captured[-_checked_blocks(blocks, len(captured)):]
    read_out = token_head(layer_pass.model) if head is None else head
    tokens = legrad(legrad_block(g) for g in attention_gradients(captured, read_out,
                                                                 layer_pass.output_scorer))
    layer_pass.notes["legrad"] = {"blocks": [block.name for block in captured]}
    return token_grid(tokens.flatten(0, 1)[..., None])[:, 0].unflatten(0, tokens.shape[:2])


register(Method(
    "legrad", "positive gradients of each block's read-out w.r.t. its attention (ViTs)",
    "Bou et al., LeGrad: An Explainability Method for Vision Transformers via Feature "
    "Formation Sensitivity, 2024 (arXiv:2404.03214)", _legrad, frozenset({ATTENTION}),
    options=("blocks", "head"),
    maths=(legrad, legrad_block),
    example=""">>> from torchvision.models import VisionTransformer
>>> vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
...                         hidden_dim=16, mlp_dim=32, num_classes=4)
>>> _ = nn.init.normal_(vit.heads.head.weight)  # torchvision's is zero
>>> maps = camkit.LeGrad(vit, blocks=2)(x, targets=3)
>>> tuple(maps.shape), bool(maps.min() >= 0), bool(maps.max() <= 1)
((2, 1, 32, 32), True, True)
""",
))
