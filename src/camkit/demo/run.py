"""Running the parts and writing the report."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from camkit.demo.classic import classic_part
from camkit.demo.embedding import embedding_part
from camkit.demo.mcam import mcam_part
from camkit.demo.settings import PART_THREADS, Part, PartSettings
from camkit.viz.report import write_report

PARTS: dict[str, Callable[[Path, Any, bool | None], Part]] = {
    "classic": classic_part, "mcam": mcam_part, "embedding": embedding_part}


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads (``None``: as it is), then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_parts(out: Path, settings: Mapping[str, PartSettings], progress: bool | None = None,
              threads: int | None = None) -> list[Part]:
    """Run the parts named in ``settings`` (in :data:`PARTS` order) with their settings;
    ``threads`` torch CPU threads for the classic part (``None``: torch's default), one for
    the small networks (:data:`PART_THREADS`)."""
    done = []
    for name, make in PARTS.items():
        if name in settings:
            start = time.perf_counter()
            with torch_threads(PART_THREADS.get(name, threads)):
                part = make(out, settings[name], progress)
            part.seconds = time.perf_counter() - start
            done.append(part)
    return done


def write_demo_report(out: Path, parts: Sequence[Part], command: str) -> Path:
    """``out/report.html``: one section per part, with every part's settings."""
    settings = {"command": command, **{f"{p.name} settings": p.settings for p in parts}}
    return write_report(out / "report.html", [p.section for p in parts], settings,
                        title="camkit demo")


def summary_table(parts: Sequence[Part]) -> str:
    """One line per part: its name, seconds, whether it trained or reused, its result."""
    rows = [("part", "time", "training", "result")]
    rows += [(p.name, f"{p.seconds:.0f} s", p.cache, p.summary) for p in parts]
    rows.append(("total", f"{sum(p.seconds for p in parts):.0f} s", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, [*widths, 0], strict=True))
                     .rstrip() for row in rows)
