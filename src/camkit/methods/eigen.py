"""Eigen-CAM, EigenGrad-CAM (ALGORITHMS §3.5-3.6) and KPCA-CAM: the first principal component
of the layer's features, by one batched eigendecomposition of the small Gram matrix (or, for
KPCA-CAM, of the kernel matrix) in torch on the input's device (no per-image loop).

All are raw ``(B, K, h, w)`` maps; Eigen-CAM and KPCA-CAM are class-agnostic (the same map for
every target). A singular vector's sign is arbitrary: :func:`principal_projection` fixes it
towards where the features are strong; ``sign_correction=True`` instead flips maps whose
largest magnitude is negative (off by default, as in the 2021 baselines).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ..capture import LayerPass
from .registry import GRADIENTS, Method, get_method, register


def principal_projection(features: Tensor) -> Tensor:
    """Projection on the first right singular vector (Bany Muhammad & Yeasin 2020, with the
    column centring of pytorch-grad-cam, C1): ``O`` ``(N, P, C)`` has one row per position;
    non-finite values become 0, each column is centred over the positions, ``O = UΣVᵀ`` and
    the result is ``O v₁ = σ₁ u₁`` ``(N, P)``.

    Exact, through the smaller Gram matrix instead of the SVD of ``O``: with ``P ≤ C`` the top
    eigenpair ``(λ₁, u₁)`` of ``O Oᵀ`` ``(P, P)`` gives ``σ₁ u₁ = √λ₁ u₁``; otherwise the top
    eigenvector ``v₁`` of ``Oᵀ O`` ``(C, C)`` gives ``O v₁`` (a 7×7 layer of 2,048 channels:
    a 49×49 eigenproblem, ≈ 10× faster than the SVD). A singular vector's sign is arbitrary;
    this one is fixed so that the projection correlates positively with the positions' summed
    centred activation ``O 𝟙`` (where the features are strong scores high)."""
    if features.shape[1] <= features.shape[2]:
        o = centred(features)
        gram = o @ o.transpose(1, 2)
        if not torch.isfinite(gram).all():  # non-finite features: only then the cleaned copy
            o = centred(features.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0))
            gram = o @ o.transpose(1, 2)
        values, vectors = torch.linalg.eigh(gram)
        projection = vectors[..., -1] * values[:, -1:].clamp(min=0).sqrt()
    else:
        o = centred(features.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0))
        vectors = torch.linalg.eigh(o.transpose(1, 2) @ o).eigenvectors
        projection = (o @ vectors[..., -1:])[..., 0]
    sign = (projection * o.sum(dim=2)).sum(dim=1, keepdim=True).sign()
    return projection * torch.where(sign == 0, 1.0, sign)


def centred(o: Tensor) -> Tensor:
    """``O`` ``(N, P, C)`` with each column's mean over the positions subtracted."""
    return o - o.mean(dim=1, keepdim=True)


def double_centred(k: Tensor) -> Tensor:
    """``K − 1K − K1 + 1K1`` with ``1 = 𝟙𝟙ᵀ/P``: the Gram matrix ``(N, P, P)`` of centred rows
    from that of the rows themselves."""
    return (k - k.mean(dim=1, keepdim=True) - k.mean(dim=2, keepdim=True)
            + k.mean(dim=(1, 2), keepdim=True))


def sign_corrected(projection: Tensor) -> Tensor:
    """Flip each row of ``projection`` ``(N, P)`` whose minimum is larger in magnitude than its
    maximum (C1's ``get_2d_projection_with_sign_correction``)."""
    flip = projection.amin(dim=1).abs() > projection.amax(dim=1).abs()
    return torch.where(flip[:, None], -projection, projection)


def eigen_map(features: Tensor, sign_correction: bool = False) -> Tensor:
    """``(N, C, h, w)`` features → ``(N, h, w)`` first-component maps."""
    n, _, h, w = features.shape
    projection = principal_projection(features.flatten(2).transpose(1, 2))
    if sign_correction:
        projection = sign_corrected(projection)
    return projection.reshape(n, h, w)


def eigencam(activations: Tensor, n_targets: int, sign_correction: bool = False) -> Tensor:
    """Eigen-CAM: the principal component of ``A`` ``(B, C, h, w)``, repeated for each of the
    ``n_targets`` targets → ``(B, K, h, w)`` (class-agnostic)."""
    maps = eigen_map(activations, sign_correction)
    return maps[:, None].expand(-1, n_targets, -1, -1)


def eigengradcam(activations: Tensor, gradients: Tensor, sign_correction: bool = False) -> Tensor:
    """EigenGrad-CAM: the principal component of ``G ⊙ A`` per target; ``(B, C, h, w)`` and
    ``(B, K, C, h, w)`` → ``(B, K, h, w)`` (class-discriminative)."""
    product = gradients * activations[:, None]
    return eigen_map(product.flatten(0, 1), sign_correction).unflatten(0, gradients.shape[:2])


KERNELS = ("linear", "poly", "rbf", "sigmoid", "cosine")


