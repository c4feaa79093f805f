"""Has the memory specialised? Diagnostics of a trained memory on a set of features.

A memory whose slots never leave their start explains nothing: its slot search returns the
same slot for every class and its maps are the layer's channel sum in disguise (ALGORITHMS
§1.9, issue 14). :func:`memory_diagnostics` measures what tells: how far S moved from its
start, the entropies of the three addresses p, p', p_s against ``ln N``, how many images
each slot takes, which slot the search of Algorithm 1 picks for each class, and how often
p_s (and p) pick the slot p' picks. :func:`collapse_reasons` turns them into warnings.

Shapes: ``n`` images, ``N`` slots, ``n_cls`` classes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .explain import draw_slot_noise, slot_search
from .features import FeatureSource
from .module import BiasReducingMemory

ENTROPY_MARGIN = 0.05  # collapse: p_s entropy within 5 % of ln N
USAGE_LIMIT = 0.9  # collapse: one slot takes more than 90 % of the images under p_s
SEARCH_SEED = 0  # the slot-search noise of the diagnostics


def address_entropy(logits: Tensor) -> Tensor:
    """Entropy ``−Σ_n p_n log p_n`` of each address ``p = softmax(logits)``: ``(n, N)`` →
    ``(n,)``; ``ln N`` means uniform (§1.9 pitfall 2)."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def slot_usage(logits: Tensor) -> Tensor:
    """How many samples address each slot most strongly: ``(n, N)`` → ``(N,)`` counts."""
    return torch.bincount(logits.argmax(1), minlength=logits.shape[1])


def spatial_drift(spatial: Tensor, start: Tensor) -> dict[str, float]:
    """How far S ``(N, c, h, w)`` moved from ``start``: the mean over slots of
    ``cos(vec S_n, vec S⁰_n)`` and ``‖S − S⁰‖ / ‖S⁰‖``."""
    now, then = spatial.flatten(1), start.to(spatial).flatten(1)
    cosine = (now * then).sum(1) / (now.norm(dim=1) * then.norm(dim=1) + 1e-12)
    return {"spatial_start_cosine": float(cosine.mean()),
            "spatial_relative_change": float((now - then).norm() / (then.norm() + 1e-12))}


