"""The class-dependent options of the M-CAM map: sharpness on τ, the ``slot``,
``classifier``, ``value`` and ``address`` bases, the ``mcam-gradcam`` method (OP-4's Grad-CAM
base), and the flag on slot searches that lower no score."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor

import camkit
from camkit.memory import (
    BiasReducingMemory,
    channel_similarity,
    channel_weights,
    mcam_raw_maps,
)
from camkit.memory.explain import (
    address_gradient,
    classifier_weights,
    slot_profile,
    value_gradient,
)
from camkit.methods.gradient import gradcam
from camkit.methods.registry import get_method
from tests.memory_fixtures import ShapeNet, random_memory, single_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


def test_sharpness_and_base_scale_the_seed_weights() -> None:
    tau = torch.tensor([[[-1.0, 0.0, 0.5]]])
    base = torch.tensor([[[2.0, -1.0, 3.0]]])
    assert torch.equal(channel_weights(tau), tau.exp())
    assert torch.allclose(channel_weights(tau, 10.0), (10 * tau).exp())
    assert torch.allclose(channel_weights(tau, 2.0, base), base * (2 * tau).exp())


@pytest.mark.parametrize("base", ["slot", "classifier", "value", "address"])
def test_memory_bases_multiply_exp_of_sharpened_tau(base: str) -> None:
    memory = random_memory()
    f = torch.rand(3, 6, 4, 5)
    targets = torch.tensor([[0, 2], [1, 4], [3, 3]])
    maps, info = mcam_raw_maps(memory, f, targets, torch.Generator().manual_seed(1),
                               sharpness=5.0, base=base)
    slot_maps = memory.spatial[info["slots"]]
    alpha = {"slot": lambda: slot_profile(slot_maps),
             "classifier": lambda: classifier_weights(memory, targets),
             "value": lambda: value_gradient(memory, f.mean(dim=(2, 3)), targets),
             "address": lambda: address_gradient(memory, f.mean(dim=(2, 3)), info["slots"]),
             }[base]()
    weights = alpha * (5 * channel_similarity(f, slot_maps)).exp()
    assert torch.allclose(info["weights"], weights)
    assert torch.allclose(maps, torch.einsum("bkc,bchw->bkhw", weights, f), atol=1e-5)
    assert info["base"] == base and info["sharpness"] == 5.0


def test_classifier_base_reads_the_query_half_of_fc() -> None:
    memory = random_memory()
    alpha = classifier_weights(memory, torch.tensor([[2]]))
    assert torch.equal(alpha[0, 0], memory.fc.weight[2, memory.channels:])


def value_half_score(memory: BiasReducingMemory, queries: Tensor) -> Tensor:
    """``W_v v`` for every class: the value half of the memory classifier (no bias, no q
    half), ``(B, c)`` → ``(B, n_cls)``."""
    p = memory.key_address_logits(queries).softmax(dim=1)
    return (p @ memory.values) @ memory.fc.weight[:, : memory.channels].T


def assert_autograd_rows(alpha, queries, score) -> None:
    """``alpha[b, k]`` equals autograd's gradient of the scalar ``score(q, b, k)`` at the one
    query ``q = queries[b:b+1]``, image by image and target by target."""
    for b in range(alpha.shape[0]):
        for k in range(alpha.shape[1]):
            q = queries[b:b + 1].clone().requires_grad_(True)
            expected, = torch.autograd.grad(score(q, b, k), q)
            assert torch.allclose(alpha[b, k], expected[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 0.1])
def test_value_base_is_the_autograd_gradient_of_the_value_half(temperature: float) -> None:
    """Against autograd, one image and one class at a time, at the paper's T and camkit's."""
    memory = random_memory(slots=7, temperature=temperature)
    queries = torch.rand(3, 6, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([[0, 2], [1, 4], [3, 3]])
    assert_autograd_rows(value_gradient(memory, queries, targets), queries,
                         lambda q, b, k: value_half_score(memory, q)[0, targets[b, k]])


@pytest.mark.parametrize("temperature", [1.0, 0.1])
def test_address_base_is_the_autograd_gradient_of_the_found_slots_log_address(
        temperature: float) -> None:
    memory = random_memory(slots=7, temperature=temperature)
    queries = torch.rand(3, 6, generator=torch.Generator().manual_seed(3))
    slots = torch.tensor([[0, 6], [2, 2], [5, 1]])
    assert_autograd_rows(
        address_gradient(memory, queries, slots), queries,
        lambda q, b, k: memory.key_address_logits(q).log_softmax(dim=1)[0, slots[b, k]])


def test_value_base_map_is_gradcam_of_the_value_half_times_the_positions() -> None:
    """``Σ_i α_i f_i`` equals ``h·w`` times Grad-CAM's map of the score ``W_v[ĉ]·v`` at the
    layer (q is the spatial mean of f), and with sharpness 0 mcam's raw map is that map."""
    memory = random_memory(slots=9, temperature=0.1)
    f = torch.rand(2, 6, 4, 5, generator=torch.Generator().manual_seed(4)).requires_grad_(True)
    targets = torch.tensor([[1, 3], [0, 0]])
    scores = value_half_score(memory, memory.pool(f)).gather(1, targets)
    gradients = torch.stack([torch.autograd.grad(scores[:, k].sum(), f, retain_graph=True)[0]
                             for k in range(2)], dim=1)
    expected = 20 * gradcam(f.detach(), gradients)
    maps, info = mcam_raw_maps(memory, f.detach(), targets, sharpness=0.0, base="value")
    assert torch.allclose(maps, expected, rtol=1e-4, atol=1e-5)
    assert info["base"] == "value"


