"""Training the bias-reducing memory on a frozen target network (ALGORITHMS §1.3, §1.7).

Reproducibility: the memory is initialised from ``seed`` (global RNG forked, left untouched)
and epoch ``e`` visits the samples in the order ``torch.randperm(n, generator=G_e)`` with
``G_e`` seeded from ``(seed, e)`` alone, so a run resumed from a checkpoint (model,
optimizer, RNG states, epoch, history; written atomically after every epoch) ends in exactly
the state of an uninterrupted run.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..capture.features import layer_features
from ..progress import Progress
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from .diagnostics import address_entropy, collapse_reasons, memory_diagnostics, slot_usage
from .features import (
    CacheMode,
    FeatureFn,
    FeatureSource,
    LiveFeatures,
    extract_features,
)
from .init import Init, initialise
from .losses import loss_terms
from .module import BiasReducingMemory, TrainingAddresses

LOSS_NAMES = ("classifier", "sparse", "address", "total")
# Address temperature of training (a deviation from the paper's T = 1, OP-10): under T = 1 no
# address weight can exceed e² / (e² + N − 1) (0.40 for N = 12) and even orthogonal slots
# leave the address entropy within 5 % of ln N, so p' is too soft a target for slots to
# specialise on; at T = 0.1 the toy and benchmark sets specialise (docs/evaluation.md).
DEFAULT_TEMPERATURE = 0.1
ADDRESSES = ("key", "value", "spatial")  # p, p', p_s
Callback = Callable[[int, dict[str, Any]], None]


def average_precision(scores: Tensor, labels: Tensor) -> Tensor:
    """Per-class average precision ``Σ_t (R_t − R_{t−1}) P_t`` over the distinct score
    thresholds ``t`` (tied scores form one threshold, as in scikit-learn's
    ``average_precision_score``); NaN for a class without positives.
    ``(n, n_cls)``, ``(n, n_cls)`` → ``(n_cls,)``."""
    order = scores.argsort(dim=0, descending=True)
    sorted_scores, hits = scores.gather(0, order), labels.gather(0, order).float()
    tp = hits.cumsum(0)
    rank = torch.arange(1, len(scores) + 1, device=scores.device, dtype=tp.dtype)[:, None]
    threshold_end = torch.ones_like(hits, dtype=torch.bool)
    threshold_end[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    at_end = torch.where(threshold_end, tp, torch.zeros_like(tp))
    previous = torch.cat([torch.zeros_like(tp[:1]), at_end.cummax(0).values[:-1]])
    gain = torch.where(threshold_end, tp - previous, torch.zeros_like(tp))
    return (gain * tp / rank).sum(0) / hits.sum(0)


def mean_average_precision(scores: Tensor, labels: Tensor) -> float:
    """mAP: the mean of :func:`average_precision` over the classes with at least one
    positive (NaN when there is none)."""
    ap = average_precision(scores, labels)
    return float(ap[~ap.isnan()].mean()) if (~ap.isnan()).any() else math.nan


def epoch_order(n: int, batch_size: int, seed: int, epoch: int) -> list[Tensor]:
    """Index batches of epoch ``epoch`` (0-based): a permutation drawn from a generator
    seeded with ``(seed, epoch)`` only."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
    return list(torch.randperm(n, generator=generator).split(batch_size))


class EpochStats:
    """Running sums of the loss terms, address entropies and slot usage over one epoch."""

    def __init__(self, slots: int) -> None:
        self.count = 0
        self.sums = dict.fromkeys(LOSS_NAMES, 0.0) | dict.fromkeys(ADDRESSES, 0.0)
        self.usage = {name: torch.zeros(slots, dtype=torch.long) for name in ADDRESSES}

    @torch.no_grad()
    def add(self, out: TrainingAddresses, terms: dict[str, Tensor]) -> None:
        """Add one batch."""
        size = len(out.v)
        self.count += size
        for name in LOSS_NAMES:
            self.sums[name] += float(terms[name]) * size
        logits = dict(zip(ADDRESSES, (out.key_logits, out.value_logits, out.spatial_logits),
                          strict=True))
        for name, value in logits.items():
            self.sums[name] += float(address_entropy(value).sum())
            self.usage[name] += slot_usage(value).cpu()

    def losses(self) -> dict[str, float]:
        """Mean of each loss term so far."""
        return {f"loss_{n}": self.sums[n] / max(self.count, 1) for n in LOSS_NAMES}

    def record(self) -> dict[str, Any]:
        """The epoch's metrics: mean losses, mean entropy of p, p', p_s, slot usage."""
        entropies = {f"entropy_{n}": self.sums[n] / max(self.count, 1) for n in ADDRESSES}
        usage = {f"slot_usage_{n}": self.usage[n].tolist() for n in ADDRESSES}
        return self.losses() | entropies | usage


