"""Controls and M-CAM configurations of the bias benchmark (`bench_bias.py`).

Registered here as methods of their own, so that `camkit.evaluate` scores them with the same
metrics as every other method:

- ``channel-sum``: ``Σ_i f_i``, the map M-CAM degenerates to when its weights ignore the class;
- ``mcam-seed-memory``: the seed's M-CAM with a memory trained as before issue 14 (random
  N(0, 1) start, temperature 1), which barely leaves its start;
- ``mcam-ideal`` / ``mcam-ideal-s30``: M-CAM with an ideal memory (S = the class templates of
  `camkit.memory.init.class_templates`, one slot per class, the target's own slot forced),
  seed weights ``exp(τ)`` / sharpened ``exp(30 τ)``;
- ``mcam-s30``, ``mcam-s100``, ``mcam-slot``, ``mcam-classifier``, ``mcam-value``,
  ``mcam-value-s0``, ``mcam-address``: the trained memory with the `mcam` options of
  :data:`VARIANTS` (``mcam`` and ``mcam-gradcam`` are the library's own).

Also the bias check (the CNN's score for a class on images showing only its partner against
images showing neither), the correlation of two classes' maps on the same image, and the goal
test: partner energy ≤ half Grad-CAM's with on-target energy ≥ Grad-CAM's, per seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import camkit
from camkit.capture import LayerPass
from camkit.evaluate import EvaluationResults
from camkit.memory import BiasReducingMemory, channel_similarity, channel_weights, mcam_map
from camkit.memory.features import CachedFeatures
from camkit.memory.init import init_from_templates
from camkit.methods.registry import Method, available_methods, get_method, register
from camkit.metrics.stats import summarize

VARIANTS: dict[str, dict[str, Any]] = {
    "mcam-s30": {"sharpness": 30.0}, "mcam-s100": {"sharpness": 100.0},
    "mcam-slot": {"base": "slot"}, "mcam-classifier": {"base": "classifier"},
    "mcam-value": {"base": "value"}, "mcam-value-s0": {"base": "value", "sharpness": 0.0},
    "mcam-address": {"base": "address"},
}
MCAM_CONFIGS = ("mcam", *VARIANTS, "mcam-gradcam")  # mcam and mcam-gradcam: the library's
IDEAL = {"mcam-ideal": 1.0, "mcam-ideal-s30": 30.0}
SEED_MEMORY = "mcam-seed-memory"  # M-CAM with a memory trained as before issue 14
CONTROLS = ("channel-sum", *IDEAL, SEED_MEMORY)


def _channel_sum(layer_pass: LayerPass) -> Tensor:
    """``Σ_i f_i`` for every target: ``(B, K, h, w)``."""
    acts = layer_pass.activations
    return acts.sum(dim=1, keepdim=True).expand(-1, layer_pass.scores.shape[1], -1, -1)


def _ideal(layer_pass: LayerPass, memory: BiasReducingMemory | None = None,
           sharpness: float = 1.0) -> Tensor:
    """M-CAM with slot ``ĉ`` forced for target ``ĉ`` (the ideal memory has one slot per class)."""
    assert memory is not None and layer_pass.target_indices is not None
    acts = layer_pass.activations
    slot_maps = memory.spatial[layer_pass.target_indices]
    return mcam_map(channel_weights(channel_similarity(acts, slot_maps), sharpness), acts)


def register_controls() -> None:
    """Register the controls and the M-CAM configurations (once)."""
    if "channel-sum" in available_methods():
        return
    mcam_compute = get_method("mcam").compute
    register(Method("channel-sum", "control: the plain sum of the layer's channels", "—",
                    _channel_sum))
    for name, sharpness in IDEAL.items():
        register(Method(name, f"control: M-CAM, ideal memory, exp({sharpness:g} τ)", "—",
                        partial(_ideal, sharpness=sharpness), options=("memory",)))
    register(Method(SEED_MEMORY, "control: M-CAM with a memory from the random start at T = 1",
                    "—", mcam_compute, options=("memory",)))
    for name, options in VARIANTS.items():
        register(Method(name, f"M-CAM with {options}", "Kim & Ro 2021 + camkit option",
                        partial(mcam_compute, **options), options=("memory",)))


@torch.no_grad()
def ideal_memory(features: Tensor, labels: Tensor) -> BiasReducingMemory:
    """A memory with one slot per class whose S holds the class templates of the training
    features ``(n, c, h, w)`` with multi-hot ``labels`` ``(n, n_cls)``."""
    n_cls = labels.shape[1]
    _, channels, h, w = features.shape
    memory = BiasReducingMemory(channels, (h, w), n_cls, n_cls)
    source = CachedFeatures(features, labels, (0, 0), [])
    init_from_templates(memory, source, 256, seed=0)
    return memory.eval()


def method_options(memory: BiasReducingMemory, ideal: BiasReducingMemory,
                   seed_memory: BiasReducingMemory) -> dict[str, dict]:
    """``method_options`` of `camkit.evaluate` for every memory-based method."""
    return ({name: {"memory": memory} for name in MCAM_CONFIGS}
            | {name: {"memory": ideal} for name in IDEAL} | {SEED_MEMORY: {"memory": seed_memory}})


@torch.no_grad()
def bias_check(net: nn.Module, x: Tensor, y: Tensor, partners: Mapping[int, int]
               ) -> dict[str, float]:
    """Per paired class ``a``: the CNN's mean sigmoid score for ``a`` on images showing its
    partner but not ``a`` (``partner_only_a``) and on images showing neither (``neither_a``)."""
    scores = net(x).sigmoid()
    out = {}
    for a, b in partners.items():
        for key, rows in {"partner_only": (y[:, a] == 0) & (y[:, b] == 1),
                          "neither": (y[:, a] == 0) & (y[:, b] == 0)}.items():
            out[f"{key}_{a}"] = float(scores[rows, a].mean()) if rows.any() else math.nan
    return out


def map_correlation(net: nn.Module, test: Any, layer: str, methods: Sequence[str],
                    options: Mapping[str, Mapping[str, Any]], pair: tuple[int, int], seed: int
                    ) -> dict[str, float]:
    """Per method: the mean Pearson correlation, over the test images showing both classes
    of ``pair``, between the map of one class and the map of the other."""
    rows = [i for i in range(len(test)) if test[i][1][list(pair)].all()]
    if not rows:
        return dict.fromkeys(methods, math.nan)
    x = torch.stack([test[i][0] for i in rows])
    out = {}
    for method in methods:
        extra = dict(options.get(method, {}))
        expl = camkit.explain(net, x, [list(pair)] * len(rows), [method], layer, seed=seed,
                              **extra)
        maps = expl.maps[method].flatten(2)  # (n, 2, H·W)
        centred = maps - maps.mean(dim=2, keepdim=True)
        cos = torch.nn.functional.cosine_similarity(centred[:, 0], centred[:, 1], dim=1)
        out[method] = float(cos.nan_to_num(0.0).mean())
    return out


def _interval(values: np.ndarray) -> tuple[float, float]:
    """Mean and 95 % Student-t half-width of per-seed values (NaN half-width for one)."""
    summary = summarize(values)
    return summary.mean, summary.high - summary.mean


def goal_rows(results: EvaluationResults, methods: Sequence[str], reference: str = "gradcam"
              ) -> list[str]:
    """Markdown rows: per method, per-seed ``leak / reference leak`` and ``on-target −
    reference on-target`` (mean ± 95 % CI over seeds) and whether the goal holds (ratio's
    upper bound ≤ 0.5 and the difference's lower bound ≥ 0, i.e. on every reading of the
    interval)."""
    leak = results.values[reference]["energy-leak"]
    own = results.values[reference]["energy-mask"]
    lines = ["| method | partner energy / Grad-CAM's | on-target energy − Grad-CAM's | goal |",
             "|---|---:|---:|---|"]
    for method in methods:
        ratio = _interval(results.values[method]["energy-leak"] / leak)
        gain = _interval(results.values[method]["energy-mask"] - own)
        met = ratio[0] + ratio[1] <= 0.5 and gain[0] - gain[1] >= 0
        lines.append(f"| {method} | {ratio[0]:.2f} ± {ratio[1]:.2f} | {gain[0]:+.3f} ± "
                     f"{gain[1]:.3f} | {'met' if met else 'not met'} |")
    return lines


def _seed_mean(values: Sequence[float]) -> str:
    finite = [v for v in values if v == v]
    return f"{sum(finite) / len(finite):.3f}" if finite else "—"


def bias_line(runs: Sequence[Mapping[str, Any]], partners: Mapping[int, int]) -> str:
    """The bias check, mean over seeds: per paired class, partner-only vs neither."""
    def mean(key: str) -> str:
        return _seed_mean([run["bias"][key] for run in runs])

    cells = [f"class {a} (partner {b}): {mean(f'partner_only_{a}')} vs {mean(f'neither_{a}')}"
             for a, b in partners.items()]
    return ("Bias check, the CNN's mean sigmoid score for a class on test images showing its "
            "partner but not the class vs images showing neither (mean over seeds): "
            + "; ".join(cells) + ".")


def diagnostics_lines(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The training diagnostics of the memory and of the seed-style memory, one line per seed
    and memory."""
    lines = []
    for run in runs:
        for name, part in (("memory", run), ("seed-style memory", run["seed_memory"])):
            lines.append(f"- seed {run['seed']}, {name}: " + _diagnostics(part))
    return lines


def _diagnostics(part: Mapping[str, Any]) -> str:
    record = part["diagnostics"]
    agreement = [v for v in record["agreement_spatial"] if v == v]
    collapse = "; collapsed: " + "; ".join(part["collapse"]) if part["collapse"] else ""
    return (f"S vs start cosine {record['spatial_start_cosine']:.3f}; entropy "
            f"p / p' / p_s {record['entropy_key']:.2f} / {record['entropy_value']:.2f} / "
            f"{record['entropy_spatial']:.2f} of ln N = {record['max_entropy']:.2f}; images per "
            f"slot under p_s {record['slot_usage_spatial']}; slot found "
            f"per class {record['search_slot']} ({record['distinct_search_slots']} distinct); "
            f"mean p_s–p' agreement {sum(agreement) / max(1, len(agreement)):.2f}{collapse}")


def correlation_line(runs: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> str:
    """Per method, the mean over seeds of the class-0 / class-1 map correlation."""
    cells = [f"{m} {_seed_mean([r['correlation'][m] for r in runs])}" for m in methods]
    return ("Correlation of the maps of classes 0 and 1 on the same test image (images showing "
            "both; 1 = the map ignores the class), mean over seeds: " + ", ".join(cells) + ".")
