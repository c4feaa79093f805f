"""FEM and KPCA-CAM (maps from the activations alone) against slow loop-based references,
plus their identities: linear-kernel KPCA is PCA, and both are class-agnostic."""

from __future__ import annotations

import math

import pytest
import torch

import camkit
from camkit.methods import eigen, fem

TOL = dict(atol=1e-5, rtol=1e-5)


def slow_fem(act: torch.Tensor, k: float) -> torch.Tensor:
    """``(C, h, w)`` → ``(h, w)``: per channel, the share of positions above mean + k·std."""
    c, h, w = act.shape
    out = torch.zeros(h, w, dtype=act.dtype)
    for ch in range(c):
        values = [float(v) for v in act[ch].flatten()]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        weight = sum(v > mean + k * std for v in values) / len(values)
        out += weight * act[ch]
    return out


@pytest.mark.parametrize("k", [0.5, 2.0])
def test_fem_matches_slow_loops(tiny, images, k):
    expl = camkit.explain(tiny, images, [[0, 2]] * 3, methods="fem", layer="features", k=k)
    acts = tiny.features(images).detach()
    for b in range(3):
        expected = slow_fem(acts[b].double(), k).float()
        for target in range(2):  # class-agnostic: the same map for each target
            torch.testing.assert_close(expl.raw["fem"][b, target], expected, **TOL)


def test_fem_weights_count_positions_above_the_threshold():
    acts = torch.zeros(1, 2, 1, 5)
    acts[0, 0, 0, 4] = 10.0  # one outlier among five: mean 2, std 4, threshold 2 + 1·4 = 6
    acts[0, 1] = 3.0  # constant: nothing exceeds the mean
    torch.testing.assert_close(fem.fem_weights(acts, k=1.0), torch.tensor([[0.2, 0.0]]))


def slow_kernel_pca(act: torch.Tensor, kernel: str) -> torch.Tensor:
    """``(C, h, w)`` float64 → ``(h, w)``: kernel entries by a double loop, centring by
    ``H K H`` with ``H = I − 𝟙/P``, the top eigenvector scaled by √λ, largest entry positive."""
    c, h, w = act.shape
    rows = act.reshape(c, -1).T
    rows = rows - rows.mean(dim=0)
    p, gamma = rows.shape[0], 1.0 / c

    def k(x: torch.Tensor, y: torch.Tensor) -> float:
        if kernel == "sigmoid":
            return math.tanh(gamma * float(x @ y) + 1.0)
        if kernel == "rbf":
            return math.exp(-gamma * float(((x - y) ** 2).sum()))
        return float(x @ y)

    gram = torch.tensor([[k(rows[i], rows[j]) for j in range(p)] for i in range(p)],
                        dtype=torch.float64)
    centring = torch.eye(p, dtype=torch.float64) - 1.0 / p
    values, vectors = torch.linalg.eigh(centring @ gram @ centring)
    top = vectors[:, -1] * math.sqrt(max(float(values[-1]), 0.0))
    if top[top.abs().argmax()] < 0:
        top = -top
    return top.reshape(h, w)


@pytest.mark.parametrize("kernel", ["sigmoid", "rbf", "linear"])
def test_kpcacam_matches_slow_kernel_pca(deep, images, kernel):
    expl = camkit.explain(deep, images, [[1, 3]] * 3, methods="kpcacam", layer="body",
                          kernel=kernel)
    acts = deep.body(images).detach()
    for b in range(3):
        expected = slow_kernel_pca(acts[b].double(), kernel).float()
        for target in range(2):
            torch.testing.assert_close(expl.raw["kpcacam"][b, target], expected, atol=1e-4,
                                       rtol=1e-4)


def test_linear_kernel_pca_is_pca_up_to_sign():
    features = torch.randn(4, 20, 6, generator=torch.Generator().manual_seed(0),
                           dtype=torch.float64)
    kernel = eigen.kernel_principal_projection(features, "linear")
    pca = eigen.principal_projection(features)
    torch.testing.assert_close(kernel.abs(), pca.abs(), atol=1e-8, rtol=1e-8)


def test_kpcacam_rejects_an_unknown_kernel(tiny, images):
    with pytest.raises(ValueError, match="kernel must be one of"):
        camkit.explain(tiny, images, methods="kpcacam", layer="features", kernel="laplace")
