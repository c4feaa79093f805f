"""M-CAM maps: Algorithm 1's slot search against a plain loop, exp(τ) weights, the map, the
registered method and its refusals (ALGORITHMS §1.4-§1.6)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor
from torch.nn import functional as F

import camkit
from camkit.capture import LayerPass
from camkit.memory import (
    BiasReducingMemory,
    SlotNoise,
    channel_similarity,
    channel_weights,
    draw_slot_noise,
    mcam_raw_maps,
    slot_search,
)
from camkit.memory.explain import _noise_logits
from camkit.methods.registry import get_method
from tests.memory_fixtures import ShapeNet, random_memory, single_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


def cos(q: Tensor, keys: Tensor) -> Tensor:
    """§1.2: ``q·K_n / (‖q‖ ‖K_n‖ + 1e-8)`` for one query ``(c,)`` and keys ``(N, c)``."""
    return keys @ q / (keys.norm(dim=1) * q.norm() + 1e-8)


def noise_vectors(queries: Tensor, noise: SlotNoise) -> Tensor:
    """The explicit noise vectors ``w_{b,n} = z q̂_b + r e_b`` (``e_b`` a unit vector ⟂ q̂_b)
    that :class:`SlotNoise` stands for: ``(B, N, c)``."""
    q_hat = queries / queries.norm(dim=1, keepdim=True)
    e = torch.zeros_like(queries)
    e[:, 0] = 1
    e = e - (e * q_hat).sum(1, keepdim=True) * q_hat
    e = e / e.norm(dim=1, keepdim=True)
    return (noise.along[..., None] * q_hat[:, None] + noise.rest.sqrt()[..., None] * e[:, None])


def loop_search(memory: BiasReducingMemory, queries: Tensor, targets: Tensor,
                noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Algorithm 1 as printed (§1.4), one image, one class and one slot at a time, key slot
    ``i`` replaced by the vector ``noise[b, i]``; 0-based, and the argmax of the drops when no
    slot lowers the score (OP-6)."""
    T, V, fc = memory.addr_temperature, memory.values, memory.fc
    B, K = targets.shape
    slots, found = torch.zeros(B, K, dtype=torch.long), torch.zeros(B, K, dtype=torch.bool)
    drops = torch.zeros(B, K, memory.num_slots, dtype=queries.dtype)
    for b in range(B):
        q = queries[b]
        p = (cos(q, memory.keys) / T).softmax(0)
        z = fc(torch.cat([p @ V, q]))
        for k in range(K):
            c, best, n_hat = int(targets[b, k]), 0.0, None
            for i in range(memory.num_slots):
                keys = memory.keys.detach().clone()
                keys[i] = noise[b, i]
                p_i = (cos(q, keys) / T).softmax(0)
                z_i = fc(torch.cat([p_i @ V, q]))
                drops[b, k, i] = z[c] - z_i[c]
                if best < z[c] - z_i[c]:
                    best, n_hat = float(z[c] - z_i[c]), i
            found[b, k] = n_hat is not None
            slots[b, k] = n_hat if n_hat is not None else int(drops[b, k].argmax())
    return slots, found, drops


@pytest.mark.parametrize("temperature", [1.0, 0.05])
def test_vectorised_slot_search_equals_algorithm_1_loop(temperature: float) -> None:
    memory = random_memory(channels=8, classes=5, slots=7, temperature=temperature).double()
    g = torch.Generator().manual_seed(1)
    queries = torch.rand(4, 8, generator=g, dtype=torch.float64)
    targets = torch.tensor([[0, 3], [4, 4], [1, 2], [2, 0]])
    noise = SlotNoise(*(t.double() for t in draw_slot_noise(memory,
                                                            torch.Generator().manual_seed(2))))
    with torch.no_grad():
        fast = slot_search(memory, queries, targets, noise)
        slots, found, drops = loop_search(memory, queries, targets,
                                          noise_vectors(queries, noise))
    assert torch.allclose(fast.drops, drops, rtol=1e-9, atol=1e-12)
    assert torch.equal(fast.slots, slots) and torch.equal(fast.found, found)
    assert found.any()


