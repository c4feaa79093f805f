"""Triplet loss and triplet sampling, against loops over plain Python numbers."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from camkit.embedding import as_labels, sample_triplets, squared_distances, triplet_loss


def _dist(a: torch.Tensor, b: torch.Tensor) -> float:
    return sum((float(x) - float(y)) ** 2 for x, y in zip(a, b, strict=True))


def test_triplet_loss_matches_the_formula() -> None:
    g = torch.Generator().manual_seed(0)
    a, p, n = (torch.randn(6, 4, generator=g) for _ in range(3))
    for hinge in (True, False):
        got = triplet_loss(a, p, n, 0.3, hinge)
        for i in range(6):
            value = _dist(a[i], p[i]) - _dist(a[i], n[i]) + 0.3
            assert float(got[i]) == pytest.approx(max(0.0, value) if hinge else value, abs=1e-5)


def test_squared_distances_match_a_loop() -> None:
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(3, 5, generator=g), torch.randn(4, 5, generator=g)
    d = squared_distances(q, k)
    for i in range(3):
        for j in range(4):
            assert float(d[i, j]) == pytest.approx(_dist(q[i], k[j]), abs=1e-5)


@pytest.mark.parametrize(("labels", "message"), [
    ([0, 0, 0], "at least two classes"),
    ([], "at least two classes"),
    ([0, 0, 1], "single image"),
    ([0.0, 1.0], "class integers"),
    ([[0, 1]], "1-D"),
])
def test_labels_that_cannot_form_triplets_are_refused(labels: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        as_labels(labels)


def test_label_count_must_match_the_images() -> None:
    with pytest.raises(ValueError, match="3 labels for 4 images"):
        as_labels([0, 1, 1], n=4)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(12, 3, generator=g), torch.tensor([0, 1, 2] * 4)


@pytest.mark.parametrize("mode", ["active", "semihard", "hard", "random"])
def test_every_sampled_triplet_is_of_its_mode(mode: str) -> None:
    emb, labels = _data()
    margin = 0.5
    t = sample_triplets(emb, labels, 20, margin, mode, generator=torch.Generator().manual_seed(0))
    assert t.positives.shape == t.negatives.shape == (12, 20)
    for a in range(12):
        for p, n in zip(t.positives[a].tolist(), t.negatives[a].tolist(), strict=True):
            assert p != a and labels[p] == labels[a] and labels[n] != labels[a]
            if t.fallback[a]:
                continue
            dp, dn = _dist(emb[a], emb[p]), _dist(emb[a], emb[n])
            assert {"active": dn < dp + margin, "semihard": dp < dn < dp + margin,
                    "hard": dn < dp, "random": True}[mode]


def test_anchors_without_a_triplet_of_the_mode_fall_back_to_random_ones() -> None:
    # Two far-apart tight clusters: no negative is closer than a positive, none is "hard".
    emb = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [9.0, 9.0], [9.1, 9.0], [9.0, 9.1]])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    t = sample_triplets(emb, labels, 5, 0.2, "hard")
    assert bool(t.fallback.all())
    assert all(labels[p] == labels[a] and labels[n] != labels[a] for a in range(6)
               for p, n in zip(t.positives[a].tolist(), t.negatives[a].tolist(), strict=True))
    assert not sample_triplets(emb, labels, 5, 0.2, "random").fallback.any()


def test_active_triplets_are_drawn_uniformly() -> None:
    emb, labels = _data()
    margin = 1.0
    t = sample_triplets(emb, labels, 6000, margin, "active", anchors=torch.tensor([0]))
    valid = {(p, n) for p in range(12) for n in range(12)
             if p != 0 and labels[p] == labels[0] and labels[n] != labels[0]
             and _dist(emb[0], emb[n]) < _dist(emb[0], emb[p]) + margin}
    counts = Counter(zip(t.positives[0].tolist(), t.negatives[0].tolist(), strict=True))
    assert set(counts) == valid
    expected = 6000 / len(valid)
    assert all(abs(c - expected) < 0.25 * expected for c in counts.values())


def test_sampling_is_reproducible_by_seed() -> None:
    emb, labels = _data()
    first, second, other = (
        sample_triplets(emb, labels, 8, 0.5, generator=torch.Generator().manual_seed(s))
        for s in (7, 7, 8))
    assert torch.equal(first.positives, second.positives)
    assert torch.equal(first.negatives, second.negatives)
    assert not torch.equal(first.negatives, other.negatives)


def test_bad_mode_and_count_are_refused() -> None:
    emb, labels = _data()
    with pytest.raises(ValueError, match="unknown triplet mode"):
        sample_triplets(emb, labels, 3, 0.5, "easy")
    with pytest.raises(ValueError, match="at least 1"):
        sample_triplets(emb, labels, 0, 0.5)
