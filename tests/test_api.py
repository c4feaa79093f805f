"""The engine's contract: every target form, the borrowed model, output types, clear errors."""

from __future__ import annotations

import copy
import types

import pytest
import torch
import torchvision
from torch import nn

import camkit
from camkit import capture
from camkit.targets import Similarity, Target, TopK
from tests.models import TinyCNN

METHODS = ["cam", "gradcam", "gradcam++", "guided-gradcam"]


def all_hooks(model):
    return [
        h for m in model.modules()
        for h in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks)
        if h
    ]


# --- targets -------------------------------------------------------------------------------


def test_every_target_form_agrees(tiny, images):
    def run(targets):
        return camkit.explain(tiny, images, targets, "gradcam", "features").raw["gradcam"]

    per_image = run([2, 2, 2])
    torch.testing.assert_close(run(2), per_image)
    torch.testing.assert_close(run(torch.tensor([2, 2, 2])), per_image)
    torch.testing.assert_close(run([[2], [2], [2]]), per_image)
    torch.testing.assert_close(run(lambda out: out[:, 2]), per_image)
    predicted = tiny(images).argmax(1)
    torch.testing.assert_close(run(None), run(predicted))
    top2 = tiny(images).topk(2, dim=1).indices
    torch.testing.assert_close(run(TopK(2)), run(top2))


def test_custom_score_targets_report_no_indices(tiny, images):
    expl = camkit.explain(tiny, images, lambda out: out[:, :2].sum(1), "gradcam", "features")
    assert expl.targets is None and expl.scores.shape == (3, 1)


@pytest.mark.filterwarnings("ignore:.*constant")
def test_similarity_target_explains_embeddings(tiny, images):
    references = tiny(images).detach().roll(1, 0)
    expl = camkit.explain(tiny, images, Similarity(references), "gradcam", "features")
    out = tiny(images)
    expected = torch.nn.functional.cosine_similarity(out, references, dim=1)
    torch.testing.assert_close(expl.scores[:, 0], expected.detach())


def test_explanation_mapping_and_numpy(tiny, images):
    expl = camkit.explain(tiny, images, methods=["gradcam", "layercam"], layer="features")
    assert list(expl) == ["gradcam", "layercam"] and len(expl) == 2
    assert expl.numpy("gradcam").shape == (3, 1, 8, 8)
    assert expl.layer == "features"
    with pytest.raises(KeyError, match="was not computed"):
        expl["hirescam"]


def test_method_classes_share_the_call_shape(tiny, images):
    maps = camkit.GradCAMPlusPlus(tiny, layer="features")(images, targets=3)
    direct = camkit.explain(tiny, images, 3, "gradcam++", "features")["gradcam++"]
    torch.testing.assert_close(maps, direct)
    assert maps.shape == (3, 1, 8, 8)
    assert "gradcam" in camkit.available_methods()


# --- the borrowed model ---------------------------------------------------------------------


def test_hooks_modes_and_flags_are_restored(images):
    model = TinyCNN()
    model.train()
    model.features[0].weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    camkit.explain(model, images, methods=METHODS + ["guided-backprop"], layer="features")
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert not all_hooks(model)


def test_hooks_are_removed_when_the_call_raises(tiny, images):
    def failing(_outputs):
        raise RuntimeError("target exploded")

    tiny.train()
    with pytest.raises(RuntimeError, match="target exploded"):
        camkit.explain(tiny, images, failing, METHODS, "features")
    assert not all_hooks(tiny) and tiny.training
    assert all(p.requires_grad for p in tiny.parameters())


def test_explains_in_eval_mode_by_default(images):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    model[1].running_mean.uniform_(-1, 1)
    model.train()
    first = camkit.explain(model, images, 1, "gradcam", "1").raw["gradcam"]
    second = camkit.explain(model, images, 1, "gradcam", "1").raw["gradcam"]
    torch.testing.assert_close(first, second)  # dropout off, running stats untouched
    assert model.training


def test_inside_no_grad(tiny, images):
    expected = camkit.explain(tiny, images, methods=METHODS, layer="features")
    with torch.no_grad():
        inside = camkit.explain(tiny, images, methods=METHODS, layer="features")
    for m in METHODS:
        torch.testing.assert_close(inside[m], expected[m])