def kernel_matrix(o: Tensor, kernel: str, gamma: float, coef0: float = 1.0,
                  degree: int = 3) -> Tensor:
    """``K_pq = k(o_p, o_q)`` for ``o`` ``(N, P, C)`` → ``(N, P, P)``: ``linear`` ``x·y``,
    ``poly`` ``(γ x·y + c₀)^d``, ``rbf`` ``exp(−γ |x − y|²)``, ``sigmoid`` ``tanh(γ x·y + c₀)``,
    ``cosine`` ``x·y / (|x| |y|)``."""
    dot = o @ o.transpose(1, 2)
    if kernel == "linear":
        return dot
    if kernel == "poly":
        return (gamma * dot + coef0).pow(degree)
    if kernel == "sigmoid":
        return torch.tanh(gamma * dot + coef0)
    if kernel == "rbf":
        return torch.exp(-gamma * torch.cdist(o, o).square())
    if kernel == "cosine":
        unit = o / o.norm(dim=2, keepdim=True).clamp(min=torch.finfo(o.dtype).tiny)
        return unit @ unit.transpose(1, 2)
    raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")


def kernel_principal_projection(features: Tensor, kernel: str = "sigmoid",
                                gamma: float | None = None) -> Tensor:
    """Kernel PCA's first component (Schölkopf et al. 1998) of ``O`` ``(N, P, C)``, one row per
    position, as KPCA-CAM uses it (Karmani et al. 2024): non-finite values become 0, columns
    are centred, ``K = k(O, O)`` (:func:`kernel_matrix`, ``γ = 1/C`` by default) is double
    centred, ``K̃ = K − 1K − K1 + 1K1`` with ``1 = 𝟙/P``, and the projection is
    ``√λ₁ u₁`` ``(N, P)`` for its largest eigenpair. The sign makes the entry of largest
    magnitude positive (the convention of scikit-learn's ``KernelPCA``)."""
    o = features.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
    o = o - o.mean(dim=1, keepdim=True)
    k = double_centred(kernel_matrix(o, kernel, 1.0 / o.shape[2] if gamma is None else gamma))
    values, vectors = torch.linalg.eigh(k)
    top = vectors[..., -1]
    sign = top.gather(1, top.abs().argmax(dim=1, keepdim=True)).sign()
    return top * sign * values[:, -1:].clamp(min=0).sqrt()


def kpcacam(activations: Tensor, n_targets: int, kernel: str = "sigmoid",
            gamma: float | None = None) -> Tensor:
    """KPCA-CAM: :func:`kernel_principal_projection` of ``A`` ``(B, C, h, w)``, repeated for each
    of the ``n_targets`` targets → ``(B, K, h, w)`` (class-agnostic)."""
    b, _, h, w = activations.shape
    projection = kernel_principal_projection(activations.flatten(2).transpose(1, 2), kernel,
                                             gamma)
    return projection.reshape(b, 1, h, w).expand(-1, n_targets, -1, -1)


def eigen_smoothed(method: Method, layer_pass: LayerPass, options: dict[str, Any]) -> Tensor:
    """``eigen_smooth`` (pytorch-grad-cam's option): the first principal component of the
    method's channel terms ``(B, K, C, h, w)`` instead of their sum → ``(B, K, h, w)``."""
    assert method.channel_terms is not None
    terms = method.channel_terms(layer_pass, **options).float()
    return eigen_map(terms.flatten(0, 1)).unflatten(0, terms.shape[:2])


def check_channel_terms(methods: list[Method], available: Iterable[str]) -> None:
    """A clear error when one of ``methods`` has no channel terms for ``eigen_smooth``."""
    without = [m.name for m in methods if m.channel_terms is None]
    if without:
        having = [n for n in available if get_method(n).channel_terms is not None]
        raise ValueError(f"eigen_smooth needs maps that are sums over the layer's channels; "
                         f"{without} are not (these are: {having})")


def _check(sign_correction: bool) -> None:
    if not isinstance(sign_correction, bool):
        raise TypeError(f"sign_correction must be True or False, got {sign_correction!r}")


def _eigencam(layer_pass: LayerPass, sign_correction: bool = False) -> Tensor:
    _check(sign_correction)
    return eigencam(layer_pass.activations, layer_pass.scores.shape[1], sign_correction)


def _eigengradcam(layer_pass: LayerPass, sign_correction: bool = False) -> Tensor:
    _check(sign_correction)
    return eigengradcam(layer_pass.activations, layer_pass.layer_gradients, sign_correction)


register(Method(
    "eigencam", "first principal component of the layer's activations (class-agnostic)",
    "Bany Muhammad & Yeasin, Eigen-CAM, IJCNN 2020 (arXiv:2008.00299)", _eigencam,
    options=("sign_correction",), maths=(eigencam, principal_projection, sign_corrected),
))
def _kpcacam(layer_pass: LayerPass, kernel: str = "sigmoid",
             gamma: float | None = None) -> Tensor:
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    return kpcacam(layer_pass.activations, layer_pass.scores.shape[1], kernel, gamma)


register(Method(
    "kpcacam", "first kernel principal component of the layer's activations (class-agnostic)",
    "Karmani et al., KPCA-CAM: Visual Explainability of Deep Computer Vision Models using "
    "Kernel PCA, 2024 (arXiv:2410.00267)", _kpcacam, options=("kernel", "gamma"),
    maths=(kpcacam, kernel_principal_projection, kernel_matrix),
))
register(Method(
    "eigengradcam", "first principal component of gradients times activations",
    "pytorch-grad-cam's EigenGradCAM (Eigen-CAM on G ⊙ A)", _eigengradcam,
    frozenset({GRADIENTS}), options=("sign_correction",),
    maths=(eigengradcam, principal_projection, sign_corrected),
))
