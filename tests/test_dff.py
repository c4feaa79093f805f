"""Deep Feature Factorization: the NMF against its guarantees (an exact low-rank factorisation
is recovered, no update increases the error, the stopping rule is the documented one), against
a slow reference solver and the optimality conditions, and ``factorize`` against a direct
computation of the same factorisation."""

from __future__ import annotations

import pytest
import torch

import camkit
from camkit.dff import nmf, relative_error


def multiplicative_updates(v, n, iterations, seed):
    """The slow reference: Lee & Seung's multiplicative updates (NIPS 2001), which never
    increase ``‖V − WH‖_F``, run for many rounds in float64."""
    gen = torch.Generator().manual_seed(seed)
    w, h = torch.rand(v.shape[0], n, generator=gen, dtype=v.dtype), torch.rand(
        n, v.shape[1], generator=gen, dtype=v.dtype)
    for _ in range(iterations):
        h = h * (w.T @ v) / (w.T @ w @ h + 1e-300)
        w = w * (v @ h.T) / (w @ (h @ h.T) + 1e-300)
    return w, h


def low_rank_plus_noise(rows=30, cols=50, rank=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    v = torch.rand(rows, rank, generator=gen, dtype=torch.float64) @ torch.rand(
        rank, cols, generator=gen, dtype=torch.float64)
    return v + 0.3 * torch.rand(rows, cols, generator=gen, dtype=torch.float64)


def test_nmf_recovers_an_exact_non_negative_factorisation():
    gen = torch.Generator().manual_seed(0)
    v = torch.rand(12, 3, generator=gen, dtype=torch.float64) @ torch.rand(
        3, 40, generator=gen, dtype=torch.float64)
    w, h = nmf(v, 3, generator=torch.Generator().manual_seed(1))
    assert (w >= 0).all() and (h >= 0).all()
    assert relative_error(v, w, h) < 1e-3


def test_no_update_increases_the_error():
    v = torch.rand(10, 30, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    errors = [relative_error(v, *nmf(v, 4, 0.0, i, torch.Generator().manual_seed(3)))
              for i in range(0, 40, 5)]
    assert all(later <= earlier + 1e-12 for earlier, later in zip(errors, errors[1:], strict=False))
    assert errors[-1] < errors[0]


def test_nmf_stops_at_the_first_round_that_lowers_the_squared_error_by_at_most_tol():
    v, tol = low_rank_plus_noise(seed=5), 1e-3
    squared = [relative_error(v, *nmf(v, 4, 0.0, i, torch.Generator().manual_seed(6))) ** 2
               for i in range(1, 80)]
    stop = next(i for i in range(1, len(squared)) if squared[i] >= squared[i - 1] * (1 - tol))
    expected = nmf(v, 4, 0.0, stop + 1, torch.Generator().manual_seed(6))
    for got, want in zip(nmf(v, 4, tol, 500, torch.Generator().manual_seed(6)), expected,
                         strict=True):
        torch.testing.assert_close(got, want)
    assert stop < 40  # the rule fired well before the cap


def projected_gradient(v, w, h):
    """The norm of ``‖WH − V‖²/2``'s gradient where it can still lower the error: every entry
    where the factor is positive, the negative ones where it is 0 (zero at a stationary point,
    by the Karush-Kuhn-Tucker conditions)."""
    residual = w @ h - v
    return sum(torch.where(factor > 0, gradient, gradient.clamp(max=0)).square().sum()
               for factor, gradient in ((w, residual @ h.T), (h, w.T @ residual))).sqrt()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nmf_reaches_the_reference_error_and_a_stationary_point(seed):
    v, start = low_rank_plus_noise(seed=seed), torch.Generator().manual_seed(seed)
    reference = min(relative_error(v, *multiplicative_updates(v, 4, 20_000, first))
                    for first in range(3))
    assert relative_error(v, *nmf(v, 4, generator=start)) <= 1.002 * reference  # default tol
    start.manual_seed(seed)
    w, h = nmf(v, 4, tol=1e-7, generator=start)
    assert relative_error(v, w, h) <= 1.00001 * reference
    initial = nmf(v, 4, max_iter=0, generator=torch.Generator().manual_seed(seed))
    assert projected_gradient(v, w, h) <= 1e-4 * projected_gradient(v, *initial)


def test_factorize_is_the_nmf_of_the_shifted_layer_activations(tiny, images):
    found = camkit.factorize(tiny, images, n_concepts=2, layer="features", max_iter=50,
                             seed=4, classifier=tiny.fc)
    acts = tiny.features(images).detach()
    v = acts.transpose(0, 1).reshape(acts.shape[1], -1)
    offset = v.amin(dim=1, keepdim=True)
    w, h = nmf(v - offset, 2, max_iter=50, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(found.concepts, (w + offset).T)
    torch.testing.assert_close(found.raw, h.reshape(2, 3, 4, 4).transpose(0, 1))
    torch.testing.assert_close(found.scores, tiny.fc(found.concepts).detach())
    assert found.maps.shape == (3, 2, 8, 8) and found.maps.min() >= 0 and found.maps.max() <= 1
    assert found.error == pytest.approx(relative_error(v - offset, w, h))


@pytest.mark.parametrize("options", [{"n_concepts": 0}, {"tol": -1.0}, {"max_iter": 0}])
def test_factorize_refuses_bad_options(tiny, images, options):
    with pytest.raises(ValueError, match=next(iter(options))):
        camkit.factorize(tiny, images, layer="features", **options)