def test_inplace_relu_after_the_layer(images):
    torch.manual_seed(0)
    plain = TinyCNN()
    torch.manual_seed(0)
    inplace = TinyCNN(inplace=True)
    layer = "features.2"  # the conv whose output an in-place ReLU overwrites
    for m in METHODS + ["guided-backprop"]:
        a = camkit.explain(plain, images, 1, m, layer)
        b = camkit.explain(inplace, images, 1, m, layer)
        torch.testing.assert_close(a.raw[m], b.raw[m])


class Wrapped(nn.Module):
    def __init__(self, kind):
        super().__init__()
        torch.manual_seed(0)
        self.net, self.kind = TinyCNN(), kind

    def forward(self, x):
        logits = self.net(x)
        if self.kind == "tuple":
            return logits, logits.detach() * 0
        if self.kind == "dict":
            return {"logits": logits, "aux": logits.sum()}
        return types.SimpleNamespace(logits=logits)


@pytest.mark.parametrize("kind", ["tuple", "dict", "object"])
def test_model_outputs_tuple_dict_or_logits_object(kind, images):
    torch.manual_seed(0)
    reference = camkit.explain(TinyCNN(), images, 2, "gradcam", "features")
    expl = camkit.explain(Wrapped(kind), images, 2, "gradcam", "net.features")
    torch.testing.assert_close(expl.raw["gradcam"], reference.raw["gradcam"])


def test_multi_input_model(images):
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = TinyCNN()

        def forward(self, x, shift):
            return self.net(x + shift)

    shift = torch.full_like(images, 0.5)
    expl = camkit.explain(TwoInputs(), (images, shift), 1, ["gradcam", "guided-backprop"],
                          "net.features")
    torch.manual_seed(0)
    reference = camkit.explain(TinyCNN(), images + 0.5, 1, ["gradcam", "guided-backprop"],
                               "features")
    for m in ("gradcam", "guided-backprop"):
        torch.testing.assert_close(expl.raw[m], reference.raw[m])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_give_float32_maps(dtype, images):
    torch.manual_seed(0)
    model = TinyCNN().to(dtype)
    expl = camkit.explain(model, images.to(dtype), 1, METHODS, "features")
    reference = camkit.explain(copy.deepcopy(model).float(), images, 1, METHODS, "features")
    for m in METHODS:
        assert expl[m].dtype == torch.float32
        assert torch.corrcoef(torch.stack([expl[m].flatten(), reference[m].flatten()]))[0, 1] > 0.98


def test_library_prints_nothing(tiny, images, capsys):
    camkit.explain(tiny, images, methods=METHODS, layer=None)
    assert capsys.readouterr().out == ""


def test_automatic_layer_choice_is_reported(images):
    model = torchvision.models.resnet18(num_classes=3)
    expl = camkit.explain(model, torch.randn(1, 3, 64, 64), methods="gradcam")
    assert expl.layer == "layer4"


def test_constant_maps_are_zeros_and_reported(images):
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(2, 2))
    nn.init.zeros_(model[0].weight)
    nn.init.zeros_(model[0].bias)
    with pytest.warns(RuntimeWarning, match="constant"):
        expl = camkit.explain(model, images, 0, "gradcam", "0")
    assert torch.equal(expl["gradcam"], torch.zeros_like(expl["gradcam"]))
    assert expl.constant["gradcam"].all()



# --- clear errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(targets=[1, 2]), "for a batch of 3 images"),
    (dict(targets=7), "out of range: the model has 5 classes"),
    (dict(targets=[[0, 1, 9]] * 3), "out of range"),
    (dict(targets=0.5), "class indices"),
    (dict(layer="featurs"), "Closest names: features"),
    (dict(layer="nope"), "Its top-level modules: features, pool, fc"),
    (dict(layer="fc"), "not spatial"),
    (dict(methods="gradcamm"), "Did you mean 'gradcam'"),
    (dict(methods="gradcam", batch_size=3), "unknown option"),
])
def test_clear_errors(tiny, images, kwargs, message):
    kwargs = {"layer": "features", **kwargs}
    with pytest.raises((ValueError, TypeError), match=message):
        camkit.explain(tiny, images, **kwargs)


def test_layer_never_reached(tiny, images):
    tiny.unused = nn.Conv2d(3, 3, 1)
    with pytest.raises(capture.LayerNotReachedError, match="not reached"):
        camkit.explain(tiny, images, layer="unused")


def test_layer_from_another_model(tiny, images):
    with pytest.raises(ValueError, match="not a submodule"):
        camkit.explain(tiny, images, layer=nn.Conv2d(3, 3, 1))