def train_epoch(memory: BiasReducingMemory, optimizer: torch.optim.Optimizer,
                source: FeatureSource, batches: list[Tensor], device: torch.device,
                bar: Progress) -> dict[str, Any]:
    """One pass over ``batches``: ``L = L_classifier + L_sparse + L_address`` (§1.3), one
    Adam step per batch. Returns the epoch's :meth:`EpochStats.record`."""
    memory.train()
    stats = EpochStats(memory.num_slots)
    for features, labels in source.iterate(batches):
        features, labels = features.to(device), labels.to(device)
        out = memory.training_addresses(features, labels)
        terms = loss_terms(out, labels)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimizer.step()
        stats.add(out, terms)
        bar.update(1)
        bar.note(_postfix(stats.losses()))
    return stats.record()


def _postfix(record: dict[str, Any]) -> dict[str, str]:
    """Progress-bar fields: every loss term and, once known, the validation mAP."""
    keys = [f"loss_{n}" for n in LOSS_NAMES] + ["val_map"]
    return {k.removeprefix("loss_"): f"{record[k]:.4f}" for k in keys if k in record}


@torch.no_grad()
def evaluate_map(memory: BiasReducingMemory, source: FeatureSource, batch_size: int,
                 device: torch.device) -> float:
    """The memory head's mAP (:func:`mean_average_precision`) on every sample of ``source``."""
    memory.eval()
    batches = list(torch.arange(len(source)).split(batch_size))
    scores, labels = zip(*((memory(f.to(device)).cpu(), y)
                           for f, y in source.iterate(batches)), strict=True)
    return mean_average_precision(torch.cat(scores), torch.cat(labels))


def _feature_fn(target: nn.Module | FeatureFn, layer: str | None) -> FeatureFn:
    if isinstance(target, nn.Module):
        if not isinstance(layer, str):
            raise TypeError("layer must be the dotted name of the target layer (e.g. 'layer4') "
                            "when a model is given")
        return lambda images: layer_features(target, layer, images)
    if not callable(target):
        raise TypeError("feature_fn_or_model must be an nn.Module or a callable images -> "
                        "(B, c, h, w) features")
    return target


def _device(target: nn.Module | FeatureFn, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    if isinstance(target, nn.Module):
        first = next(target.parameters(), None)
        if first is not None:
            return first.device
    return torch.device("cpu")


def _source(dataset: Any, feature_fn: FeatureFn, num_classes: int, cache: CacheMode,
            options: dict[str, Any]) -> FeatureSource:
    """Cached features of ``dataset``, or (``cache=None``) a live source probed on one batch."""
    if cache is None:
        probe = extract_features(dataset, feature_fn, num_classes, cache="memory",
                                 limit=options["batch_size"], **options)
        return LiveFeatures(dataset, feature_fn, options["device"], options["num_workers"], probe)
    return extract_features(dataset, feature_fn, num_classes, cache=cache, **options)


def _stale(history: list[dict[str, Any]], patience: int | None) -> bool:
    """Early stopping: the last ``patience`` epochs brought no better validation mAP."""
    scores = [record["val_map"] for record in history if "val_map" in record]
    if patience is None or len(scores) <= patience:
        return False
    return max(scores[-patience:]) <= max(scores[:-patience])


def _snapshot(memory: BiasReducingMemory) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in memory.state_dict().items()}


