"""Where the memory starts: ``"random"`` (the §1.7 N(0, 1) start) or ``"templates"`` (from the
training features). The seed is silent on initialisation; this is camkit's choice (OP-11).

Why not random: Adam moves each parameter by about ``lr`` per step whatever its scale, so
``S, K ~ N(0, 1)`` with ``lr = 1e-3`` barely leave their start in a few hundred steps (issue
14 measured S at cosine 0.96 with its start and one slot taking 2,398 of 2,400 images).

``"templates"`` gives slot ``n`` to class ``k = n mod n_cls`` from the first step:

- ``S_n = T_k``, the class template of a ridge least-squares fit of the features on the labels,
  ``vec f ≈ Σ_k y_k T_k + b`` (the intercept ``b``, shared by every image, is left out so that
  the cosine of ``p_s`` compares what differs between classes). A fit, not a class mean: the
  mean of images showing class k also holds its co-occurring partner, the fit separates the
  two wherever either ever appears without the other.
- ``K_n`` = the spatial mean of ``T_k`` (the query of that template);
- ``V_n`` = ``G(e_k) − mean_j G(e_j)``, the encoder's output for class k alone (centred over
  the classes: raw outputs of a random ReLU MLP are strongly correlated), scaled to the mean
  query norm, so that p' addresses slot k for class k and the read value weighs as much as ``q`` in
  ``fc(cat(v, q))`` (at ``V ~ N(0, 0.02²)`` the classifier learns to ignore ``v``).

Slots beyond the first ``n_cls`` repeat the classes with a relative jitter of
:data:`JITTER` (different draws), so each class has ``N / n_cls`` similar slots to refine.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .features import FeatureSource
from .module import BiasReducingMemory

Init = Literal["random", "templates"]
INITS = ("random", "templates")
RIDGE = 1e-3  # ridge of the fit, relative to the number of images
READ_GAIN = 8.0  # logit that a full address on a class's slot adds to that class at the start
JITTER = 0.1  # relative std of the jitter of repeated slots


class TemplateFit:
    """Ridge least squares ``vec f ≈ [y, 1] W`` accumulated batch by batch (the Gram matrix
    ``(n_cls + 1)²`` and ``[y, 1]ᵀ vec f`` ``(n_cls + 1, D)`` in float64), so the fit needs
    one pass over the features and memory for ``W`` only; also the mean query norm."""

    def __init__(self) -> None:
        self.gram: Tensor | None = None
        self.cross: Tensor | None = None
        self.count, self.query_norms = 0, 0.0

    def add(self, features: Tensor, labels: Tensor) -> None:
        """One batch: ``(b, c, h, w)`` (or ``(b, D)``) features, ``(b, n_cls)`` labels."""
        design = torch.cat([labels, torch.ones_like(labels[:, :1])], dim=1).double().cpu()
        flat = features.flatten(1).double().cpu()
        gram, cross = design.T @ design, design.T @ flat
        self.gram = gram if self.gram is None else self.gram + gram
        self.cross = cross if self.cross is None else self.cross + cross
        self.count += len(features)
        if features.dim() == 4:
            self.query_norms += float(features.mean(dim=(2, 3)).norm(dim=1).sum())

    def templates(self) -> Tensor:
        """The class rows ``T`` of ``W`` (the intercept row dropped): ``(n_cls, D)`` float32."""
        if self.gram is None or self.cross is None:
            raise ValueError("no features to fit the class templates on")
        ridge = RIDGE * self.count * torch.eye(len(self.gram), dtype=torch.float64)
        return torch.linalg.solve(self.gram + ridge, self.cross)[:-1].float()

    def mean_query_norm(self) -> float:
        return self.query_norms / max(self.count, 1)


def class_templates(features: Tensor, labels: Tensor) -> Tensor:
    """:class:`TemplateFit` on one batch: ``(n, D)``, ``(n, n_cls)`` → ``(n_cls, D)``."""
    fit = TemplateFit()
    fit.add(features, labels)
    return fit.templates()


def _repeat(rows: Tensor, slots: int, generator: torch.Generator) -> Tensor:
    """``rows`` ``(n_cls, ...)`` repeated to ``(slots, ...)``, slot ``n`` from row
    ``n mod n_cls``; the repeats beyond the first get a relative Gaussian jitter."""
    index = torch.arange(slots) % len(rows)
    out = rows[index].clone()
    extra = out[len(rows):]
    scale = JITTER * rows.flatten(1).std(dim=1)[index[len(rows):]]
    noise = torch.randn(extra.shape, generator=generator).to(out)
    extra += noise * scale.view(-1, *[1] * (extra.dim() - 1)).to(out)
    return out


@torch.no_grad()
def init_from_templates(memory: BiasReducingMemory, source: FeatureSource, batch_size: int,
                        seed: int) -> None:
    """Set S, K, V and fc's value half of ``memory`` as the module docstring says, from one
    pass over ``source``'s features (with ``cache=None`` that is one more pass of the
    network over the data)."""
    fit = TemplateFit()
    for features, labels in source.iterate(list(torch.arange(len(source)).split(batch_size))):
        fit.add(features.float(), labels.float())
    templates = fit.templates().view(-1, *memory.spatial.shape[1:])
    generator = torch.Generator().manual_seed(seed)
    spatial = _repeat(templates, memory.num_slots, generator)
    device = memory.keys.device
    memory.spatial.copy_(spatial.to(device))
    memory.keys.copy_(spatial.mean(dim=(2, 3)).to(device))
    eye = torch.eye(memory.num_classes, device=device)
    codes = memory.encoder(eye).cpu()
    if len(codes) > 1:
        codes = codes - codes.mean(dim=0, keepdim=True)
    codes = codes / codes.norm(dim=1, keepdim=True).clamp_min(1e-12)
    query_norm = fit.mean_query_norm()
    values = _repeat(codes, memory.num_slots, generator) * query_norm
    memory.values.copy_(values.to(device))
    memory.fc.weight[:, :memory.channels] = (READ_GAIN * codes / query_norm).to(device)


def initialise(memory: BiasReducingMemory, init: Init, source: FeatureSource, batch_size: int,
               seed: int) -> None:
    """Apply ``init`` to a freshly constructed ``memory`` (``"random"`` keeps its start)."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if init == "templates":
        init_from_templates(memory, source, batch_size, seed)