@pytest.mark.parametrize("x", [torch.randn(8, 8), torch.randn(1, 1, 3, 8, 8)])
def test_wrong_input_rank(tiny, x):
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        camkit.explain(tiny, x, layer="features")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input(tiny, images, bad):
    images[0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        camkit.explain(tiny, images, layer="features")


def test_huge_finite_input_is_accepted(tiny, images):
    images[:, :, :2] = 3e38  # finite values whose sum overflows to inf
    camkit.explain(tiny, images, layer="features")


def test_cam_without_a_gap_fc_head(deep, images):
    with pytest.raises(ValueError, match="GAP → Linear head"):
        camkit.explain(deep, images, methods="cam", layer="body")


# --- transformers ---------------------------------------------------------------------------


def small_vit():
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
        num_classes=4,
    )
    nn.init.normal_(vit.heads.head.weight)  # torchvision initialises the head to zeros
    return vit.eval()


def test_vit_tokens_become_a_grid_automatically():
    vit, x = small_vit(), torch.randn(2, 3, 32, 32)
    layer = "encoder.layers.encoder_layer_1.ln_1"

    def reshape(tokens):  # drop the class token, 16 patches → 4 × 4
        return tokens[:, 1:].reshape(tokens.shape[0], 4, 4, -1).permute(0, 3, 1, 2)

    auto = camkit.explain(vit, x, 1, ["gradcam", "layercam"], layer)
    manual = camkit.explain(vit, x, 1, ["gradcam", "layercam"], layer, reshape=reshape)
    for m in ("gradcam", "layercam"):
        assert auto.raw[m].shape == (2, 1, 4, 4)
        torch.testing.assert_close(auto.raw[m], manual.raw[m])
        assert auto.raw[m].abs().sum() > 0


def test_token_count_without_a_square_grid_asks_for_reshape():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(3, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            tokens = self.embed(x.flatten(2).transpose(1, 2)[:, :3])  # 3 tokens: no grid
            return self.head(tokens.mean(1))

    with pytest.raises(ValueError, match="reshape="):
        camkit.explain(Tokens(), torch.randn(1, 3, 4, 4), layer="embed")


def test_swin_style_channels_last_output():
    class ChannelsLast(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.stem = nn.Conv2d(3, 6, 2, stride=2)
            self.norm = nn.LayerNorm(6)
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            y = self.norm(self.stem(x).permute(0, 2, 3, 1))  # (B, h, w, C)
            return self.fc(y.mean(dim=(1, 2)))

    model, x = ChannelsLast(), torch.randn(2, 3, 8, 8)
    auto = camkit.explain(model, x, 2, "gradcam", "norm")
    manual = camkit.explain(model, x, 2, "gradcam", "norm",
                            reshape=lambda t: t.permute(0, 3, 1, 2))
    assert auto.raw["gradcam"].shape == (2, 1, 4, 4)
    torch.testing.assert_close(auto.raw["gradcam"], manual.raw["gradcam"])


class SharedActivation(nn.Module):
    """One ReLU module called twice (stem and head), like EfficientNet's ``_swish``."""

    def __init__(self, shared: bool = True):
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 5, 3, stride=2)
        self.act = nn.ReLU()
        self.act_head = self.act if shared else nn.ReLU()
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        x = self.act_head(self.head(self.act(self.stem(x))))
        return self.fc(x.mean(dim=(2, 3)))


def test_a_shared_module_is_captured_at_its_last_call(images):
    shared = camkit.explain(SharedActivation(), images, 1, METHODS, "act")
    separate = camkit.explain(SharedActivation(shared=False), images, 1, METHODS, "act_head")
    for m in METHODS:
        torch.testing.assert_close(shared.raw[m], separate.raw[m])


def test_rescoring_replaces_only_the_captured_call(images):
    from camkit import capture
    from camkit.targets import resolve

    model = SharedActivation().eval()
    cap = capture.run_forward(model, model.act, "act", (images,), layer_grad=False,
                              input_grad=False)
    score_fn = resolve(1, cap.outputs, 3)
    rescore = capture.rescorer_for_activations(model, model.act, cap.call, (images,), score_fn,
                                               lambda a: a)
    rows = torch.tensor([2, 0])
    same = rescore(cap.activation[rows], rows)
    torch.testing.assert_close(same, score_fn.score(cap.outputs)[rows])
    zeros = rescore(torch.zeros_like(cap.activation[rows]), rows)
    torch.testing.assert_close(zeros, model.fc.bias[1].expand(2, 1).detach())


def test_a_target_subclass_must_define_scores():
    class Incomplete(Target):
        pass

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()
