"""Mean-ablation of MLP neurons' second-order effects, with zero-shot before/after and a
random-neuron baseline (what `python -m engine ablate --ablate L6N12|neurons:L6:...` runs).

Neuron n's stored effect on image i is `k_n(i) @ Q_n` (int8 frame coordinates, `build
--neurons`). Mean-ablating a set S replaces each effect by its mean over the fitting images:
embedding_after(i) = output(i) - Σ_{n ∈ S} (k_n(i) - mean_fit k_n) @ Q_n, evaluated on the
held-out split, against `random` draws of as many random neurons per layer (drawn among the
layer's other neurons when it has as many; `baseline` says when the draws cannot differ).
`python -m engine ablate` records the run in the store (`engine.pipeline.ablate`); the Ablation
page shows the same result without writing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.core import ablation
from engine.core import second_order as so
from engine.core.ablation import TaskAblation
from engine.core.baseline import BaselineCheck, check_neuron_baseline
from engine.core.neuron_spec import (
    VALID_NEURON_FORMS,
    is_neuron_spec,
    parse_neuron_spec,
    random_neurons,
    spec_layers,
)
from engine.core.zeroshot import evaluate
from engine.errors import UserError
from engine.session import neurons as _neurons
from engine.session.ablation import zeroshot_tasks
from engine.session.neurons import neuron_name


@dataclass
class NeuronAblation:
    """One neuron ablation: the spec, the neurons it named, the split, per task before / after /
    random draws, the task source, and whether the random baseline can differ from the ablated
    set (`baseline`; None without draws)."""

    spec: str
    neurons: dict[int, np.ndarray]  # layer -> ablated neuron indices
    n_fit: int
    n_eval: int
    tasks: list[TaskAblation]  # per task, as heads' (`engine.core.ablation.TaskAblation`)
    tasks_source: str = ""
    baseline: BaselineCheck | None = None
    timings: dict = field(default_factory=dict)

    @property
    def n_ablated(self) -> int:
        return int(sum(len(v) for v in self.neurons.values()))

    @property
    def units(self) -> list[str]:
        """The ablated neurons' names (`L6N12`), layer by layer."""
        return [neuron_name(l, n) for l, v in self.neurons.items() for n in v]

    @property
    def baseline_note(self) -> str:
        """One sentence when the random baseline says little ("" when sound or not drawn)."""
        return self.baseline.note if self.baseline is not None else ""

    def to_dict(self) -> dict:
        out = {"spec": self.spec, "n_ablated": self.n_ablated,
               "neurons": {str(l): v.tolist() for l, v in self.neurons.items()},
               "n_fit": self.n_fit, "n_eval": self.n_eval, "tasks_source": self.tasks_source,
               "tasks": [t.to_dict() for t in self.tasks]}  # fmt: skip
        if self.baseline is not None:
            out["baseline"] = self.baseline.to_dict()
        return out


def _frames(s, layer: int, idx: np.ndarray) -> np.ndarray:
    """Q_n [neuron, K, d_embed] of `idx` (float32) from the store's constants."""
    u, basis = _neurons._path_maps(s, layer)  # [K, neuron, d_head], [K, d_head, d_embed]
    built = _neurons.neuron_layers(s)
    k = u.shape[0]
    chol = s.reader.array("neuron_chol")[built.index(layer), idx][:, :k, :k]  # [neuron, K, K]
    e = np.einsum("knd,kde->nke", u[:, idx], basis, optimize=True)  # [neuron, K, d_embed]
    q = torch.linalg.solve_triangular(
        torch.from_numpy(chol).double(), torch.from_numpy(e).double(), upper=False
    )
    return q.float().numpy()


_BLOCK_BYTES = 2**24  # float32 coordinates dequantised at once for the fit means (16 MiB)


def _layer_slice(s, layer: int) -> tuple[slice, int]:
    """Where the layer's neurons live in the store: its K columns of `neuron_coord` [image, K,
    neuron] and its index along `neuron_scale`'s layer axis."""
    built = _neurons.neuron_layers(s)
    n_layers, n_heads = int(s.info["n_layers"]), s.n_heads
    off = sum((n_layers - 1 - l) * n_heads for l in built if l < layer)
    k = (n_layers - 1 - layer) * n_heads
    return slice(off, off + k), built.index(layer)


