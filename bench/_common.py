"""Shared helpers for the benchmarks: scale, timing, the side-by-side table, JSON output."""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# psvis and psvis_registry come from the environment (the project's .venv installs them
# editable); PYTHONPATH=<tree>/libs/psvis-kernel/src:<tree>/services/registry/src measures
# another tree, e.g. one with a patch applied.


@dataclass
class Row:
    """One measured line: psvis against its baseline on the same workload, in the same run."""

    name: str
    unit: str
    psvis: float
    baseline: float | None
    baseline_name: str = ""
    goal: float | None = None  # goal for `ratio` (psvis / baseline), or for psvis alone
    goal_on: str = "ratio"  # "ratio" or "psvis"
    n: int = 0
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.psvis / self.baseline

    @property
    def met(self) -> bool | None:
        if self.goal is None:
            return None
        value = self.ratio if self.goal_on == "ratio" else self.psvis
        return None if value is None else value >= self.goal

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "met": self.met}


@dataclass
class Result:
    bench: str
    scale: float
    rows: list[Row] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "scale": self.scale,
            "rows": [r.as_dict() for r in self.rows],
            "extra": self.extra,
        }


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--scale",
        type=float,
        default=float(os.environ.get("PSVIS_BENCH_SCALE", "1")),
        help="shrink the workload (0.1 = a tenth); default 1, or $PSVIS_BENCH_SCALE",
    )
    p.add_argument("--json", type=Path, help="also write this benchmark's result here")
    p.add_argument("--profile", action="store_true", help="cProfile the psvis side (slower)")
    p.add_argument("--workdir", type=Path, help="where the temporary databases go")
    return p


def scaled(n: int, scale: float, minimum: int = 1) -> int:
    return max(minimum, round(n * scale))


@contextmanager
def timer() -> Iterator[Callable[[], float]]:
    """`with timer() as elapsed:` ... `elapsed()` gives seconds (frozen on exit)."""
    gc.collect()
    start = time.perf_counter()
    end: list[float] = []
    yield lambda: (end[0] if end else time.perf_counter()) - start
    end.append(time.perf_counter())


def best_of(rounds: int, *sides: Callable[[], Any]) -> list[tuple[Any, float]]:
    """Run the sides in turn, `rounds` times; each side's last result and its fastest time.

    For short, read-only runs: alternating rounds give both sides the same share of a noisy
    machine, and the fastest of a few is the least disturbed.
    """
    out: list[tuple[Any, float]] = [(None, float("inf"))] * len(sides)
    for _ in range(rounds):
        for i, side in enumerate(sides):
            with timer() as elapsed:
                value = side()
            out[i] = (value, min(out[i][1], elapsed()))
    return out


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def goal_text(row: Row) -> str:
    if row.goal is None:
        return "-"
    what = "x" if row.goal_on == "ratio" else f" {row.unit}"
    mark = {True: "met", False: "MISSED", None: "?"}[row.met]
    return f">={fmt(row.goal)}{what} {mark}"


def print_result(result: Result) -> None:
    head = ["case", "n", "unit", "psvis", "baseline", "ratio", "goal"]
    body = [
        [
            r.name,
            f"{r.n:,}",
            r.unit,
            fmt(r.psvis),
            fmt(r.baseline) + (f" ({r.baseline_name})" if r.baseline_name else ""),
            fmt(r.ratio),
            goal_text(r),
        ]
        for r in result.rows
    ]
    print(f"\n== {result.bench} (scale {result.scale:g}) ==")
    print(table([head, *body]))
    notes = [f"  [{r.name}] {r.note}" for r in result.rows if r.note]
    if notes:
        print("\n".join(notes))


def finish(result: Result, json_path: Path | None) -> None:
    result.extra.setdefault("python", platform.python_version())
    result.extra.setdefault("sqlite", sqlite3.sqlite_version)
    result.extra.setdefault("cpus", os.cpu_count())
    print_result(result)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result.as_dict(), indent=2))


def profile_top(fn: Callable[[], Any], limit: int = 18) -> Any:
    """Run fn under cProfile and print the top functions by internal and cumulative time."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    out = prof.runcall(fn)
    for key in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(key).print_stats(limit)
        text = buf.getvalue()
        start = text.find("   ncalls")
        print(f"\n-- profile by {key} --\n" + text[start:].rstrip())
    return out
