"""Run every benchmark (each in its own process), print a summary, write results JSON.

    .venv/bin/python bench/run_all.py [--scale 0.1] [--out /tmp/psvis-bench/results.json]

PSVIS_BENCH_SCALE works as --scale. Results go to /tmp/psvis-bench/results.json unless
--out or $PSVIS_BENCH_OUT says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import Row, fmt, goal_text, table

HERE = Path(__file__).resolve().parent
BENCHES = ["bench_append", "bench_verify", "bench_replay"]
DEFAULT_OUT = Path(tempfile.gettempdir()) / "psvis-bench" / "results.json"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scale", type=float, default=float(os.environ.get("PSVIS_BENCH_SCALE", "1")))
    p.add_argument("--out", type=Path, default=Path(os.environ.get("PSVIS_BENCH_OUT", DEFAULT_OUT)))
    p.add_argument("--only", nargs="*", choices=BENCHES, help="run only these")
    args = p.parse_args()
    out: dict[str, object] = {"scale": args.scale, "benches": {}}
    summary: list[list[str]] = [["bench / case", "n", "psvis", "baseline", "ratio", "goal"]]
    failed = 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or BENCHES:
            part = Path(tmp) / f"{name}.json"
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, str(HERE / f"{name}.py"), "--scale", str(args.scale),
                 "--json", str(part)],
                check=False,
            )  # fmt: skip
            seconds = time.perf_counter() - t0
            if proc.returncode != 0 or not part.exists():
                failed += 1
                print(f"!! {name} failed (exit {proc.returncode})", file=sys.stderr)
                continue
            data = json.loads(part.read_text())
            data["seconds"] = seconds
            out["benches"][name] = data  # type: ignore[index]
            for r in data["rows"]:
                row = Row(**{k: v for k, v in r.items() if k not in ("ratio", "met")})
                summary.append(
                    [
                        f"{data['bench']}: {row.name.strip()}",
                        f"{row.n:,}",
                        f"{fmt(row.psvis)} {row.unit}",
                        fmt(row.baseline),
                        fmt(row.ratio),
                        goal_text(row),
                    ]
                )
    total = time.perf_counter() - started
    out["seconds"] = total
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"\n== summary (scale {args.scale:g}, {total:.0f}s) ==")
    print(table(summary))
    print(f"\nresults: {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
