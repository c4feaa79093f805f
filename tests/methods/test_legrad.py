"""LeGrad against a per-image, per-target, per-block loop that builds each block's attention
probabilities as a leaf tensor, and the attention it records against PyTorch's own and the
gradient it reads against the gradient at explicit probabilities."""

from __future__ import annotations

import pytest
import torch
import torchvision
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.nn import functional as F

import camkit
from camkit.capture.attention import attention_in_graph, multi_head_attention

DEPTH, GRID = 3, 4


def tiny_vit() -> VisionTransformer:
    """timm's ViT (fused attention), 32×32 images, 8×8 patches, 3 blocks, random weights."""
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=DEPTH, num_heads=2,
                             num_classes=5).eval()


def slow_legrad(model: VisionTransformer, x: torch.Tensor, classes: list[list[int]],
                blocks: range) -> torch.Tensor:
    """For each image, class and block: run the blocks by hand, the block's softmax attention
    made a leaf ``P``, the score ``head(fc_norm(norm(mean Z)))_c`` differentiated w.r.t. ``P``,
    ``ReLU`` averaged over heads and queries; the mean over the blocks, class token dropped."""
    out = torch.zeros(len(classes), len(classes[0]), GRID * GRID)
    for b, row in enumerate(classes):
        for j, cls in enumerate(row):
            for layer in blocks:
                z = model.norm_pre(model._pos_embed(model.patch_embed(x[b:b + 1])))
                for block in model.blocks[:layer]:
                    z = block(z)
                block, attn = model.blocks[layer], model.blocks[layer].attn
                n, d = z.shape[1], z.shape[2]
                q, k, v = attn.qkv(block.norm1(z)).reshape(1, n, 3, attn.num_heads, -1).permute(
                    2, 0, 3, 1, 4)
                p = (q @ k.transpose(-2, -1) * attn.scale).softmax(-1).detach().requires_grad_()
                z = z + block.ls1(attn.proj((p @ v).transpose(1, 2).reshape(1, n, d)))
                z = z + block.ls2(block.mlp(block.norm2(z)))
                score = model.head(model.fc_norm(model.norm(z.mean(dim=1))))[0, cls]
                (grad,) = torch.autograd.grad(score, p)
                out[b, j] += grad.clamp(min=0).mean(dim=(1, 2))[0, 1:] / len(blocks)
    return out.unflatten(-1, (GRID, GRID))


def test_legrad_matches_the_slow_loop() -> None:
    model, x = tiny_vit(), torch.rand(2, 3, 32, 32)
    classes = [[0, 3], [4, 1]]
    expl = camkit.explain(model, x, classes, ["legrad"])
    assert expl.details["legrad"]["blocks"] == ["blocks.0", "blocks.1", "blocks.2"]
    torch.testing.assert_close(expl.raw["legrad"], slow_legrad(model, x, classes, range(DEPTH)),
                               atol=1e-7, rtol=1e-4)


def test_blocks_keeps_the_last_ones_and_the_class_binds_the_method() -> None:
    model, x = tiny_vit(), torch.rand(1, 3, 32, 32)
    expl = camkit.LeGrad(model, blocks=1).explain(x, targets=2)
    assert expl.details["legrad"]["blocks"] == ["blocks.2"]
    torch.testing.assert_close(expl.raw["legrad"], slow_legrad(model, x, [[2]], range(2, 3)),
                               atol=1e-7, rtol=1e-4)
    assert expl["legrad"].shape == (1, 1, 32, 32)
    with pytest.raises(ValueError, match="from 1 to 3"):
        camkit.explain(model, x, 2, ["legrad"], blocks=4)


def test_the_model_is_left_as_it_was() -> None:
    model, x = tiny_vit(), torch.rand(2, 3, 32, 32)
    before = model(x)
    model.train()
    camkit.explain(model, x, None, ["legrad"])
    assert model.training and all(p.requires_grad and p.grad is None
                                  for p in model.parameters())
    torch.testing.assert_close(model.eval()(x), before)


def explicit_probabilities(q, k, mask=None, is_causal=False, scale=None):
    """``softmax(q kᵀ · scale + mask)`` written out, a leaf of its own graph."""
    logits = q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if is_causal:
        logits = logits.masked_fill(~torch.ones(logits.shape[-2:], dtype=torch.bool).tril(),
                                    float("-inf"))
    if mask is not None:
        logits = (logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool
                  else logits + mask)
    return logits.softmax(-1).detach().requires_grad_()


