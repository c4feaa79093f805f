"""M-CAM memory maths: addressing, the three losses (ALGORITHMS §1.2-§1.3), AP, diagnostics."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from camkit.memory import (
    BiasReducingMemory,
    address_loss,
    average_precision,
    classifier_loss,
    cosine_matrix,
    kl_divergence,
    loss_terms,
    mean_average_precision,
    sparse_loss,
)
from camkit.memory.training import address_entropy, epoch_order, slot_usage
from tests.memory_fixtures import random_memory, single_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


def bce(z: float, y: float) -> float:
    return -(y * math.log(1 / (1 + math.exp(-z))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-z))))


def test_cosine_matrix_by_hand() -> None:
    cos = cosine_matrix(torch.tensor([[3.0, 4.0]]), torch.tensor([[4.0, 3.0], [0.0, 2.0]]))
    assert torch.allclose(cos, torch.tensor([[24 / 25, 8 / 10]]))


def test_classifier_loss_by_hand() -> None:
    z_vt, z_v, y = [0.0, 2.0], [1.0, -1.0], [1.0, 0.0]
    expected = (bce(z_vt[0], y[0]) + bce(z_vt[1], y[1])) / 2 + (bce(z_v[0], y[0])
                                                                + bce(z_v[1], y[1])) / 2
    got = classifier_loss(torch.tensor([z_vt]), torch.tensor([z_v]), torch.tensor([y]))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(math.log(2) / 2 + math.log(1 + math.e**2) / 2
                                     + math.log(1 + math.exp(-1)))


def test_sparse_loss_is_mean_squared_error_over_channels() -> None:
    v = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    v_t = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    assert sparse_loss(v, v_t).item() == pytest.approx((1 + 0 + 1 + 1) / 4)


def test_kl_direction_and_batchmean_by_hand() -> None:
    p = torch.tensor([[0.5, 0.5], [0.2, 0.8]])
    q = torch.tensor([[0.25, 0.75], [0.2, 0.8]])
    got = kl_divergence(p.log(), q.log())  # KL(p ‖ q), rows averaged
    forward = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    reverse = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert got.item() == pytest.approx(forward / 2, rel=1e-5)
    assert abs(forward - reverse) > 0.01  # the direction matters, and it is KL(target ‖ ·)


def test_address_loss_by_hand_and_target_detached() -> None:
    value = torch.tensor([[0.0, 0.0]], requires_grad=True)  # p' = (.5, .5)
    spatial = torch.tensor([[math.log(0.25), math.log(0.75)]], requires_grad=True)
    key = torch.tensor([[math.log(0.9), math.log(0.1)]], requires_grad=True)
    loss = address_loss(value, spatial, key)
    expected = (0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
                + 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert value.grad is None  # p' is the target (OP-9)
    assert spatial.grad.abs().sum() > 0 and key.grad.abs().sum() > 0


def test_training_addresses_follow_the_spec() -> None:
    memory = random_memory(temperature=0.5)
    f = torch.rand(3, *memory.spatial.shape[1:])
    y = torch.tensor([[1.0, 0, 1, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    out = memory.training_addresses(f, y)
    q = f.mean(dim=(2, 3))
    cos = lambda a, b: F.cosine_similarity(a[:, None], b[None], dim=2)  # noqa: E731
    p = (cos(q, memory.keys) / 0.5).softmax(1)
    p_value = (cos(memory.encoder(y), memory.values) / 0.5).softmax(1)
    p_spatial = (cos(f.flatten(1), memory.spatial.flatten(1)) / 0.5).softmax(1)
    for logits, probs in [(out.key_logits, p), (out.value_logits, p_value),
                          (out.spatial_logits, p_spatial)]:
        assert torch.allclose(logits.softmax(1), probs, atol=1e-6)
    assert torch.allclose(out.v, p @ memory.values, atol=1e-5)
    assert torch.allclose(out.v_t, p_value @ memory.values, atol=1e-5)
    assert torch.allclose(out.scores_v, memory.fc(torch.cat([p @ memory.values, q], 1)), atol=1e-5)
    assert torch.allclose(memory(f), out.scores_v, atol=1e-6)  # inference = the v path
    terms = loss_terms(out, y)
    assert terms["total"].item() == pytest.approx(
        (terms["classifier"] + terms["sparse"] + terms["address"]).item())


def test_initialisation_and_defaults() -> None:
    torch.manual_seed(0)
    memory = BiasReducingMemory(64, (3, 3), 10)
    assert memory.num_slots == 20 and memory.addr_temperature == 1.0
    assert memory.values.std().item() == pytest.approx(0.02, rel=0.1)
    assert memory.keys.std().item() == pytest.approx(1.0, rel=0.1)
    assert memory.spatial.shape == (20, 64, 3, 3)
    assert [type(m).__name__ for m in memory.encoder] == ["Linear", "ReLU", "Linear"]
    assert memory.fc.in_features == 128 and memory.fc.out_features == 10


@pytest.mark.parametrize("kwargs, message", [
    ({"slots": 0}, "slots"), ({"addr_temperature": 0.0}, "addr_temperature"),
    ({"class_names": ["a"]}, "class names"),
])
def test_memory_refuses_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BiasReducingMemory(4, (2, 2), 3, **kwargs)


def test_average_precision_by_hand_with_ties_and_empty_class() -> None:
    scores = torch.tensor([[0.9, 0.5, 0.3], [0.8, 0.5, 0.2], [0.7, 0.1, 0.1], [0.6, 0.0, 0.0]])
    labels = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 1, 0], [0, 0, 0]])
    ap = average_precision(scores, labels)
    assert ap[0].item() == pytest.approx((1 / 1 + 2 / 3) / 2)
    # class 1: the tie at 0.5 is one threshold: precision 1/2 at recall 1/2, then 2/3 at 1
    assert ap[1].item() == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert ap[2].isnan()
    assert mean_average_precision(scores, labels) == pytest.approx((ap[0] + ap[1]).item() / 2)


def test_average_precision_matches_a_loop_on_random_data() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (40, 3), generator=g).float()  # many ties
    labels = torch.rand(40, 3, generator=g) < 0.4
    for k in range(3):
        distinct = sorted(set(scores[:, k].tolist()), reverse=True)
        ap, previous_recall = 0.0, 0.0
        for t in distinct:
            chosen = scores[:, k] >= t
            tp = (chosen & labels[:, k]).sum().item()
            recall = tp / labels[:, k].sum().item()
            ap += (recall - previous_recall) * tp / chosen.sum().item()
            previous_recall = recall
        assert average_precision(scores, labels)[k].item() == pytest.approx(ap, rel=1e-6)


def test_entropy_usage_and_epoch_order() -> None:
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0], [0.0, 0.0, 9.0, 0.0]])
    assert address_entropy(logits)[0].item() == pytest.approx(math.log(4))
    assert slot_usage(logits).tolist() == [2, 0, 1, 0]
    first = epoch_order(10, 4, seed=3, epoch=1)
    assert [len(b) for b in first] == [4, 4, 2]
    assert torch.equal(torch.cat(first).sort().values, torch.arange(10))
    assert all(torch.equal(a, b) for a, b in zip(first, epoch_order(10, 4, 3, 1), strict=True))
    assert not torch.equal(torch.cat(first), torch.cat(epoch_order(10, 4, 3, 2)))