def fit(memory: BiasReducingMemory, train: FeatureSource, val: FeatureSource | None,
        settings: dict[str, Any], epochs: int, checkpoint: Path | None, resume: bool,
        progress: bool, callback: Callback | None) -> list[dict[str, Any]]:
    """The epoch loop: resume from ``checkpoint`` if asked, train, validate, checkpoint and
    call back after every epoch. With ``settings["patience"]`` and validation data, stop when
    that many epochs bring no better validation mAP and end in the best epoch's state.
    Returns the history of epoch records."""
    device = memory.keys.device
    optimizer = torch.optim.Adam(memory.parameters(), lr=settings["lr"])
    history: list[dict[str, Any]] = []
    start, best = 0, None
    if checkpoint is not None and resume and checkpoint.exists():
        start, history, best = load_checkpoint(checkpoint, memory, optimizer, settings)
    for epoch in range(start, epochs):
        if _stale(history, settings["patience"]):
            break
        began = time.perf_counter()
        batches = epoch_order(len(train), settings["batch_size"], settings["seed"], epoch)
        with Progress(len(batches), f"epoch {epoch + 1}/{epochs}", progress, unit="batch") as bar:
            record = {"epoch": epoch + 1} | train_epoch(memory, optimizer, train, batches,
                                                        device, bar)
            if val is not None:
                record["val_map"] = evaluate_map(memory, val, settings["batch_size"], device)
                bar.note(_postfix(record))
                if best is None or record["val_map"] > max(r["val_map"] for r in history):
                    best = _snapshot(memory)
        record["seconds"] = time.perf_counter() - began
        history.append(record)
        if checkpoint is not None:
            save_checkpoint(checkpoint, memory, optimizer, epoch + 1, settings, history, best)
        if callback is not None:
            callback(epoch + 1, record)
    if settings["patience"] is not None and best is not None:
        memory.load_state_dict(best)
    return history


def _report_skipped(sources: list[FeatureSource | None]) -> list[dict[str, str]]:
    records = {s.path: s.reason for source in sources if source for s in source.skipped}
    if records:
        shown = "; ".join(f"{p} ({r})" for p, r in list(records.items())[:5])
        warnings.warn(f"{len(records)} image(s) could not be loaded and were skipped: {shown}"
                      f"{' ...' if len(records) > 5 else ''} (memory.metrics['skipped'] lists all)",
                      RuntimeWarning, stacklevel=3)
    return [{"path": p, "reason": r} for p, r in records.items()]


