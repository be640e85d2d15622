"""Exact mean-ablation of direct effects on an additive decomposition (math only: numpy, no I/O).

The image embedding is a sum of named terms, exactly: `output[i] = Σ_c term_c[i]`. A component's
*direct effect* is mean-ablated by replacing its term with the term's mean over a fit split:

    output'[i] = output[i] − Σ_{c ∈ A} (term_c[i] − mean_{j ∈ fit} term_c[j])      for i ∈ eval

with the means taken over a split of the images that is disjoint from the evaluated one (`split`).
Nothing is recomputed downstream: the ln_post standard deviation std[i] is part of each stored
term (every term is already divided by its image's std) and stays fixed, as in the TextSpan
paper's definition of direct effects. Ablating every component, constants included, gives every
evaluated image the fit-mean embedding.

How a term is held (`Component`):

- a head, in its own coordinates: `term = coord @ basis`, coord [image, d_head], basis
  [d_head, d_embed] (orthonormal rows in the store; any basis works here). Ablating k heads is one
  product of the centred coordinates [image, k*d_head] with the stacked bases [k*d_head, d_embed].
- a dense term [image, d_embed]: each layer's MLP (`L{l}.mlp`), the attention of a layer whose
  heads are not stored (`L{l}.attn`: its heads summed plus the out_proj bias), the embedding
  (`embed`).
- a constant direction: `term = const[None] * scale[:, None]`, const [d_embed], scale [image]
  (1/std for a stored layer's out_proj bias, `L{l}.attn_bias`), or scale None for a term that is
  the same for every image (`ln_bias`, ln_post's bias; ablating it changes nothing).

Zero-shot accuracy under ablation (`run_ablation`) uses the fact that the predicted class is the
argmax of `output' · class_emb`, and the image norm (a positive per-image factor) does not change
it. The unablated logits are computed once; an ablation of heads alone subtracts
`(coord − mean) @ (basis @ class_embᵀ)` when that is cheaper than rebuilding `output'` and doing
one product with the class embeddings (chosen by the flop count).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from engine.core.ablation_spec import (
    VALID_FORMS,
    format_ablation_spec,
    parse_ablation_spec,
    sort_key,
)
from engine.core.components import Component, ComponentSet
from engine.core.zeroshot import TaskResult, ZeroShotTask, score_predictions
from engine.errors import UserError

__all__ = [
    "AblationResult",
    "AblationScorer",
    "Ablator",
    "Component",
    "ComponentSet",
    "TaskAblation",
    "VALID_FORMS",
    "format_ablation_spec",
    "parse_ablation_spec",
    "mean_ablate",
    "random_baseline",
    "run_ablation",
    "split",
]

# ---------------------------------------------------------------------------------------------
# splits


def split(n_images: int, fraction: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic disjoint split of range(n_images): (fit_idx, eval_idx), each ascending.

    `fraction` of the images (rounded, at least one, leaving at least one) fit the means; the
    rest are evaluated. The same (n_images, fraction, seed) always gives the same split.
    """
    if n_images < 2:
        raise UserError(f"an ablation needs at least 2 images to split; got {n_images}")
    if not 0.0 < fraction < 1.0:
        raise UserError(f"split fraction must lie strictly between 0 and 1; got {fraction}")
    n_fit = min(max(int(round(fraction * n_images)), 1), n_images - 1)
    perm = np.random.default_rng(seed).permutation(n_images)
    return np.sort(perm[:n_fit]), np.sort(perm[n_fit:])


# ---------------------------------------------------------------------------------------------
# ablation


