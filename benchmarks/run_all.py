"""Run every benchmark script (`benchmarks/bench_*.py`) in turn; `make bench` calls this.

Each script measures its ratios against a baseline in the same run and writes its JSON under
benchmarks/results/; the numbers are copied by hand into docs/benchmarks.md (one section each).

    .venv/bin/python benchmarks/run_all.py [NAME ...]    # e.g. build memory (default: all)
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    if argv:
        wanted = {f"bench_{a.removeprefix('bench_').removesuffix('.py')}.py" for a in argv}
        unknown = wanted - {s.name for s in scripts}
        if unknown:
            print(f"error: no such benchmark: {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        scripts = [s for s in scripts if s.name in wanted]
    failed = []
    for s in scripts:
        print(f"== {s.name}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(s)], cwd=HERE.parent)
        print(f"== {s.name}: exit {rc} in {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(s.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
