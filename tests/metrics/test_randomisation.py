"""The randomisation checks against a slow loop of copies, resets and explanations; the model
is never changed; the verdict and the random logit."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import camkit
from camkit.capture.randomise import group_seed
from camkit.metrics import (
    model_explainer,
    parameter_randomisation,
    passes,
    random_logit,
)
from camkit.metrics.randomisation import (
    RandomisationCurves,
    random_classes,
    top_down_groups,
    verdict_step,
)
from camkit.metrics.robustness import method_explainer
from camkit.postprocess import upsample
from tests.metrics.test_similarity import slow_pearson, slow_ranks, slow_ssim
from tests.models import TinyCNN


def raw_maps(model, x, targets, method="gradcam"):
    expl = camkit.explain(model, x, targets, method, "features.2")
    return upsample(expl.raw[method], tuple(x.shape[-2:]))


def slow_minmax_abs(m: torch.Tensor) -> torch.Tensor:
    a = m.abs()
    return (a - a.min()) / (a.max() - a.min()) if a.max() > a.min() else torch.zeros_like(a)


@pytest.fixture
def case():
    torch.manual_seed(0)
    model = TinyCNN(classes=5).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return model, x, torch.tensor([[1], [3]])


@pytest.mark.parametrize("order", ["cascading", "independent"])
def test_curves_equal_a_loop_of_copies(case, order):
    model, x, targets = case
    explainer = model_explainer("gradcam", "features.2")
    curves = parameter_randomisation(model, x, targets, explainer, order=order, seed=4,
                                     keep_maps=True)
    names = ["fc", "features.2", "features.0"]  # top down
    assert curves.steps == ["original", *names]
    original = raw_maps(model, x, targets)
    for step in range(1, 4):
        work = copy.deepcopy(model)
        chosen = range(step) if order == "cascading" else [step - 1]
        for i in chosen:
            with torch.random.fork_rng():
                torch.manual_seed(group_seed(4, i))
                work.get_submodule(names[i]).reset_parameters()
        maps = raw_maps(work, x, targets)
        assert torch.allclose(curves.maps[:, :, step], maps, atol=1e-5)
        for b in range(2):
            a, m = original[b, 0], maps[b, 0]
            rho_abs = slow_pearson(slow_ranks(a.abs().flatten().tolist()),
                                   slow_ranks(m.abs().flatten().tolist()))
            rho = slow_pearson(slow_ranks(a.flatten().tolist()), slow_ranks(m.flatten().tolist()))
            ssim = slow_ssim(slow_minmax_abs(a).double().numpy(),
                             slow_minmax_abs(m).double().numpy(), (7, 7), 1.0)
            assert curves.similarity["spearman-abs"][b, 0, step].item() == pytest.approx(
                rho_abs, abs=1e-5)
            assert curves.similarity["spearman"][b, 0, step].item() == pytest.approx(rho, abs=1e-5)
            assert curves.similarity["ssim"][b, 0, step].item() == pytest.approx(ssim, abs=1e-4)


def test_no_randomisation_gives_similarity_one_and_the_model_is_untouched(case):
    model, x, targets = case
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    curves = parameter_randomisation(model, x, targets, model_explainer("gradcam", "features.2"))
    for values in curves.similarity.values():  # step 0: the unrandomised copy
        assert torch.allclose(values[..., 0], torch.ones(2, 1), atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and torch.equal(torch.get_rng_state(), rng)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_until_stops_at_a_fraction_of_the_groups(case):
    model, x, targets = case
    explainer = model_explainer("gradcam", "features.2")
    half = parameter_randomisation(model, x, targets, explainer, until=0.5,
                                   similarities=("spearman-abs",))
    assert half.steps == ["original", "fc", "features.2"]
    assert list(half.similarity) == ["spearman-abs"] and half.maps is None
    assert half.groups == 3  # the model's, though only two were randomised
    assert passes(half)[1] == pytest.approx(float(half.similarity["spearman-abs"][..., 2]
                                                  .flatten().quantile(0.5)))
    early = parameter_randomisation(model, x, targets, explainer, until=0.3,
                                    similarities=("spearman-abs",))
    with pytest.raises(ValueError, match="curves stop at step 1"):
        passes(early)
    full = parameter_randomisation(model, x, targets, explainer)
    assert torch.allclose(full.similarity["spearman-abs"][..., :3], half.similarity[
        "spearman-abs"], atol=1e-6)
    assert [g.label for g in top_down_groups(model, x)] == ["fc", "features.2", "features.0"]
    assert verdict_step(7) == 4 and verdict_step(21) == 11 and verdict_step(1) == 1


def test_verdict_reads_the_median_at_half():
    values = torch.tensor([[[1.0, 0.9, 0.3, 0.1]], [[1.0, 0.8, 0.45, 0.2]],
                           [[1.0, 0.7, float("nan"), 0.0]]])
    curves = RandomisationCurves(["original", "a", "b", "c"], "cascading",
                                 {"spearman-abs": values})
    assert verdict_step(3) == 2
    assert passes(curves) == (True, pytest.approx(0.375))
    assert passes(curves, threshold=0.3) == (False, pytest.approx(0.375))
    nothing = RandomisationCurves(["original", "a"], "cascading",
                                  {"spearman-abs": torch.full((2, 1, 2), float("nan"))})
    assert passes(nothing)[0] is False and math.isnan(passes(nothing)[1])
    with pytest.raises(ValueError, match="cascading"):
        passes(RandomisationCurves(["original", "a"], "independent",
                                   {"spearman-abs": values[..., :2]}))


def test_random_classes_are_other_classes_seeded_per_image():
    targets = torch.tensor([[0, 4], [2, 2], [1, 3]])
    drawn = random_classes(targets, 5, seed=1, keys=[10, 11, 12])
    assert (drawn != targets).all() and drawn.min() >= 0 and drawn.max() < 5
    assert torch.equal(random_classes(targets[1:], 5, seed=1, keys=[11, 12]), drawn[1:])
    many = random_classes(torch.zeros(1, 2000, dtype=torch.long), 4)
    assert set(many.flatten().tolist()) == {1, 2, 3}  # every other class, never the target
    with pytest.raises(ValueError, match="at least 2 classes"):
        random_classes(targets, 1)


def test_random_logit_equals_a_loop(case):
    model, x, targets = case
    explainer = method_explainer(model, "gradcam", "features.2")
    maps = explainer(x, targets)
    others = torch.tensor([[4], [0]])
    got = random_logit(explainer, x, maps, targets, others=others)
    for b in range(2):
        other = camkit.explain(model, x[b:b + 1], int(others[b, 0]), "gradcam",
                               "features.2")["gradcam"][0, 0]
        expected = slow_ssim(slow_minmax_abs(maps[b, 0]).double().numpy(),
                             slow_minmax_abs(other).double().numpy(), (7, 7), 1.0)
        assert got[b, 0].item() == pytest.approx(expected, abs=1e-4)
    drawn = random_logit(explainer, x, maps, targets, n_classes=5, seed=2, measure="spearman")
    assert drawn.shape == (2, 1)
    with pytest.raises(ValueError, match="n_classes"):
        random_logit(explainer, x, maps, targets)
    with pytest.raises(ValueError, match="different from its target"):
        random_logit(explainer, x, maps, targets, others=targets)


def test_model_explainer_needs_layer_names(case):
    model, x, targets = case
    with pytest.raises(TypeError, match="dotted name"):
        model_explainer("gradcam", model.features)
    with pytest.raises(ValueError, match="'raw' or 'normalised'"):
        model_explainer("gradcam", maps="signed")
    shown = model_explainer("gradcam", "features.2", maps="normalised")(model, x, targets)
    assert torch.allclose(shown, camkit.explain(model, x, targets, "gradcam",
                                                "features.2")["gradcam"])