def test_mcam_raw_maps_uses_the_documented_noise() -> None:
    memory = random_memory()
    f = torch.rand(3, *memory.spatial.shape[1:], generator=torch.Generator().manual_seed(4))
    targets = torch.tensor([[0, 1], [2, 3], [4, 0]])
    _, info = mcam_raw_maps(memory, f, targets, torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    along = torch.randn((memory.num_slots,), generator=g)
    rest = 2 * torch._standard_gamma(torch.full((memory.num_slots,), 2.5), generator=g)
    queries = f.mean(dim=(2, 3))
    with torch.no_grad():
        slots, found, _ = loop_search(memory, queries, targets,
                                      noise_vectors(queries, SlotNoise(along, rest)))
    assert torch.equal(info["slots"], slots) and torch.equal(info["found"], found)
    again, info2 = mcam_raw_maps(memory, f, targets, torch.Generator().manual_seed(9))
    assert torch.equal(info["slots"], info2["slots"])


def test_slot_noise_cosines_have_the_distribution_of_gaussian_keys() -> None:
    """cos(q, w) for w ~ N(0, I_c) (Algorithm 1) against the (z, r²) draw: two-sample
    Kolmogorov-Smirnov distance of 20000 draws each (5 % critical value ≈ 0.014)."""
    c, n = 12, 20000
    memory = BiasReducingMemory(c, (1, 1), 1, slots=n)
    q = torch.rand(1, c, generator=torch.Generator().manual_seed(0))
    ours = _noise_logits(q, draw_slot_noise(memory, torch.Generator().manual_seed(1)), 1.0)
    w = torch.randn(n, c, generator=torch.Generator().manual_seed(2))
    literal = F.cosine_similarity(w, q)
    grid = torch.linspace(-1, 1, 2001)
    cdf = lambda x: torch.searchsorted(x.flatten().sort().values, grid) / n  # noqa: E731
    assert (cdf(ours) - cdf(literal)).abs().max() < 0.014
    assert ours.var().item() == pytest.approx(1 / c, rel=0.05)


def test_no_slot_lowers_the_score_gives_found_false() -> None:
    memory = random_memory()
    with torch.no_grad():
        memory.fc.weight[:, : memory.channels] = 0  # the read value no longer matters
    f = torch.rand(2, *memory.spatial.shape[1:])
    _, info = mcam_raw_maps(memory, f, torch.tensor([[0], [1]]), torch.Generator())
    assert not info["found"].any()
    assert torch.equal(info["slots"], torch.zeros(2, 1, dtype=torch.long))


def test_channel_weights_lie_in_exp_range_and_degenerate_channels_get_one() -> None:
    g = torch.Generator().manual_seed(0)
    f = torch.rand(2, 5, 3, 3, generator=g)
    f[0, 1] = 0  # dead activation channel
    slot_maps = torch.randn(2, 3, 5, 3, 3, generator=g)
    slot_maps[1, 2, 4] = 0  # dead dictionary channel
    slot_maps[0, 0, 0] = 2 * f[0, 0]  # same direction → τ = 1
    slot_maps[0, 0, 2] = -f[0, 2]  # opposite → τ = −1
    tau = channel_similarity(f, slot_maps)
    loop = torch.stack([torch.stack([torch.stack([
        F.cosine_similarity(f[b, i].flatten(), slot_maps[b, k, i].flatten(), dim=0)
        for i in range(5)]) for k in range(3)]) for b in range(2)])
    assert torch.allclose(tau, loop, atol=1e-6)
    w = channel_weights(tau)
    assert w.min() >= math.exp(-1) and w.max() <= math.e
    assert w[0, :, 1].eq(1).all() and w[1, 2, 4] == 1
    assert w[0, 0, 0].item() == pytest.approx(math.e) and w[0, 0, 2].item() == pytest.approx(
        math.exp(-1))


def test_map_is_the_weighted_channel_sum_of_the_found_slot() -> None:
    memory = random_memory()
    f = torch.rand(2, *memory.spatial.shape[1:])
    maps, info = mcam_raw_maps(memory, f, torch.tensor([[1, 2], [3, 4]]),
                               torch.Generator().manual_seed(0))
    assert maps.shape == (2, 2, 4, 5) and maps.dtype == torch.float32
    w = info["weights"]
    assert w.shape == (2, 2, memory.channels)
    assert w.min() >= math.exp(-1) and w.max() <= math.e
    for b in range(2):
        for k in range(2):
            slot = memory.spatial[info["slots"][b, k]]
            tau = F.cosine_similarity(f[b].flatten(1), slot.flatten(1), dim=1)
            expected = (tau.exp()[:, None, None] * f[b]).sum(0)
            assert torch.allclose(maps[b, k], expected, atol=1e-5)


def test_refuses_a_memory_for_another_shape() -> None:
    memory = random_memory()
    with pytest.raises(ValueError, match=r"layer 'features'.*\(6, 4, 5\).*8×10"):
        mcam_raw_maps(memory, torch.rand(1, 6, 7, 7), torch.tensor([[0]]))
    with pytest.raises(ValueError, match="trained on layer"):
        memory(torch.rand(1, 3, 4, 5))


@pytest.mark.parametrize("targets, error", [
    (torch.tensor([[5]]), ValueError), (torch.tensor([[-1]]), ValueError),
    (torch.tensor([0]), ValueError), (torch.tensor([[0.0]]), TypeError),
])
def test_refuses_bad_targets(targets: Tensor, error: type) -> None:
    memory = random_memory()
    with pytest.raises(error):
        mcam_raw_maps(memory, torch.rand(1, 6, 4, 5), targets)


def layer_pass(activations: Tensor, targets: Tensor | None) -> LayerPass:
    def unused(*_args: object) -> Tensor:
        raise AssertionError("mcam must not re-score")

    return LayerPass(
        activations=activations, gradients=None, input_gradients=None,
        scores=torch.zeros(len(activations), 1), target_indices=targets, outputs=None,
        inputs=None, model=torch.nn.Identity(), layer=torch.nn.Identity(), layer_name="features",
        rescore_inputs=unused, rescore_activations=unused, input_size=(8, 10),
        generator=torch.Generator().manual_seed(5),
    )


def test_registered_method_computes_maps_and_notes() -> None:
    method = get_method("mcam")
    assert method.options == ("memory",) and not method.needs
    memory = random_memory()
    f = torch.rand(2, 6, 4, 5)
    lp = layer_pass(f, torch.tensor([[0], [3]]))
    maps = method.compute(lp, memory=memory)
    expected, info = mcam_raw_maps(memory, f, torch.tensor([[0], [3]]),
                                   torch.Generator().manual_seed(5))
    assert torch.equal(maps, expected)
    assert torch.equal(lp.notes["mcam"]["slots"], info["slots"])


def test_registered_method_refusals() -> None:
    method = get_method("mcam")
    f = torch.rand(1, 6, 4, 5)
    with pytest.raises(ValueError, match="needs a trained memory"):
        method.compute(layer_pass(f, torch.tensor([[0]])))
    with pytest.raises(ValueError, match="custom score"):
        method.compute(layer_pass(f, None), memory=random_memory())
    with pytest.raises(TypeError, match="BiasReducingMemory"):
        method.compute(layer_pass(f, torch.tensor([[0]])), memory="memory.safetensors")


def test_explain_end_to_end_with_other_methods() -> None:
    torch.manual_seed(0)
    model = ShapeNet(classes=5, channels=6).eval()
    x = torch.rand(2, 3, 32, 40)
    memory = random_memory()  # features: (6, 4, 5) at 32×40 input
    memory.input_size = (32, 40)
    expl = camkit.explain(model, x, targets=[[0, 4], [1, 2]], methods=["mcam", "gradcam"],
                          layer="features", memory=memory, seed=3)
    assert expl["mcam"].shape == (2, 2, 32, 40)
    assert expl["mcam"].min() >= 0 and expl["mcam"].max() <= 1
    assert expl.details["mcam"]["slots"].shape == (2, 2)
    again = camkit.explain(model, x, targets=[[0, 4], [1, 2]], methods=["mcam"],
                           layer="features", memory=memory, seed=3)
    assert torch.equal(expl["mcam"], again["mcam"])


def test_an_image_gets_the_same_map_alone_or_in_any_batch() -> None:
    """The slot noise is drawn per slot, not per batch row: with one seed, an image's map does
    not depend on its batch (issue: Sensitivity's perturbed copies sit on other rows)."""
    memory = random_memory(slots=12)
    f = torch.rand(5, *memory.spatial.shape[1:], generator=torch.Generator().manual_seed(6))
    targets = torch.tensor([[0, 1], [2, 3], [4, 0], [1, 1], [3, 2]])
    maps, info = mcam_raw_maps(memory, f, targets, torch.Generator().manual_seed(3))
    order = torch.tensor([3, 0, 4, 1, 2, 0])
    shuffled, info_shuffled = mcam_raw_maps(memory, f[order], targets[order],
                                            torch.Generator().manual_seed(3))
    assert torch.equal(info_shuffled["slots"], info["slots"][order])
    assert torch.allclose(shuffled, maps[order], rtol=1e-5, atol=1e-6)
    for b in range(len(f)):
        alone, _ = mcam_raw_maps(memory, f[b:b + 1], targets[b:b + 1],
                                 torch.Generator().manual_seed(3))
        assert torch.allclose(alone, maps[b:b + 1], rtol=1e-5, atol=1e-6)


def test_sensitivity_to_a_vanishing_perturbation_is_vanishing() -> None:
    """max-Sensitivity re-runs M-CAM on batches of perturbed copies; with the same seed every
    copy searches under the image's own noise, so a 1e-6 perturbation barely moves the map."""
    torch.manual_seed(0)
    model = ShapeNet(classes=5, channels=6).eval()
    x = torch.rand(4, 3, 32, 40)
    memory = random_memory(slots=12)
    memory.input_size = (32, 40)
    targets = torch.tensor([[0], [1], [2], [3]])
    explainer = camkit.metrics.method_explainer(model, "mcam", "features", seed=3,
                                                memory=memory)
    sensitivity = camkit.metrics.max_sensitivity(
        explainer, x, explainer(x, targets), targets,
        noise=camkit.metrics.Noise("uniform", 1e-6), n_samples=5, batch_size=7)
    assert sensitivity.max() < 1e-3
