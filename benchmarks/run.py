"""Run the benchmarks and write docs/benchmarks.md.

Every ``benchmarks/bench_*.py`` module exposes ``run() -> list[dict]`` (rows made by
``common.row``) and optionally ``DESCRIPTIONS`` (group → paragraph). Each result group gets its
own section between markers in the document; a run replaces only the sections of the groups
it produced and keeps the others.

    python benchmarks/run.py                   # everything
    python benchmarks/run.py --only gradient   # bench_gradient.py only
    python benchmarks/run.py --quick           # fewer repetitions (a smoke test)
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import re
import shlex
import sys
import traceback
from pathlib import Path
from types import ModuleType

import torch

from common import (
    BUSY_MS,
    CONTENTION,
    THREADS,
    Row,
    goal_met,
    machine,
    parallel_op_ms,
    wait_idle,
)

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "docs" / "benchmarks.md"
STANDALONE = {"bench_bias"}  # run by their own make target (`make bench-bias`), not here
SECTION = re.compile(r"<!-- group: (?P<group>\S+) -->\n.*?<!-- /group: (?P=group) -->\n",
                     re.DOTALL)
HEADER = """# Benchmarks

Written by `benchmarks/run.py` (`make bench`). Each section below comes from one group of one
benchmark module and says when, where and with which command it was measured; a run replaces
only the sections of the groups it ran. Speed goals are ratios of times measured in the same
run on the same machine (medians after warm-up, torch limited to {threads} threads), never
absolute times; tests contain no timing assertions.

"""


def discover(only: list[str]) -> list[str]:
    """Names of the ``bench_*.py`` modules to run (``--only gradient`` or ``bench_gradient``)."""
    names = sorted(p.stem for p in HERE.glob("bench_*.py") if p.stem not in STANDALONE)
    if not only:
        return names
    wanted = {n if n.startswith("bench_") else f"bench_{n}" for n in only}
    unknown = sorted(wanted - set(names))
    if unknown:
        sys.exit(f"no benchmark module {unknown}; available: {[n[6:] for n in names]}")
    return [n for n in names if n in wanted]


def wait_quiet(limit_s: float) -> None:
    """Wait up to ``limit_s`` seconds until no other process competes for the cores."""
    if limit_s > 0 and parallel_op_ms() > BUSY_MS:
        print(f"waiting up to {limit_s:.0f} s for an idle machine", flush=True)
        wait_idle(limit_s)


def load_note(before: tuple[float, float], after: tuple[float, float]) -> str:
    """Load and contention around a module; a warning when busy rounds had to be kept."""
    discarded, kept = CONTENTION["busy rounds discarded"], CONTENTION["busy rounds kept"]
    note = (f"Load average {before[0]:.1f} before, {after[0]:.1f} after. Timing rounds during "
            f"which another process held a core (a small parallel op took > {BUSY_MS:g} ms "
            f"instead of ≈0.1 ms) were discarded and redone: {discarded}.")
    if kept or max(before[1], after[1]) > BUSY_MS:
        note += (f" **{kept} busy rounds had to be kept: other processes competed for the "
                 "cores, every parallel op waited for a scheduler slice, and ratios are less "
                 "reliable; rerun on an idle machine.**")
    return note


def contention() -> tuple[float, float]:
    return os.getloadavg()[0], parallel_op_ms()


def fmt(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:.1f}"
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.1e}"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"


def met_mark(r: Row) -> str:
    met = r.get("met", goal_met(r["value"], r.get("goal")))
    return "" if met is None else ("yes" if met else "**no**")


def table(rows: list[Row]) -> str:
    lines = ["| benchmark | value | unit | goal | met | note |", "|---|---:|---|---|---|---|"]
    for r in rows:
        cells = [r["name"], fmt(r["value"], r["unit"]), r["unit"], r.get("goal") or "",
                 met_mark(r), r.get("note", "")]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def section(group: str, rows: list[Row], description: str, stamp: str) -> str:
    goals = [r for r in rows if r.get("goal")]
    met = sum(met_mark(r) == "yes" for r in goals)
    summary = f"Goals met: {met} of {len(goals)}.\n\n" if goals else ""
    text = description.strip() + "\n\n" if description else ""
    return (f"<!-- group: {group} -->\n## {group}\n\n{stamp}\n\n{summary}{text}{table(rows)}\n"
            f"<!-- /group: {group} -->\n")


def write(path: Path, sections: dict[str, str]) -> None:
    """Replace the sections of the groups that ran, keep the others in their order."""
    old = path.read_text() if path.exists() else ""
    kept = {m["group"]: m.group(0) for m in SECTION.finditer(old)}
    kept.update(sections)
    body = "\n".join(kept.values())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER.format(threads=THREADS) + body)


def print_table(rows: list[Row]) -> None:
    width = max((len(r["name"]) for r in rows), default=10)
    for r in rows:
        goal = f"  goal {r['goal']}: {met_mark(r).strip('*')}" if r.get("goal") else ""
        print(f"  {r['name']:<{width}}  {fmt(r['value'], r['unit']):>9} {r['unit']}{goal}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only this module (repeatable; 'gradient' = bench_gradient.py)")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown file to update")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="before each module, wait up to this long for an idle machine")
    args = parser.parse_args(argv)
    if args.quick:
        os.environ["BENCH_QUICK"] = "1"
    torch.set_num_threads(THREADS)
    command = "python benchmarks/run.py" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:])
    sections: dict[str, str] = {}
    failed = []
    for name in discover(args.only):
        wait_quiet(args.wait_quiet)
        print(f"== {name}", flush=True)
        CONTENTION.update({key: 0 for key in CONTENTION})
        start, before = datetime.datetime.now().astimezone(), contention()
        try:
            module: ModuleType = importlib.import_module(name)
            rows = module.run()
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        stamp = (f"Measured {start:%Y-%m-%d %H:%M %Z} with `{command}` on {machine()}. "
                 + load_note(before, contention()))
        descriptions = getattr(module, "DESCRIPTIONS", {})
        for group in dict.fromkeys(r["group"] for r in rows):
            group_rows = [r for r in rows if r["group"] == group]
            print(f"-- {group}")
            print_table(group_rows)
            sections[group] = section(group, group_rows, descriptions.get(group, ""), stamp)
    if sections:
        write(args.out, sections)
        print(f"wrote {args.out} ({', '.join(sections)})")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