class Ablator:
    """Mean-ablation over one (fit, eval) split: means are computed once per component and
    cached; `ablate(names)` returns output' for the eval images [eval_image, d_embed].

    The centred float32 eval coordinates of each head used are kept too, up to `cache_bytes`
    (default 512 MiB; 0 disables), so repeated ablations (random baselines) skip the strided
    gather from the stored [image, layer, head, d_head] array.
    """

    def __init__(
        self,
        output: np.ndarray,
        components: ComponentSet,
        fit_idx: np.ndarray,
        eval_idx: np.ndarray,
        *,
        cache_bytes: int = 512 << 20,
    ) -> None:
        self.output = output
        self.cache_bytes = cache_bytes
        self._coords: dict[str, np.ndarray] = {}
        self._cached = 0
        self.components = components
        self.fit_idx = np.asarray(fit_idx, np.int64)
        self.eval_idx = np.asarray(eval_idx, np.int64)
        if output.ndim != 2 or output.shape[1] != components.d_embed:
            raise ValueError(f"output must be [image, {components.d_embed}]; got {output.shape}")
        if components.n_images is not None and output.shape[0] != components.n_images:
            raise ValueError(
                f"output has {output.shape[0]} images, the components {components.n_images}"
            )
        if len(self.fit_idx) == 0 or len(self.eval_idx) == 0:
            raise ValueError("both the fit and the eval split need images")
        if np.intersect1d(self.fit_idx, self.eval_idx).size:
            raise ValueError("fit and eval splits overlap; means must come from other images")
        self._means: dict[str, np.ndarray] = {}

    def with_eval(self, eval_idx: np.ndarray) -> Ablator:
        """The same fit split (and cached means) over other eval images."""
        other = Ablator(
            self.output, self.components, self.fit_idx, eval_idx, cache_bytes=self.cache_bytes
        )
        other._means = self._means
        return other

    def _centred_coord(self, c: Component) -> np.ndarray:
        """coord[eval] − fit mean: [eval_image, d_head] float32 (cached within the budget)."""
        v = self._coords.get(c.name)
        if v is None:
            v = np.asarray(c.coord[self.eval_idx], np.float32)
            v -= self._mean(c)
            if self._cached + v.nbytes <= self.cache_bytes:
                self._coords[c.name] = v
                self._cached += v.nbytes
        return v

    def _mean(self, c: Component) -> np.ndarray:
        """Fit-split mean of the stored quantity: coord [d_head], dense [d_embed], scale []."""
        m = self._means.get(c.name)
        if m is None:
            src = c.coord if c.coord is not None else c.dense if c.dense is not None else c.scale
            m = np.asarray(src[self.fit_idx], np.float64).mean(axis=0).astype(np.float32)
            self._means[c.name] = m
        return m

    def parts(
        self, names: Iterable[str]
    ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """The ablation's centred pieces over the eval images:

        X [eval_image, k*d_head] centred head coordinates, B [k*d_head, d_embed] stacked bases
        (None, None without heads), and D [eval_image, d_embed] the summed centred dense and
        constant terms (None without any). The ablation delta is X @ B + D.
        """
        comps = [self.components[n] for n in dict.fromkeys(names)]
        heads = [c for c in comps if c.form == "coord"]
        rest = [c for c in comps if c.form != "coord"]
        ev = self.eval_idx
        x = b = d = None
        if heads:
            widths = [c.width for c in heads]
            x = np.empty((len(ev), sum(widths)), np.float32)
            b = np.empty((sum(widths), self.components.d_embed), np.float32)
            o = 0
            for c, w in zip(heads, widths, strict=True):
                x[:, o : o + w] = self._centred_coord(c)
                b[o : o + w] = c.basis
                o += w
        for c in rest:
            if c.form == "const" and c.scale is None:
                continue  # the same for every image: term − mean = 0
            if d is None:
                d = np.zeros((len(ev), self.components.d_embed), np.float32)
            if c.form == "dense":
                d += c.dense[ev]
                d -= self._mean(c)
            else:
                s = np.asarray(c.scale[ev], np.float32) - self._mean(c)
                d += s[:, None] * np.asarray(c.const, np.float32)[None]
        return x, b, d

    def delta(self, names: Iterable[str]) -> np.ndarray:
        """Σ (term − fit mean) over `names` for the eval images: [eval_image, d_embed]."""
        x, b, d = self.parts(names)
        out = np.zeros((len(self.eval_idx), self.components.d_embed), np.float32)
        if x is not None:
            out += x @ b
        if d is not None:
            out += d
        return out

    def ablate(self, names: Iterable[str]) -> np.ndarray:
        """output' for the eval images: [eval_image, d_embed] float32."""
        return np.asarray(self.output[self.eval_idx], np.float32) - self.delta(names)


def mean_ablate(
    output: np.ndarray,
    components: ComponentSet,
    ablate_names: Iterable[str],
    fit_idx: np.ndarray,
    eval_idx: np.ndarray,
) -> np.ndarray:
    """output' = output − Σ_c (term_c − mean_fit(term_c)) over the eval images.

    output [image, d_embed]; returns [eval_image, d_embed] float32, rows in eval_idx order.
    """
    return Ablator(output, components, fit_idx, eval_idx).ablate(ablate_names)


# ---------------------------------------------------------------------------------------------
# random baseline


def random_baseline(
    components: ComponentSet,
    like: Sequence[str],
    *,
    draws: int = 10,
    seed: int = 0,
) -> list[list[str]]:
    """`draws` random stand-ins for the ablation `like`: the heads in `like` are replaced by as
    many random heads from each of the same layers (drawn among that layer's other heads; from
    all of its heads if it has too few others); the non-head names of `like` are kept in every
    draw. Deterministic in `seed`. Returns [] when `like` holds no heads."""
    like = list(dict.fromkeys(like))
    per_layer: dict[int, int] = {}
    keep: list[str] = []
    for n in like:
        c = components[n]
        if c.kind == "head":
            per_layer[c.layer] = per_layer.get(c.layer, 0) + 1
        else:
            keep.append(n)
    if not per_layer or draws <= 0:
        return []
    chosen = set(like)
    pools = {}
    for layer in per_layer:
        layer_heads = [c.name for c in components.heads if c.layer == layer]
        others = [n for n in layer_heads if n not in chosen]
        pools[layer] = others if len(others) >= per_layer[layer] else layer_heads
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        names = list(keep)
        for layer in sorted(per_layer):
            pool = pools[layer]
            pick = rng.choice(len(pool), size=per_layer[layer], replace=False)
            names += [pool[i] for i in pick]
        out.append(sorted(names, key=sort_key))
    return out


# ---------------------------------------------------------------------------------------------
# zero-shot accuracy under ablation


class AblationScorer:
    """Zero-shot accuracy of several tasks under many ablations over one split.

    The eval images labelled in at least one task are scored; the class embeddings of all tasks
    are stacked into one [d_embed, class] matrix, and the unablated logits [image, class] are
    computed once.
    """

    def __init__(self, ablator: Ablator, tasks: Sequence[ZeroShotTask]) -> None:
        if not tasks:
            raise ValueError("run_ablation needs at least one task")
        n = ablator.output.shape[0]
        for t in tasks:
            if t.labels.shape[0] != n:
                raise ValueError(f"task {t.name!r} has {t.labels.shape[0]} labels for {n} images")
            if t.class_emb.shape[1] != ablator.components.d_embed:
                raise ValueError(f"task {t.name!r}: class_emb d_embed differs from the output's")
        labelled = np.zeros(len(ablator.eval_idx), bool)
        for t in tasks:
            labelled |= t.labelled[ablator.eval_idx]
        keep = np.flatnonzero(labelled)
        if keep.size == 0:
            raise ValueError("no eval image is labelled in any task")
        # score only labelled eval images: an Ablator over that subset of eval_idx
        self.ablator = ablator.with_eval(ablator.eval_idx[keep])
        self.tasks = [t.subset(self.ablator.eval_idx) for t in tasks]
        for t in self.tasks:
            if not t.labelled.any():
                raise ValueError(f"task {t.name!r} has no labelled images in the eval split")
        self.cls = np.ascontiguousarray(np.concatenate([t.class_emb for t in self.tasks]).T)
        self.offsets = np.cumsum([0] + [t.n_classes for t in self.tasks])
        x = np.asarray(ablator.output[self.ablator.eval_idx], np.float32)
        self.base_logits = x @ self.cls  # [image, class]

    @property
    def n_eval(self) -> int:
        return len(self.ablator.eval_idx)

    def logits(self, names: Sequence[str]) -> np.ndarray:
        """[image, class] logits of the ablated embeddings (unnormalised: same argmax)."""
        names = list(names)
        if not names:
            return self.base_logits
        x, b, d = self.ablator.parts(names)
        if x is None and d is None:
            return self.base_logits  # only constants: nothing changes
        de, nc = self.cls.shape
        if d is None and x.shape[1] * nc <= x.shape[1] * de + de * nc:
            return self.base_logits - x @ (b @ self.cls)  # in coordinates
        emb = np.asarray(self.ablator.output[self.ablator.eval_idx], np.float32)
        if x is not None:
            emb -= x @ b
        if d is not None:
            emb -= d
        return emb @ self.cls

    def score(self, names: Sequence[str]) -> list[TaskResult]:
        lg = self.logits(names)
        return [
            score_predictions(lg[:, a:b].argmax(axis=1), t)
            for t, a, b in zip(self.tasks, self.offsets[:-1], self.offsets[1:], strict=True)
        ]


@dataclass(frozen=True)
class TaskAblation:
    """One task's accuracy on the eval images before and after the ablation.

    random [draw]: accuracy after each random-baseline draw (empty without a baseline);
    random_best: the draw with the highest accuracy after ablation (the smallest drop;
    "top-random"); per-class arrays are [class] (NaN where the eval split has no image).
    """

    task: str
    n_eval: int
    before: float
    after: float
    random: np.ndarray
    class_names: tuple[str, ...]
    per_class_before: np.ndarray
    per_class_after: np.ndarray
    per_class_count: np.ndarray

    @property
    def drop(self) -> float:
        return self.before - self.after

    @property
    def random_mean(self) -> float:
        return float(self.random.mean()) if self.random.size else math.nan

    @property
    def random_sd(self) -> float:
        return (
            float(self.random.std(ddof=1))
            if self.random.size > 1
            else (0.0 if self.random.size else math.nan)
        )

    @property
    def random_best(self) -> float:
        return float(self.random.max()) if self.random.size else math.nan

    @property
    def random_mean_drop(self) -> float:
        return self.before - self.random_mean

    def to_dict(self) -> dict:
        def f(x):
            return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)

        return {
            "task": self.task,
            "n_eval": self.n_eval,
            "before": self.before,
            "after": self.after,
            "drop": self.drop,
            "random": [float(a) for a in self.random],
            "random_mean": f(self.random_mean),
            "random_sd": f(self.random_sd),
            "random_best": f(self.random_best),
            "random_mean_drop": f(self.random_mean_drop),
            "per_class": [
                {"class": c, "count": int(n), "before": f(float(b)), "after": f(float(a))}
                for c, n, b, a in zip(
                    self.class_names,
                    self.per_class_count,
                    self.per_class_before,
                    self.per_class_after,
                    strict=True,
                )
            ],
        }