def test_the_recorded_attention_is_pytorchs_and_gives_the_gradient_at_the_probabilities() -> None:
    torch.manual_seed(1)
    q, k, v = torch.randn(3, 2, 2, 5, 4).unbind(0)
    weights = torch.randn(2, 2, 5, 4)  # a score s = Σ weights · O, read from the output
    mask = torch.rand(5, 5) > 0.3
    mask.fill_diagonal_(True)
    for kwargs in ({}, {"attn_mask": mask}, {"attn_mask": torch.randn(5, 5)},
                   {"is_causal": True}, {"scale": 0.7}):
        out, values = attention_in_graph(q, k, v, **kwargs)
        torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, **kwargs))
        assert out.requires_grad and out.is_leaf and values is v
        p = explicit_probabilities(q, k, kwargs.get("attn_mask"), kwargs.get("is_causal", False),
                                   kwargs.get("scale"))
        (at_p,) = torch.autograd.grad((weights * (p @ v)).sum(), p)
        (at_out,) = torch.autograd.grad((weights * out).sum(), out)
        torch.testing.assert_close(at_out @ values.transpose(-2, -1), at_p)
    grouped, _ = attention_in_graph(q, k[:, :1], v[:, :1], enable_gqa=True)
    torch.testing.assert_close(grouped, attention_in_graph(q, k[:, :1].expand(-1, 2, -1, -1),
                                                           v[:, :1].expand(-1, 2, -1, -1))[0])
    with pytest.raises(ValueError, match="dropout"):
        attention_in_graph(q, k, v, dropout_p=0.1)


def test_multi_head_attention_is_pytorchs() -> None:
    torch.manual_seed(2)
    attention = nn.MultiheadAttention(8, 2).eval()
    tokens = torch.randn(5, 3, 8)  # (L, B, E)
    blocked = torch.rand(5, 5) > 0.7  # nn.MultiheadAttention's boolean masks: True may not attend
    blocked.fill_diagonal_(False)
    for mask in (None, blocked, torch.randn(5, 5), torch.randn(6, 5, 5)):
        expected, weights = attention(tokens, tokens, tokens, attn_mask=mask,
                                      average_attn_weights=False)
        (heads, values), out = multi_head_attention(
            tokens, tokens, tokens, 2, attention.in_proj_weight, attention.in_proj_bias,
            attention.out_proj.weight, attention.out_proj.bias, attn_mask=mask)
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(heads, weights @ values)
    with pytest.raises(ValueError, match="key_padding_mask"):
        multi_head_attention(tokens, tokens, tokens, 2, attention.in_proj_weight, None,
                             attention.out_proj.weight, None,
                             key_padding_mask=torch.zeros(3, 5, dtype=torch.bool))


def test_the_graph_starts_at_the_first_blocks_attention() -> None:
    model, x, seen = tiny_vit(), torch.rand(1, 3, 32, 32), []
    handle = model.patch_embed.register_forward_hook(
        lambda _module, _args, out: seen.append(out.requires_grad))
    try:
        camkit.explain(model, x, 0, ["legrad"])
    finally:
        handle.remove()
    assert seen and not any(seen)  # the layer choice runs a pass too


def test_torchvision_vit_and_a_head_of_ones_own() -> None:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
        num_classes=5).eval()
    nn.init.normal_(model.heads.head.weight)  # torchvision initialises it to zero
    x = torch.rand(2, 3, 32, 32)
    expl = camkit.explain(model, x, 1, ["legrad"])
    assert expl.details["legrad"]["blocks"] == ["encoder.layers.encoder_layer_0",
                                                "encoder.layers.encoder_layer_1"]
    assert not expl.constant["legrad"].any() and expl.raw["legrad"].shape == (2, 1, 4, 4)
    mean_head = camkit.explain(model, x, 1, ["legrad"],
                               head=lambda z: model.heads(model.encoder.ln(z.mean(dim=1))))
    torch.testing.assert_close(mean_head.raw["legrad"], expl.raw["legrad"])
    class_token_head = camkit.explain(model, x, 1, ["legrad"],
                                      head=lambda z: model.heads(model.encoder.ln(z[:, 0])))
    assert not torch.allclose(class_token_head.raw["legrad"], expl.raw["legrad"])


def test_clear_errors_without_attention_or_a_known_head() -> None:
    cnn = torchvision.models.resnet18(num_classes=3)
    with pytest.raises(ValueError, match="no block of ResNet computed an attention"):
        camkit.explain(cnn, torch.rand(1, 3, 32, 32), None, ["legrad"])

    class Unknown(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vit = tiny_vit()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.vit(x)

    with pytest.raises(ValueError, match="pass head=f"):
        camkit.explain(Unknown(), torch.rand(1, 3, 32, 32), None, ["legrad"])


def test_legrad_shares_the_pass_with_gradient_methods() -> None:
    model, x = tiny_vit(), torch.rand(2, 3, 32, 32)
    both = camkit.explain(model, x, [1, 2], ["gradcam", "legrad"])
    torch.testing.assert_close(both.raw["gradcam"],
                               camkit.explain(model, x, [1, 2], ["gradcam"]).raw["gradcam"])
    torch.testing.assert_close(both.raw["legrad"],
                               camkit.explain(model, x, [1, 2], ["legrad"]).raw["legrad"])


def test_a_layer_inside_a_block_does_not_cut_its_attention_from_its_tokens() -> None:
    model, x = tiny_vit(), torch.rand(2, 3, 32, 32)
    both = camkit.explain(model, x, [1, 2], ["gradcam", "legrad"], layer="blocks.1.norm2")
    torch.testing.assert_close(both.raw["legrad"],  # the raw maps are ~1e-4: a relative test
                               camkit.explain(model, x, [1, 2], ["legrad"]).raw["legrad"],
                               rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(
        both.raw["gradcam"],
        camkit.explain(model, x, [1, 2], ["gradcam"], layer="blocks.1.norm2").raw["gradcam"])