def test_value_base_favours_the_channels_of_the_slots_that_favour_the_class() -> None:
    """Two slots with orthogonal keys (channels 0 and 1), each read by one class only: for a
    query between them, class 0's weights point to channel 0 and away from channel 1."""
    memory = BiasReducingMemory(3, (1, 1), num_classes=2, slots=2, addr_temperature=0.1)
    with torch.no_grad():
        memory.keys.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
        memory.values.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
        memory.fc.weight.zero_()
        memory.fc.weight[0, 0] = memory.fc.weight[1, 1] = 1.0
    alpha = value_gradient(memory, torch.tensor([[1.0, 1.0, 0.5]]), torch.tensor([[0, 1]]))
    assert alpha[0, 0, 0] > 0 > alpha[0, 0, 1]
    assert alpha[0, 1, 1] > 0 > alpha[0, 1, 0]


def test_unknown_base_and_gradcam_base_without_gradients_are_refused() -> None:
    memory, f, targets = random_memory(), torch.rand(1, 6, 4, 5), torch.tensor([[0]])
    with pytest.raises(ValueError, match="base must be one of"):
        mcam_raw_maps(memory, f, targets, base="grad")
    with pytest.raises(ValueError, match="gradient_weights"):
        mcam_raw_maps(memory, f, targets, base="gradcam")


def test_mcam_gradcam_with_a_blank_dictionary_is_gradcam() -> None:
    """S = 0 gives τ = 0 and exp(s τ) = 1, so ``mcam-gradcam``'s raw map is Grad-CAM's."""
    torch.manual_seed(0)
    net = ShapeNet(classes=5, channels=6).eval()
    x = torch.rand(2, 3, 32, 40)
    channels, h, w = 6, 4, 5
    memory = random_memory(channels, (h, w), classes=5)
    memory.input_size = (32, 40)
    with torch.no_grad():
        memory.spatial.zero_()
    assert get_method("mcam-gradcam").needs == {"gradients"}
    expl = camkit.explain(net, x, [[1, 3], [0, 2]], ["gradcam", "mcam-gradcam"], "features",
                          memory=memory, sharpness=10.0)
    assert torch.allclose(expl.raw["mcam-gradcam"], expl.raw["gradcam"], atol=1e-6)
    assert expl.details["mcam-gradcam"]["base"] == "gradcam"


def test_mcam_refuses_the_gradcam_base_and_names_the_method_that_has_it() -> None:
    torch.manual_seed(0)
    net = ShapeNet(classes=5, channels=6).eval()
    memory = random_memory(6, (4, 5), classes=5)
    memory.input_size = (32, 40)
    with pytest.raises(ValueError, match="mcam-gradcam"):
        camkit.explain(net, torch.rand(1, 3, 32, 40), [[0]], ["mcam"], "features",
                       memory=memory, base="gradcam")


def test_a_search_that_lowers_no_score_is_warned_about_and_counted_in_details() -> None:
    torch.manual_seed(0)
    net = ShapeNet(classes=5, channels=6).eval()
    memory = random_memory(6, (4, 5), classes=5)
    memory.input_size = (32, 40)
    with torch.no_grad():
        memory.fc.weight[:, : memory.channels] = 0  # no slot can lower any score
    with pytest.warns(RuntimeWarning, match="no memory slot lowers the class score"):
        expl = camkit.explain(net, torch.rand(2, 3, 32, 40), [[0], [1]], ["mcam"], "features",
                              memory=memory)
    assert expl.details["mcam"]["not_found"] == 2
    assert not expl.details["mcam"]["found"].any()


def test_a_map_that_ignores_the_slot_is_flagged_in_details_but_not_warned_about() -> None:
    """``base="value"`` with ``sharpness=0`` reads neither S nor the found slot: a search that
    lowers no score is still counted in ``expl.details``, but no map used its slot."""
    torch.manual_seed(0)
    net = ShapeNet(classes=5, channels=6).eval()
    memory = random_memory(6, (4, 5), classes=5)
    memory.input_size = (32, 40)
    with torch.no_grad():
        memory.fc.weight[:, : memory.channels] = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        expl = camkit.explain(net, torch.rand(2, 3, 32, 40), [[0], [1]], ["mcam"], "features",
                              memory=memory, base="value", sharpness=0.0)
    assert not [w for w in caught if "no memory slot" in str(w.message)]
    assert expl.details["mcam"]["not_found"] == 2
    with pytest.warns(RuntimeWarning, match="no memory slot lowers the class score"):
        camkit.explain(net, torch.rand(2, 3, 32, 40), [[0], [1]], ["mcam"], "features",
                       memory=memory, base="value", sharpness=1.0)