@torch.no_grad()
def _addresses(memory: BiasReducingMemory, source: FeatureSource, batch_size: int
               ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Address logits ``{"key", "value", "spatial"}`` ``(n, N)``, labels ``(n, n_cls)`` and
    search slots ``(n, n_cls)`` (Algorithm 1 for every class, one noise draw) of ``source``."""
    memory.eval()
    device = memory.keys.device
    noise = draw_slot_noise(memory, torch.Generator(device).manual_seed(SEARCH_SEED))
    every_class = torch.arange(memory.num_classes, device=device)
    parts: dict[str, list[Tensor]] = {"key": [], "value": [], "spatial": [], "labels": [],
                                      "slots": []}
    for features, labels in source.iterate(list(torch.arange(len(source)).split(batch_size))):
        features, labels = features.to(device), labels.to(device)
        out = memory.training_addresses(features, labels)
        targets = every_class.expand(len(features), -1)
        search = slot_search(memory, memory.pool(features), targets, noise)
        for name, value in (("key", out.key_logits), ("value", out.value_logits),
                            ("spatial", out.spatial_logits), ("labels", labels),
                            ("slots", search.slots)):
            parts[name].append(value.cpu())
    joined = {name: torch.cat(values) for name, values in parts.items()}
    return ({k: joined[k] for k in ("key", "value", "spatial")}, joined["labels"],
            joined["slots"])


def _per_class(logits: dict[str, Tensor], labels: Tensor, slots: Tensor) -> dict[str, list]:
    """Per class (over the images that show it): the slot the search picks most often, the
    share of those images that get it, and the share where p_s (and p) pick p''s slot."""
    picked = {name: value.argmax(1) for name, value in logits.items()}
    mode: list[int | None] = []
    share, spatial_agree, key_agree = [], [], []
    for k in range(labels.shape[1]):
        rows = labels[:, k] > 0
        if not rows.any():
            mode.append(None)
            share.append(math.nan)
            spatial_agree.append(math.nan)
            key_agree.append(math.nan)
            continue
        counts = torch.bincount(slots[rows, k], minlength=logits["key"].shape[1])
        mode.append(int(counts.argmax()))
        share.append(float(counts.max() / rows.sum()))
        spatial_agree.append(float((picked["spatial"][rows] == picked["value"][rows]).float()
                                   .mean()))
        key_agree.append(float((picked["key"][rows] == picked["value"][rows]).float().mean()))
    return {"search_slot": mode, "search_slot_share": share,
            "agreement_spatial": spatial_agree, "agreement_key": key_agree}


def memory_diagnostics(memory: BiasReducingMemory, source: FeatureSource, batch_size: int = 256,
                       spatial_start: Tensor | None = None) -> dict[str, Any]:
    """The specialisation diagnostics of ``memory`` on every sample of ``source``.

    Returns a JSON-serialisable dict: ``entropy_key``, ``entropy_value``, ``entropy_spatial``
    (mean entropies of p, p', p_s) and ``max_entropy`` (``ln N``); ``slot_usage_key`` /
    ``_value`` / ``_spatial`` (images per slot under each address's argmax); per class
    ``search_slot`` (the slot Algorithm 1 picks most often for that class on the images
    showing it, noise seeded with 0), ``search_slot_share``, ``agreement_spatial`` and
    ``agreement_key`` (share of those images where argmax p_s, resp. p, equals argmax p');
    ``distinct_search_slots``; with ``spatial_start``, S's drift (:func:`spatial_drift`)."""
    logits, labels, slots = _addresses(memory, source, batch_size)
    record: dict[str, Any] = {f"entropy_{k}": float(address_entropy(v).mean())
                              for k, v in logits.items()}
    record["max_entropy"] = math.log(memory.num_slots)
    record |= {f"slot_usage_{k}": slot_usage(v).tolist() for k, v in logits.items()}
    record |= _per_class(logits, labels, slots)
    record["distinct_search_slots"] = len({s for s in record["search_slot"] if s is not None})
    if spatial_start is not None:
        record |= spatial_drift(memory.spatial.detach(), spatial_start)
    return record


def collapse_reasons(record: dict[str, Any]) -> list[str]:
    """Why :func:`memory_diagnostics`' ``record`` says the memory collapsed (empty: it did
    not): p_s's mean entropy within 5 % of ``ln N``, or one slot taking > 90 % of the images
    under p_s."""
    reasons = []
    entropy, top = record["entropy_spatial"], record["max_entropy"]
    if entropy >= (1 - ENTROPY_MARGIN) * top:
        reasons.append(f"p_s is nearly uniform (entropy {entropy:.3f} of ln N = {top:.3f})")
    usage = record["slot_usage_spatial"]
    if sum(usage) and max(usage) > USAGE_LIMIT * sum(usage):
        reasons.append(f"slot {usage.index(max(usage))} takes {max(usage)} of {sum(usage)} "
                       "images under p_s")
    return reasons


def summary_lines(record: dict[str, Any]) -> list[str]:
    """A few printable lines of :func:`memory_diagnostics`' ``record``."""
    def numbers(values: list) -> str:
        return ", ".join("—" if v is None or v != v else f"{v:.2f}" if isinstance(v, float)
                         else str(v) for v in values)

    lines = []
    if "spatial_start_cosine" in record:
        lines.append(f"S vs its start: cosine {record['spatial_start_cosine']:.3f}, relative "
                     f"change {record['spatial_relative_change']:.2f}")
    lines += [
        f"address entropy p / p' / p_s: {record['entropy_key']:.3f} / "
        f"{record['entropy_value']:.3f} / {record['entropy_spatial']:.3f} (ln N = "
        f"{record['max_entropy']:.3f})",
        f"slot usage under p_s: {numbers(record['slot_usage_spatial'])}",
        f"slot found per class: {numbers(record['search_slot'])} "
        f"({record['distinct_search_slots']} distinct)",
        f"agreement of p_s with p' per class: {numbers(record['agreement_spatial'])}",
    ]
    return lines
