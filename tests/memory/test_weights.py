"""The class-dependent options of the M-CAM map: sharpness on τ, the ``slot`` and
``classifier`` bases, the ``mcam-gradcam`` method (OP-4's Grad-CAM base), and the flag on
slot searches that lower no score."""

from __future__ import annotations

import pytest
import torch

import camkit
from camkit.memory import channel_similarity, channel_weights, mcam_raw_maps
from camkit.memory.explain import classifier_weights, slot_profile
from camkit.methods.registry import get_method
from tests.memory_fixtures import ShapeNet, random_memory, single_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


def test_sharpness_and_base_scale_the_seed_weights() -> None:
    tau = torch.tensor([[[-1.0, 0.0, 0.5]]])
    base = torch.tensor([[[2.0, -1.0, 3.0]]])
    assert torch.equal(channel_weights(tau), tau.exp())
    assert torch.allclose(channel_weights(tau, 10.0), (10 * tau).exp())
    assert torch.allclose(channel_weights(tau, 2.0, base), base * (2 * tau).exp())


@pytest.mark.parametrize("base", ["slot", "classifier"])
def test_memory_bases_multiply_exp_of_sharpened_tau(base: str) -> None:
    memory = random_memory()
    f = torch.rand(3, 6, 4, 5)
    targets = torch.tensor([[0, 2], [1, 4], [3, 3]])
    maps, info = mcam_raw_maps(memory, f, targets, torch.Generator().manual_seed(1),
                               sharpness=5.0, base=base)
    slot_maps = memory.spatial[info["slots"]]
    alpha = slot_profile(slot_maps) if base == "slot" else classifier_weights(memory, targets)
    weights = alpha * (5 * channel_similarity(f, slot_maps)).exp()
    assert torch.allclose(info["weights"], weights)
    assert torch.allclose(maps, torch.einsum("bkc,bchw->bkhw", weights, f), atol=1e-5)
    assert info["base"] == base and info["sharpness"] == 5.0


def test_classifier_base_reads_the_query_half_of_fc() -> None:
    memory = random_memory()
    alpha = classifier_weights(memory, torch.tensor([[2]]))
    assert torch.equal(alpha[0, 0], memory.fc.weight[2, memory.channels:])


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
