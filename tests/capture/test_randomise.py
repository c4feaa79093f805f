"""Randomised copies: which groups, in which order, and never a change to the user's model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from camkit.capture.randomise import (
    ParameterGroup,
    forward_order,
    group_seed,
    parameter_groups,
    randomise,
    randomised_copies,
)
from tests.models import TinyCNN


class Scaled(nn.Module):
    """A module with a parameter of its own and no ``reset_parameters``."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.full((4,), 2.0) + torch.arange(4.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain.view(1, -1, 1, 1)


class Backwards(nn.Module):
    """Registered head first, called last; owns a parameter itself."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 3)
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.scale = Scaled()
        self.bias = nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.scale(self.norm(self.stem(x)))
        return self.head(h.mean(dim=(2, 3))) + self.bias


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_blocks_split_large_groups_until_none_holds_a_quarter():
    assert parameter_groups(TinyCNN()) == [ParameterGroup("features.0"),
                                           ParameterGroup("features.2"), ParameterGroup("fc")]
    labels = [g.label for g in parameter_groups(Backwards())]
    assert labels == ["<model> (own)", "head", "stem", "norm", "scale"]
    assert [g.label for g in parameter_groups(Backwards(), "leaves")] == labels
    assert parameter_groups(TinyCNN(), ["features", "fc"]) == [ParameterGroup("features"),
                                                               ParameterGroup("fc")]
    with pytest.raises(ValueError, match="holds no parameters"):
        parameter_groups(TinyCNN(), ["pool"])
    with pytest.raises(ValueError, match="no layer named"):
        parameter_groups(TinyCNN(), ["feature"])
    with pytest.raises(ValueError, match="layers must be"):
        parameter_groups(TinyCNN(), "blocks")


def test_forward_order_follows_the_calls_not_the_registration():
    model = Backwards()
    ordered = forward_order(model, parameter_groups(model), (torch.randn(1, 3, 5, 5),))
    assert [g.label for g in ordered] == ["<model> (own)", "stem", "norm", "scale", "head"]
    tiny = TinyCNN()
    tiny.unused = nn.Linear(2, 2)
    reached = forward_order(tiny, parameter_groups(tiny, ["fc", "unused", "features"]),
                            (torch.randn(1, 3, 8, 8),))
    assert reached == [ParameterGroup("features"), ParameterGroup("fc")]
    assert not any(m._forward_pre_hooks for m in model.modules())  # hooks removed


@pytest.mark.parametrize("order", ["cascading", "independent"])
def test_copies_never_touch_the_model_or_the_global_random_state(order):
    model = Backwards()
    model.train()
    groups = forward_order(model, parameter_groups(model), (torch.randn(1, 3, 5, 5),))[::-1]
    before, rng = snapshot(model), torch.get_rng_state()
    seen = []
    for group, copy in randomised_copies(model, groups, order=order, seed=3,
                                         include_original=True):
        assert copy is not model
        seen.append((group, snapshot(copy)))
    assert all(torch.equal(before[k], v) for k, v in snapshot(model).items())
    assert torch.equal(torch.get_rng_state(), rng) and model.training
    assert seen[0][0] is None and all(torch.equal(before[k], v) for k, v in seen[0][1].items())
    changed = [{k for k, v in state.items() if not torch.equal(before[k], v)}
               for _, state in seen[1:]]
    head, scale = {"head.weight", "head.bias"}, {"scale.gain"}
    assert changed[0] == head  # the top group first
    if order == "cascading":
        assert changed[1] == head | scale and changed[-1] >= head | scale | {"stem.weight"}
    else:
        assert changed[1] == scale  # the head is back: one group at a time


def test_both_orders_draw_the_same_weights_per_group_and_are_seeded():
    model = TinyCNN()
    groups = parameter_groups(model)[::-1]
    cascading = [snapshot(c) for _, c in randomised_copies(model, groups, seed=1)]
    independent = [snapshot(c) for _, c in randomised_copies(model, groups, order="independent",
                                                             seed=1)]
    again = [snapshot(c) for _, c in randomised_copies(model, groups, seed=1)]
    other = [snapshot(c) for _, c in randomised_copies(model, groups, seed=2)]
    for i, group in enumerate(groups):
        key = f"{group.name}.weight"
        assert torch.equal(cascading[i][key], independent[i][key])
        assert torch.equal(cascading[i][key], again[i][key])
        assert not torch.equal(cascading[i][key], other[i][key])
    # independent steps put each group back before the next
    assert torch.equal(independent[1]["fc.weight"], model.fc.weight)


def test_randomise_uses_reset_parameters_or_a_matching_gaussian():
    model = Backwards()
    with torch.no_grad():
        model.norm.running_mean.fill_(3.0)
    randomise(model, ParameterGroup("norm"), group_seed(0, 0))
    assert model.norm.running_mean.abs().max() == 0 and torch.equal(model.norm.weight,
                                                                    torch.ones(4))
    old = model.scale.gain.detach().clone()
    randomise(model, ParameterGroup("scale"), 5)
    gain = model.scale.gain
    assert not torch.equal(gain, old) and gain.shape == old.shape
    torch.manual_seed(5)
    expected = torch.empty(4).normal_(float(old.mean()), float(old.std()))
    assert torch.allclose(gain, expected)


def test_an_uncopyable_model_is_refused_clearly():
    class Uncopyable(TinyCNN):
        def __deepcopy__(self, memo):
            raise RuntimeError("no copies")

    with pytest.raises(TypeError, match="deepcopy failed"):
        next(randomised_copies(Uncopyable(), [ParameterGroup("fc")]))
    with pytest.raises(ValueError, match="order must be"):
        next(randomised_copies(TinyCNN(), [ParameterGroup("fc")], order="bottom-up"))
