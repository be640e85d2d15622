"""Head page render time (Streamlit AppTest), cold and warm, on a store with unit tables.

Each measurement runs in a fresh Python process (a cold server: nothing imported, no Streamlit
cache): `AppTest.from_file(Home.py)` with the URL `?store=NAME&unit=UNIT`, the Home run (sidebar,
store opened), then the switch to the Head page. Reported per process:
  cold_page_s   the first render of the Head page (its imports, the store's tables, thumbnails)
  warm_page_s   a rerun of the same page (Streamlit caches warm): best of 5
  next_head_s   "next head" (a head not shown yet, summary cached): best of 5 successive heads
  cold_total_s  AppTest start to the first render of the page (Home included)

    .venv/bin/python benchmarks/bench_head_page.py --store artifacts/demo [--unit L7H3]
        [--out head_page_million.json]
Prints a JSON record and writes benchmarks/results/head_page.json (or --out). The 1,000,000-image
store: `bench_units.py --images 1000000 --root DIR` writes and interprets it (unit tables
included), then `--store DIR/artifacts/big --unit L11H3`; a random store has no images, so the
page shows no thumbnails or maps there (the example rows, histograms and texts are the same size
as on any store).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
from streamlit.testing.v1 import AppTest
at = AppTest.from_file(sys.argv[1], default_timeout=300)
at.query_params["store"] = sys.argv[2]
at.query_params["unit"] = sys.argv[3]
at.run()
t1 = time.perf_counter()
at.switch_page("views/head.py")
at.run()
t2 = time.perf_counter()
assert not at.exception, [e.value for e in at.exception]
assert at.header[0].value.startswith(sys.argv[3]), at.header[0].value
warm = []
for _ in range(5):
    t = time.perf_counter(); at.run(); warm.append(time.perf_counter() - t)
nxt = []
for _ in range(5):
    t = time.perf_counter(); at.button(key="head_next").click().run(); nxt.append(time.perf_counter() - t)
assert not at.exception, [e.value for e in at.exception]
print(json.dumps({"cold_page_s": round(t2 - t1, 3), "cold_home_s": round(t1 - t0, 3),
                  "cold_total_s": round(t2 - t0, 3), "warm_page_s": round(min(warm), 3),
                  "next_head_s": round(min(nxt), 3), "warm_all": [round(x, 3) for x in warm],
                  "next_all": [round(x, 3) for x in nxt]}))
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default="artifacts/demo")
    p.add_argument("--unit", default="L7H3")
    p.add_argument("--repeats", type=int, default=2, help="fresh processes")
    p.add_argument("--out", default="head_page.json", help="results file name")
    args = p.parse_args(argv)
    store = Path(args.store)
    env = {**os.environ, "CLIP_INTERPRET_ARTIFACTS": str(store.parent.resolve()),
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    env.pop("CLIP_INTERPRET_STORE", None)
    runs, load0 = [], os.getloadavg()[0]
    for _ in range(args.repeats):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(ROOT / "dashboard" / "Home.py"), store.name,
             args.unit], env=env, capture_output=True, text=True, check=True, cwd=ROOT,
        )  # fmt: skip
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = {k: min(r[k] for r in runs) for k in ("cold_page_s", "cold_total_s", "warm_page_s",
                                                  "next_head_s")}  # fmt: skip
    rec = {
        "store": str(store), "unit": args.unit, "machine": platform.machine(),
        "cpus": os.cpu_count(), "load_before": load0, "load": os.getloadavg()[0], "best": best,
        "runs": runs,
    }  # fmt: skip
    print(json.dumps(rec, indent=2))
    res = ROOT / "benchmarks" / "results"
    res.mkdir(exist_ok=True)
    (res / args.out).write_text(json.dumps(rec, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
