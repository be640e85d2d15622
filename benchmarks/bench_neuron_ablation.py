"""Neuron ablation memory and time: the streamed pass (`neuron_ablation.neuron_deltas`) against the
former in-memory formula (the whole layer dequantised to [image, neuron, K] float32 and kept,
then one dense delta per set), each in a fresh subprocess, alternately (A B A B ...).

Timed: `StoreSession.ablate_neurons(spec, random=draws)` after the session has read the
components and the tasks (untimed). Peak memory: the process's peak resident set (VmHWM), reset
(`/proc/self/clear_refs` 5) just before the ablation, minus the resident set then: what the
ablation itself added. Needs a store with a neuron layer, e.g.
`python -m engine demo-store --store /tmp/as/demo --images 4000 --visualise-steps 0`.

    .venv/bin/python benchmarks/bench_neuron_ablation.py [--store artifacts/demo] [--spec neurons:L6:significant]
        [--draws 10] [--repeats 3]
Prints a JSON record and writes benchmarks/results/neuron_ablation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _status(key: str) -> int:
    """A /proc/self/status figure in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _dense_deltas(s, sets, fit, ev):
    """The former implementation: each layer dequantised whole (cached), one delta per set."""
    import numpy as np

    from engine.core import second_order as so
    from engine.session import neuron_ablation as na

    def coords(layer):
        cols, li = na._layer_slice(s, layer)
        q = np.asarray(s.reader.lazy("neuron_coord")[:, cols])
        return so.dequantise(q, np.asarray(s.reader.lazy("neuron_scale")[:, li]))

    outs = []
    for chosen in sets:
        out = np.zeros((len(ev), s.model_record.d_embed), np.float32)
        for layer, idx in chosen.items():
            k = s._once.get(("neuron_coords", int(layer)), lambda l=layer: coords(l))[:, idx]
            centred = k[ev] - k[fit].mean(axis=0, keepdims=True)
            out += np.einsum("ink,nke->ie", centred, na._frames(s, layer, idx), optimize=True)
        outs.append(out)
    return outs


def child(store: str, spec: str, draws: int, mode: str) -> dict:
    sys.path.insert(0, str(ROOT))
    from engine.session import StoreSession
    from engine.session import neuron_ablation as na
    from engine.session.ablation import zeroshot_tasks

    if mode == "dense":
        na.neuron_deltas = _dense_deltas
    with StoreSession.open(store) as s:
        s.components()
        zeroshot_tasks(s, None)
        rss0 = _status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        t0, c0 = time.perf_counter(), time.process_time()
        res = s.ablate_neurons(spec, random=draws)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        peak = _status("VmHWM")
    return {"mode": mode, "wall_s": wall, "cpu_s": cpu, "rss_before_mb": rss0 / 2**20,
            "peak_added_mb": (peak - rss0) / 2**20, "result": res.to_dict()}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default="artifacts/demo", help="default: the demo store")
    ap.add_argument("--spec", default="neurons:L6:significant")
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", default=None)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.store, a.spec, a.draws, a.child)))
        return
    if not Path(a.store).exists():
        sys.exit(f"no store at {a.store}: build one with `python -m engine demo-store`")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = []
    load = [os.getloadavg()]
    for _ in range(a.repeats):
        for mode in ("dense", "streamed"):
            cmd = [sys.executable, __file__, "--store", a.store, "--spec", a.spec,
                   "--draws", str(a.draws), "--child", mode]  # fmt: skip
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
    load.append(os.getloadavg())
    med = {}
    for mode in ("dense", "streamed"):
        mine = sorted(runs, key=lambda r: r["wall_s"])
        mine = [r for r in mine if r["mode"] == mode]
        pick = lambda k, m=mine: sorted(r[k] for r in m)[len(m) // 2]  # noqa: E731
        med[mode] = {k: round(pick(k), 3) for k in ("wall_s", "cpu_s", "peak_added_mb")}
    same = all(r["result"] == runs[0]["result"] for r in runs)
    record = {"store": a.store, "spec": a.spec, "draws": a.draws, "repeats": a.repeats,
              "median": med, "same_result": same,
              "wall_ratio": round(med["streamed"]["wall_s"] / med["dense"]["wall_s"], 3),
              "memory_ratio": round(med["streamed"]["peak_added_mb"]
                                    / med["dense"]["peak_added_mb"], 3),
              "loadavg_before_after": load,
              "runs": [{k: v for k, v in r.items() if k != "result"} for r in runs]}  # fmt: skip
    print(json.dumps(record, indent=1))
    out = ROOT / "benchmarks" / "results" / "neuron_ablation.json"
    out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