def train_memory(
    feature_fn_or_model: nn.Module | FeatureFn,
    layer: str | None,
    data: Any,
    num_classes: int,
    slots: int | None = None,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    val_data: Any = None,
    progress: bool = True,
    cache: CacheMode = "auto",
    *,
    init: Init = "templates",
    patience: int | None = None,
    addr_temperature: float = DEFAULT_TEMPERATURE,
    class_names: list[str] | None = None,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    extract_batch_size: int | None = None,
    max_memory_bytes: int = 4 * 2**30,
    cache_dir: str | Path | None = None,
    callback: Callback | None = None,
) -> BiasReducingMemory:
    """Train a :class:`BiasReducingMemory` on a frozen target network (§1.3; §1.7 defaults).

    Args:
        feature_fn_or_model: the target network (``layer`` names its target layer), or a
            function ``images (B, 3, H, W) -> features (B, c, h, w)``.
        layer: the target layer's dotted name (recorded in the memory in either case).
        data: map-style data set of ``(image, multi-hot labels, ...)`` (see
            :mod:`camkit.data.multilabel`); images that fail to load are skipped and reported.
        num_classes: ``n_cls``.
        slots: ``N``, default ``2 · n_cls``.
        epochs, batch_size, lr: Adam training schedule (§1.7 [P]).
        seed: initialisation and per-epoch shuffling.
        checkpoint_dir: where ``memory-checkpoint.safetensors`` is written after every epoch.
        resume: continue from that checkpoint when it exists (same settings required;
            ``epochs`` may grow).
        val_data: data set for the memory head's validation mAP after every epoch.
        init: ``"templates"`` (default: S, K, V start from class templates of the training
            features, slot ``n`` for class ``n mod n_cls``, see :mod:`camkit.memory.init`)
            or ``"random"`` (§1.7's ``K, S ~ N(0, 1)``, which barely trains).
        patience: early stopping: with ``val_data``, stop after this many epochs without a
            better validation mAP and keep the best epoch's memory (``None``: all epochs).
        progress: progress bars on stderr (features, then one per epoch).
        cache: ``"auto"`` (memory up to ``max_memory_bytes``, else disk), ``"memory"``,
            ``"disk"`` (a numpy memmap in ``cache_dir``), or ``None`` (recompute every batch).
        addr_temperature: address softmax temperature; default :data:`DEFAULT_TEMPERATURE`
            = 0.1, a documented deviation from the paper's 1 (why: see that constant).
        class_names: recorded in the memory; default the data set's ``class_names``.
        device: where the memory trains; default the model's device (CPU for a function).
        num_workers: DataLoader workers for reading images.
        extract_batch_size: batch size of the feature pass (default ``batch_size``).
        callback: ``callback(epoch, record)`` after each epoch's checkpoint (1-based epoch).

    Returns:
        The trained memory (in eval mode, on ``device``); ``memory.metrics`` holds the
        per-epoch ``history`` (loss terms, validation mAP, address entropies, slot usage,
        seconds), the ``diagnostics`` of the final memory on the training features
        (:func:`camkit.memory.diagnostics.memory_diagnostics`: S's drift from its start,
        entropies, slot usage, the slot found per class, address agreement), the ``collapse``
        reasons (a ``RuntimeWarning`` is raised when there are any) and the ``skipped``
        images; ``memory.train_settings`` the settings.
    """
    device = _device(feature_fn_or_model, device)
    feature_fn = _feature_fn(feature_fn_or_model, layer)
    pass_batch = extract_batch_size or batch_size
    options = {"device": device, "batch_size": pass_batch,
               "max_memory_bytes": max_memory_bytes, "cache_dir": cache_dir,
               "num_workers": num_workers, "progress": progress}
    train = _source(data, feature_fn, num_classes, cache, options)
    val = None
    try:
        val = None if val_data is None else _source(val_data, feature_fn, num_classes, cache,
                                                    options)
        c, h, w = train.feature_shape
        slot_count = slots or 2 * num_classes
        settings = {"layer": layer, "num_classes": num_classes, "slots": slot_count,
                    "seed": seed, "batch_size": batch_size, "lr": lr,
                    "addr_temperature": addr_temperature, "init": init,
                    "patience": patience, "feature_shape": [c, h, w],
                    "input_size": list(train.input_size), "train_samples": len(train),
                    "val_samples": None if val is None else len(val)}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            memory = BiasReducingMemory(
                c, (h, w), num_classes, slot_count, addr_temperature, layer=layer,
                input_size=train.input_size,
                class_names=class_names or getattr(data, "class_names", None),
            ).to(device)
            initialise(memory, init, train, pass_batch, seed)
        start = memory.spatial.detach().clone()
        checkpoint = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir else None
        history = fit(memory, train, val, settings, epochs, checkpoint, resume, progress,
                      callback)
        diagnostics = memory_diagnostics(memory, train, pass_batch, start)
    finally:
        for source in (train, val):
            if source is not None:
                source.close()
    memory.train_settings = settings | {"epochs": epochs, "optimizer": "Adam", "cache": cache}
    memory.metrics = {"history": history, "max_entropy": math.log(memory.num_slots),
                      "diagnostics": diagnostics, "collapse": _warn_collapse(diagnostics),
                      "skipped": _report_skipped([train, val])}
    return memory.eval()


def _warn_collapse(diagnostics: dict[str, Any]) -> list[str]:
    """Warn (``RuntimeWarning``) when :func:`collapse_reasons` finds any; return them."""
    reasons = collapse_reasons(diagnostics)
    if reasons:
        warnings.warn("the M-CAM memory has collapsed: " + "; ".join(reasons) + ". Its maps "
                      "will hardly depend on the class; see memory.metrics['diagnostics']",
                      RuntimeWarning, stacklevel=3)
    return reasons
