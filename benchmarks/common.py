"""Shared benchmark helpers: fixed threads, median timings, result rows, peak memory.

Every benchmark module exposes ``run() -> list[dict]`` returning rows made by :func:`row`:
``{group, name, value, unit, note, goal, met}``. ``goal`` is ``"<= X"``, ``">= X"`` or
``None``; ``met`` is whether ``value`` satisfies it (``None`` without a goal). Speed goals are
ratios measured in one run, never absolute times.
"""

from __future__ import annotations

import multiprocessing as mp
import operator
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

THREADS = 2  # the reference machine has 2 cores; fixed so runs are comparable
WARMUP, REPEATS = 3, 15
Row = dict[str, Any]
BUSY_MS = 1.0  # parallel_op_ms() above this: another process holds a core
IDLE_WAIT_S = float(os.environ.get("BENCH_IDLE_WAIT_S", 30))  # 0: keep every round
CONTENTION = {"busy rounds discarded": 0, "busy rounds kept": 0}


def settings(quick: bool = False) -> tuple[int, int]:
    """``(warm-up, repetitions)``: fewer with ``quick``; ``BENCH_QUICK=1`` also selects it."""
    quick = quick or os.environ.get("BENCH_QUICK") == "1"
    return (1, 3) if quick else (WARMUP, REPEATS)


def setup(seed: int = 0) -> None:
    """Fix the thread count and the seed before building models or inputs."""
    torch.set_num_threads(THREADS)
    torch.manual_seed(seed)


def median_time(fn: Callable[[], object], warmup: int | None = None,
                repeats: int | None = None) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` calls after ``warmup`` calls."""
    default_warmup, default_repeats = settings()
    for _ in range(default_warmup if warmup is None else warmup):
        fn()
    times = []
    for _ in range(default_repeats if repeats is None else repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_samples(fns: dict[str, Callable[[], object]], warmup: int | None = None,
                        repeats: int | None = None) -> dict[str, list[float]]:
    """Seconds of each call of each function, timed in round-robin order so that slow drifts of
    the machine affect all of them alike. A round counts only when no other process competed
    for the cores before and after it (:func:`parallel_op_ms`); a busy round is discarded and
    redone, up to ``repeats`` extra rounds, each start waiting at most ``IDLE_WAIT_S`` for an
    idle machine (``BENCH_IDLE_WAIT_S=0`` or ``--quick`` keep every round). :data:`CONTENTION`
    counts discarded and busy-but-kept rounds."""
    default_warmup, default_repeats = settings()
    repeats = default_repeats if repeats is None else repeats
    for _ in range(default_warmup if warmup is None else warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    filtered = IDLE_WAIT_S > 0 and os.environ.get("BENCH_QUICK") != "1"
    for attempt in range(2 * repeats if filtered else repeats):
        if len(times[next(iter(fns))]) == repeats:
            break
        idle_before = not filtered or wait_idle(IDLE_WAIT_S)
        round_times = {}
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            round_times[name] = time.perf_counter() - start
        clean = not filtered or (idle_before and parallel_op_ms() <= BUSY_MS)
        must_keep = 2 * repeats - attempt <= repeats - len(times[next(iter(fns))])
        if clean or must_keep:
            CONTENTION["busy rounds kept"] += not clean
            for name, seconds in round_times.items():
                times[name].append(seconds)
        else:
            CONTENTION["busy rounds discarded"] += 1
    return times


def wait_idle(limit_s: float) -> bool:
    """Wait up to ``limit_s`` seconds for an idle machine; whether it is idle now."""
    deadline = time.monotonic() + limit_s
    while parallel_op_ms() > BUSY_MS:
        if time.monotonic() > deadline:
            return False
        time.sleep(2)
    return True


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of ``numerator[i] / denominator[i]`` (samples from
    :func:`interleaved_samples`): robust to load that changes between rounds."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def parallel_op_ms() -> float:
    """Median milliseconds of a small multi-threaded tensor op (``x + 1`` on 500k floats):
    about 0.1 ms on an idle machine. When another process holds a core, every parallel
    region waits for a scheduler slice and this reads several ms; timings taken then
    (the floor and camkit alike, but unevenly: it is a cost per op, not per FLOP) are
    unreliable."""
    x = torch.randn(500_000)
    for _ in range(5):
        x + 1
    times = []
    for _ in range(25):
        start = time.perf_counter()
        x + 1
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


def nearer_sign(plus: torch.Tensor, minus: torch.Tensor, theirs: torch.Tensor
                ) -> tuple[torch.Tensor, int]:
    """Map by map ``(B, H, W)``, whichever of ``plus`` and ``minus`` (camkit's map from a
    principal vector and from its negation: a singular vector's sign is arbitrary) is nearer
    the peer's ``theirs``; and how many maps took ``minus``."""
    flip = ((minus - theirs).abs().flatten(1).amax(1)
            < (plus - theirs).abs().flatten(1).amax(1))
    return torch.where(flip[:, None, None], minus, plus), int(flip.sum())


def goal_met(value: float, goal: str | None) -> bool | None:
    """Whether ``value`` satisfies ``goal`` (``"<= 1.05"``); ``None`` when there is no goal."""
    if not goal:
        return None
    op, threshold = goal.split()
    return bool(_OPS[op](value, float(threshold)))


def row(group: str, name: str, value: float, unit: str, note: str = "",
        goal: str | None = None) -> Row:
    """One result row; ``goal`` like ``"<= 1.05"`` is checked against ``value``."""
    return {"group": group, "name": name, "value": float(value), "unit": unit, "note": note,
            "goal": goal, "met": goal_met(float(value), goal)}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _child(fn: Callable[[], object], queue: Any) -> None:
    try:
        with open("/proc/self/clear_refs", "w") as refs:  # reset the peak (VmHWM) to now
            refs.write("5")
        before = _status_kib("VmRSS")
        fn()
        queue.put((_status_kib("VmHWM") - before) / 1024)
    except BaseException as error:  # report, never hang the parent
        queue.put(error)


def peak_rss_mib(fn: Callable[[], object]) -> float:
    """Peak resident memory that ``fn()`` adds, in MiB, measured in a forked child process
    (Linux): the child resets its peak counter, runs ``fn`` and reports the growth of its peak
    RSS over its RSS at the start. Objects ``fn`` closes over are shared, not counted."""
    context = mp.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=_child, args=(fn, queue))
    process.start()
    result = queue.get()
    process.join()
    if isinstance(result, BaseException):
        raise result
    return float(result)


def update_marked_section(path: Path, name: str, section: str) -> None:
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->`` in the
    Markdown file ``path`` by ``section`` (append the marked section when it is missing)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else "# Evaluation\n"
    block = f"{start}\n{section}{end}"
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def machine() -> str:
    """The CPU model, core and torch thread counts, torch and Python versions."""
    cpu = platform.processor() or "unknown CPU"
    with open("/proc/cpuinfo") as info:
        models = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
    if models:
        cpu = models[0]
    return (f"{cpu}, {os.cpu_count()} cores ({THREADS} torch threads), torch {torch.__version__}, "
            f"Python {platform.python_version()}")
