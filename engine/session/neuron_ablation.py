"""Mean-ablation of MLP neurons' second-order effects, with zero-shot before/after and a
random-neuron baseline (what `python -m engine ablate --ablate L6N12|neurons:L6:...` runs).

Neuron n's stored effect on image i is `k_n(i) @ Q_n` (int8 frame coordinates, `build
--neurons`). Mean-ablating a set S replaces each effect by its mean over the fitting images:
embedding_after(i) = output(i) - Σ_{n ∈ S} (k_n(i) - mean_fit k_n) @ Q_n, evaluated on the
held-out split, against `random` draws of as many random neurons per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.core import ablation
from engine.core import second_order as so
from engine.core.neuron_spec import parse_neuron_spec
from engine.core.zeroshot import evaluate
from engine.session import neurons as _neurons
from engine.session.ablation import zeroshot_tasks


@dataclass
class NeuronTaskResult:
    task: str
    before: float
    after: float
    random: np.ndarray  # [draw] accuracy after ablating random neurons

    @property
    def drop(self) -> float:
        return self.before - self.after

    def to_dict(self) -> dict:
        r = self.random
        return {"task": self.task, "before": self.before, "after": self.after, "drop": self.drop,
                "random_mean": float(r.mean()) if r.size else None,
                "random_sd": float(r.std()) if r.size else None}  # fmt: skip


@dataclass
class NeuronAblation:
    spec: str
    neurons: dict[int, np.ndarray]  # layer -> ablated neuron indices
    n_fit: int
    n_eval: int
    tasks: list[NeuronTaskResult]

    @property
    def n_ablated(self) -> int:
        return int(sum(len(v) for v in self.neurons.values()))

    def to_dict(self) -> dict:
        return {"spec": self.spec, "n_ablated": self.n_ablated,
                "neurons": {str(l): v.tolist() for l, v in self.neurons.items()},
                "n_fit": self.n_fit, "n_eval": self.n_eval,
                "tasks": [t.to_dict() for t in self.tasks]}  # fmt: skip


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


def _coords(s, layer: int) -> np.ndarray:
    """Every image's frame coordinates of the layer's neurons: [image, neuron, K] float32."""

    def load():
        built = _neurons.neuron_layers(s)
        n_layers, n_heads = int(s.info["n_layers"]), s.n_heads
        off = sum((n_layers - 1 - l) * n_heads for l in built if l < layer)
        k = (n_layers - 1 - layer) * n_heads
        q = s.reader.lazy("neuron_coord")[:, off : off + k]  # [image, K, neuron] int8
        scale = s.reader.lazy("neuron_scale")[:, built.index(layer)]  # [image, neuron]
        return so.dequantise(np.asarray(q), np.asarray(scale))

    return s._once.get(("neuron_coords", int(layer)), load)


def neuron_delta(s, chosen: dict[int, np.ndarray], fit, ev) -> np.ndarray:
    """Σ_{n ∈ chosen} (k_n(i) - mean_fit k_n) @ Q_n for the eval images: [image, d_embed]."""
    out = np.zeros((len(ev), s.model_record.d_embed), np.float32)
    for layer, idx in chosen.items():
        if not len(idx):
            continue
        k = _coords(s, layer)[:, idx]  # [image, neuron, K]
        centred = k[ev] - k[fit].mean(axis=0, keepdims=True)
        out += np.einsum("ink,nke->ie", centred, _frames(s, layer, idx), optimize=True)
    return out


def ablate_neurons(
    s, spec: str, *, tasks: str | None = None, random: int = 10, split: float = 0.5,
    seed: int = 0,
) -> NeuronAblation:  # fmt: skip
    """Mean-ablate the neurons `spec` names (`engine.core.neuron_spec`)."""
    stats = _neurons.neuron_table(s)
    significance = {int(l): g.sort_values("neuron").significance.to_numpy()
                    for l, g in stats.groupby("layer")}  # fmt: skip
    keys, dirs = _neurons._directions(s)

    def text_scores(layer: int, text: str) -> np.ndarray:
        t = s.text_embeddings([text])[0]
        rows = keys[:, 0] == layer
        out = np.full(len(significance[layer]), -np.inf)
        out[keys[rows, 1]] = dirs[rows] @ t
        return out

    chosen = parse_neuron_spec(spec, significance, text_scores)
    output, _ = s.components()
    ts = zeroshot_tasks(s, tasks)
    fit, ev = ablation.split(len(output), split, seed)
    base = np.asarray(output[ev], np.float32)
    sub = [t.subset(ev) for t in ts.tasks]
    before = [evaluate(base, t).accuracy for t in sub]
    after_emb = base - neuron_delta(s, chosen, fit, ev)
    after = [evaluate(after_emb, t).accuracy for t in sub]
    rng = np.random.default_rng(seed)
    rand = np.zeros((random, len(sub)))
    for d in range(random):
        draw = {l: np.sort(rng.choice(len(significance[l]), len(v), replace=False))
                for l, v in chosen.items()}  # fmt: skip
        emb = base - neuron_delta(s, draw, fit, ev)
        rand[d] = [evaluate(emb, t).accuracy for t in sub]
    results = [NeuronTaskResult(t.name, before[j], after[j], rand[:, j])
               for j, t in enumerate(sub)]  # fmt: skip
    return NeuronAblation(spec, chosen, len(fit), len(ev), results)
