"""Deep Feature Factorization: the NMF against its guarantees (an exact low-rank factorisation
is recovered, no update increases the error) and ``factorize`` against a direct computation
of the same factorisation."""

from __future__ import annotations

import pytest
import torch

import camkit
from camkit.dff import nmf, relative_error


def test_nmf_recovers_an_exact_non_negative_factorisation():
    gen = torch.Generator().manual_seed(0)
    v = torch.rand(12, 3, generator=gen, dtype=torch.float64) @ torch.rand(
        3, 40, generator=gen, dtype=torch.float64)
    w, h = nmf(v, 3, iterations=3000, generator=torch.Generator().manual_seed(1))
    assert (w >= 0).all() and (h >= 0).all()
    assert relative_error(v, w, h) < 1e-3


def test_no_update_increases_the_error():
    v = torch.rand(10, 30, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    errors = [relative_error(v, *nmf(v, 4, i, torch.Generator().manual_seed(3)))
              for i in range(0, 40, 5)]
    assert all(later <= earlier + 1e-12 for earlier, later in zip(errors, errors[1:], strict=False))
    assert errors[-1] < errors[0]


def test_factorize_is_the_nmf_of_the_shifted_layer_activations(tiny, images):
    found = camkit.factorize(tiny, images, n_concepts=2, layer="features", iterations=50,
                             seed=4, classifier=tiny.fc)
    acts = tiny.features(images).detach()
    v = acts.transpose(0, 1).reshape(acts.shape[1], -1)
    offset = v.amin(dim=1, keepdim=True)
    w, h = nmf(v - offset, 2, 50, torch.Generator().manual_seed(4))
    torch.testing.assert_close(found.concepts, (w + offset).T)
    torch.testing.assert_close(found.raw, h.reshape(2, 3, 4, 4).transpose(0, 1))
    torch.testing.assert_close(found.scores, tiny.fc(found.concepts).detach())
    assert found.maps.shape == (3, 2, 8, 8) and found.maps.min() >= 0 and found.maps.max() <= 1
    assert found.error == pytest.approx(relative_error(v - offset, w, h))


def test_factorize_refuses_zero_concepts(tiny, images):
    with pytest.raises(ValueError, match="n_concepts"):
        camkit.factorize(tiny, images, n_concepts=0, layer="features")