@dataclass(frozen=True)
class AblationResult:
    """An ablation's effect on every task; the split sizes and the random draws used."""

    ablated: tuple[str, ...]
    random_draws: tuple[tuple[str, ...], ...]
    n_fit: int
    n_eval: int
    seed: int
    tasks: tuple[TaskAblation, ...]

    def task(self, name: str) -> TaskAblation:
        for t in self.tasks:
            if t.task == name:
                return t
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {
            "ablated": list(self.ablated),
            "spec": format_ablation_spec(self.ablated),
            "random_draws": [list(d) for d in self.random_draws],
            "n_fit": self.n_fit,
            "n_eval": self.n_eval,
            "seed": self.seed,
            "tasks": [t.to_dict() for t in self.tasks],
        }


def run_ablation(
    output: np.ndarray,
    components: ComponentSet,
    ablate_names: Sequence[str],
    tasks: Sequence[ZeroShotTask],
    fit_idx: np.ndarray,
    eval_idx: np.ndarray,
    *,
    random_draws: int = 10,
    seed: int = 0,
) -> AblationResult:
    """Zero-shot accuracy per task before/after mean-ablating `ablate_names`, with a random-head
    baseline of `random_draws` draws (`random_baseline`). Task labels are over all images
    [image]; only eval images labelled in a task are scored for it."""
    ablate_names = sorted(dict.fromkeys(ablate_names), key=sort_key)
    ablator = Ablator(output, components, fit_idx, eval_idx)
    scorer = AblationScorer(ablator, tasks)
    before = scorer.score([])
    after = scorer.score(ablate_names)
    draws = random_baseline(components, ablate_names, draws=random_draws, seed=seed)
    rand = [scorer.score(d) for d in draws]
    out = []
    for i, (b, a) in enumerate(zip(before, after, strict=True)):
        out.append(
            TaskAblation(
                task=b.name,
                n_eval=b.n_labelled,
                before=b.accuracy,
                after=a.accuracy,
                random=np.array([r[i].accuracy for r in rand], np.float64),
                class_names=b.class_names,
                per_class_before=b.per_class_accuracy,
                per_class_after=a.per_class_accuracy,
                per_class_count=b.per_class_count,
            )
        )
    return AblationResult(
        ablated=tuple(ablate_names),
        random_draws=tuple(tuple(d) for d in draws),
        n_fit=len(ablator.fit_idx),
        n_eval=scorer.n_eval,
        seed=seed,
        tasks=tuple(out),
    )