def _chunks(s, rows: np.ndarray):
    """(image slice, positions in `rows`, those rows' offsets in the slice) for every stored
    image chunk holding one of `rows` (any order), in store order."""
    step = max(1, int(s.info.get("image_chunk") or 1024))
    order = np.argsort(rows, kind="stable")
    srt = rows[order]
    if not len(srt):
        return
    for lo in range(int(srt[0]) // step * step, int(srt[-1]) + 1, step):
        a, b = np.searchsorted(srt, [lo, lo + step])
        if a < b:
            yield slice(lo, lo + step), order[a:b], srt[a:b] - lo


def _read(s, layer: int, images: slice, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One image chunk's stored coordinates of the layer, kept to `rows` (offsets in the chunk):
    q [row, K, neuron] int8 and scale [row, neuron]."""
    cols, li = _layer_slice(s, layer)
    q = np.asarray(s.reader.lazy("neuron_coord")[images, cols])[rows]
    scale = np.asarray(s.reader.lazy("neuron_scale")[images, li])[rows]
    return q, scale


def _fit_mean(s, layer: int, fit: np.ndarray) -> np.ndarray:
    """mean_fit k_n of every neuron of the layer, streamed chunk by chunk: [neuron, K] float32."""
    total = 0.0
    for images, _, rows in _chunks(s, np.asarray(fit)):
        q, scale = _read(s, layer, images, rows)  # [row, K, neuron], [row, neuron]
        step = max(1, _BLOCK_BYTES // (4 * q[0].size))  # rows dequantised at once
        for a in range(0, len(q), step):
            k = so.dequantise(q[a : a + step], scale[a : a + step])  # [row, neuron, K]
            total = total + k.sum(axis=0, dtype=np.float64)
    return (total / len(fit)).astype(np.float32)


def neuron_deltas(s, sets: list[dict[int, np.ndarray]], fit, ev) -> list[np.ndarray]:
    """neuron_delta of each set of `sets` (layer -> neuron indices), in one streamed pass over
    each layer's stored coordinates plus one for its fit means: memory is one image chunk and
    the outputs, whatever the number of images. Returns [image, d_embed] per set (eval images)."""
    ev = np.asarray(ev)
    outs = [np.zeros((len(ev), s.model_record.d_embed), np.float32) for _ in sets]
    layers = sorted({l for chosen in sets for l, idx in chosen.items() if len(idx)})
    for layer in layers:
        mine = [(j, np.asarray(c[layer])) for j, c in enumerate(sets) if len(c.get(layer, ()))]
        mean = _fit_mean(s, layer, np.asarray(fit))  # [neuron, K]
        frames = [_frames(s, layer, idx) for _, idx in mine]  # [neuron, K, d_embed] each
        for images, pos, rows in _chunks(s, ev):
            q, scale = _read(s, layer, images, rows)  # [row, K, neuron], [row, neuron]
            for (j, idx), frame in zip(mine, frames, strict=True):
                centred = so.dequantise(q[:, :, idx], scale[:, idx]) - mean[idx]
                outs[j][pos] += np.einsum("ink,nke->ie", centred, frame, optimize=True)
    return outs


def neuron_delta(s, chosen: dict[int, np.ndarray], fit, ev) -> np.ndarray:
    """Σ_{n ∈ chosen} (k_n(i) - mean_fit k_n) @ Q_n for the eval images: [image, d_embed]
    (streamed: `neuron_deltas`)."""
    return neuron_deltas(s, [chosen], fit, ev)[0]


def _layers(layers: list[int]) -> str:
    return f"layer{'s' if len(layers) > 1 else ''} {', '.join(map(str, layers))}"


def check_layers(s, spec: str, described: list[int]) -> None:
    """One UserError naming the command to run when `spec` names a layer whose neurons were not
    built (the build command) or not described (`interpret --neurons`)."""
    from engine.core.layers import format_layers

    built = _neurons.neuron_layers(s)
    named = spec_layers(spec)
    unbuilt = [l for l in named if l not in built]
    n_layers = int(s.model_record.n_layers)
    if unbuilt:
        if not 0 <= max(unbuilt) < n_layers - 1:
            raise UserError(
                f"bad neuron spec {spec!r}: the model's neuron layers with later heads are "
                f"0-{n_layers - 2}"
            )
        want = format_layers(sorted({*built, *unbuilt}), n_layers)
        raise UserError(
            f"the neurons of {_layers(unbuilt)} of {s.path} were not built (built: "
            f"{_layers(built)}): rebuild the store "
            f"with `{s.reader.rebuild_command()} --neurons {want}`, then `python -m engine "
            f"interpret --store {s.path} --neurons all`"
        )
    missing = [l for l in named if l not in described]
    if missing:
        raise UserError(
            f"the neurons of {_layers(missing)} of {s.path} are not "
            f"described yet: run `python -m engine interpret --store {s.path} --neurons all`"
        )


def ablate_neurons(
    s, spec: str, *, tasks: str | None = None, random: int = 10, split: float = 0.5,
    seed: int = 0,
) -> NeuronAblation:  # fmt: skip
    """Mean-ablate the neurons `spec` names (`engine.core.neuron_spec`) and measure zero-shot
    accuracy on a held-out split, against `random` draws of as many random neurons per layer
    (`neuron_spec.random_neurons`: the layer's other neurons when it has as many)."""
    if random < 0:
        raise UserError("--random must be 0 or more")
    if not is_neuron_spec(spec):  # (a spec mixing neurons with heads raises here)
        raise UserError(f"{spec!r} names no neurons; {VALID_NEURON_FORMS}")
    t0 = time.perf_counter()
    if not _neurons.neuron_layers(s):
        raise UserError(
            f"{s.path} was built without neurons: rebuild it with `{s.reader.rebuild_command()} "
            f"--neurons L-L` (L: a layer), then `python -m engine interpret --store {s.path} "
            "--neurons all`"
        )
    stats = _neurons.neuron_table(s)
    significance = {int(l): g.sort_values("neuron").significance.to_numpy()
                    for l, g in stats.groupby("layer")}  # fmt: skip
    check_layers(s, spec, sorted(significance))
    keys, dirs = _neurons._directions(s)

    def text_scores(layer: int, text: str) -> np.ndarray:
        t = s.text_embeddings([text])[0]
        rows = keys[:, 0] == layer
        out = np.full(len(significance[layer]), -np.inf)
        out[keys[rows, 1]] = dirs[rows] @ t
        return out

    chosen = parse_neuron_spec(spec, significance, text_scores)
    output, _ = s.components()
    t_read = time.perf_counter() - t0
    ts = zeroshot_tasks(s, tasks)
    t_text = time.perf_counter() - t0 - t_read
    fit, ev = ablation.split(len(output), split, seed)
    base = np.asarray(output[ev], np.float32)
    sub = [t.subset(ev) for t in ts.tasks]
    before = [evaluate(base, t) for t in sub]
    rng = np.random.default_rng(seed)
    draws = [{l: random_neurons(rng, len(significance[l]), v) for l, v in chosen.items()}
             for _ in range(random)]  # fmt: skip
    deltas = neuron_deltas(s, [chosen, *draws], fit, ev)  # one pass over each layer
    after = [evaluate(base - deltas[0], t) for t in sub]
    rand = np.zeros((random, len(sub)))
    for d in range(random):
        emb = base - deltas[1 + d]
        rand[d] = [evaluate(emb, t).accuracy for t in sub]
    results = [
        TaskAblation(task=b.name, n_eval=b.n_labelled, before=b.accuracy, after=a.accuracy,
                     random=rand[:, j].copy(), class_names=b.class_names,
                     per_class_before=b.per_class_accuracy, per_class_after=a.per_class_accuracy,
                     per_class_count=b.per_class_count)
        for j, (b, a) in enumerate(zip(before, after, strict=True))
    ]  # fmt: skip
    sizes = {l: len(significance[l]) for l in chosen}
    baseline = check_neuron_baseline(chosen, sizes) if random > 0 else None
    timings = {"read_s": t_read, "text_s": t_text,
               "ablate_s": time.perf_counter() - t0 - t_read - t_text}  # fmt: skip
    timings = {k: round(v, 3) for k, v in timings.items()}
    return NeuronAblation(spec, chosen, len(fit), len(ev), results, ts.source, baseline, timings)
