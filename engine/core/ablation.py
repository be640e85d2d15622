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
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from engine.core.zeroshot import TaskResult, ZeroShotTask, score_predictions
from engine.errors import UserError

KINDS = ("head", "attn", "attn_bias", "mlp", "embed", "ln_bias")

# ---------------------------------------------------------------------------------------------
# components


@dataclass(frozen=True, eq=False)
class Component:
    """One named term of the decomposition. Exactly one representation is set:

    coord [image, d_head] + basis [d_head, d_embed]   (term = coord @ basis; kind "head")
    dense [image, d_embed]                             (term = dense)
    const [d_embed] (+ scale [image] or None)          (term = const * scale, or const for all)

    Arrays may be fp16 (they are read in float32) and may be views or memory maps.
    """

    name: str
    kind: str
    layer: int | None = None
    head: int | None = None
    coord: np.ndarray | None = None
    basis: np.ndarray | None = None
    dense: np.ndarray | None = None
    const: np.ndarray | None = None
    scale: np.ndarray | None = None

    def __post_init__(self) -> None:
        forms = [self.coord is not None, self.dense is not None, self.const is not None]
        if sum(forms) != 1:
            raise ValueError(f"{self.name}: give exactly one of coord+basis, dense, const")
        if self.coord is not None:
            if self.basis is None or self.coord.ndim != 2 or self.basis.ndim != 2:
                raise ValueError(
                    f"{self.name}: coord [image, d_head] needs basis [d_head, d_embed]"
                )
            if self.coord.shape[1] != self.basis.shape[0]:
                raise ValueError(
                    f"{self.name}: coord {self.coord.shape} and basis {self.basis.shape} disagree"
                )
        if self.dense is not None and self.dense.ndim != 2:
            raise ValueError(f"{self.name}: dense must be [image, d_embed]")
        if self.const is not None:
            if self.const.ndim != 1:
                raise ValueError(f"{self.name}: const must be [d_embed]")
            if self.scale is not None and self.scale.ndim != 1:
                raise ValueError(f"{self.name}: scale must be [image]")

    @property
    def form(self) -> str:
        """'coord', 'dense' or 'const'."""
        if self.coord is not None:
            return "coord"
        return "dense" if self.dense is not None else "const"

    @property
    def d_embed(self) -> int:
        if self.coord is not None:
            return int(self.basis.shape[1])
        return int((self.dense if self.dense is not None else self.const).shape[-1])

    @property
    def n_images(self) -> int | None:
        """Images the term covers (None for a term that is the same for every image)."""
        for a in (self.coord, self.dense, self.scale):
            if a is not None:
                return int(a.shape[0])
        return None

    @property
    def width(self) -> int:
        """Columns this term adds to a batched ablation product (d_head for a head)."""
        return int(self.coord.shape[1]) if self.coord is not None else self.d_embed

    def term(
        self, idx: np.ndarray | slice = slice(None), n_images: int | None = None
    ) -> np.ndarray:
        """The term for images `idx`: [image, d_embed] float32 (materialised; tests, verify).
        A term that is the same for every image needs `n_images` when `idx` is a slice."""
        if self.coord is not None:
            return np.asarray(self.coord[idx], np.float32) @ np.asarray(self.basis, np.float32)
        if self.dense is not None:
            return np.asarray(self.dense[idx], np.float32)
        c = np.asarray(self.const, np.float32)
        if self.scale is None:
            if isinstance(idx, slice):
                if n_images is None:
                    raise ValueError(f"{self.name}: a constant term needs n_images for a slice")
                n = len(range(n_images)[idx])
            else:
                n = len(idx)
            return np.broadcast_to(c, (n, c.shape[0])).copy()
        return np.asarray(self.scale[idx], np.float32)[:, None] * c[None]


def _sort_key(name: str) -> tuple:
    """Canonical order: embed, then per layer heads, attn, attn_bias, mlp; ln_bias last."""
    if name == "embed":
        return (-1, 0, 0, name)
    if name == "ln_bias":
        return (math.inf, 0, 0, name)
    m = _HEAD.fullmatch(name)
    if m:
        return (int(m[1]), 0, int(m[2]), name)
    m = _LAYER_TERM.fullmatch(name)
    if m:
        return (int(m[1]), {"attn": 1, "attn_bias": 2, "mlp": 3}[m[2]], 0, name)
    return (math.inf, 1, 0, name)


class ComponentSet:
    """The named components of one decomposition (all over the same images and d_embed).

    n_layers: the model's layer count (default: 1 + the largest layer of any component).
    """

    def __init__(self, components: Iterable[Component], n_layers: int | None = None) -> None:
        comps = list(components)
        self._by_name: dict[str, Component] = {}
        for c in comps:
            if c.name in self._by_name:
                raise ValueError(f"duplicate component {c.name!r}")
            if c.kind not in KINDS:
                raise ValueError(f"{c.name}: unknown kind {c.kind!r} (one of {', '.join(KINDS)})")
            self._by_name[c.name] = c
        if not comps:
            raise ValueError("a ComponentSet needs at least one component")
        d = {c.d_embed for c in comps}
        n = {c.n_images for c in comps} - {None}
        if len(d) != 1 or len(n) > 1:
            raise ValueError(f"components disagree: d_embed {sorted(d)}, images {sorted(n)}")
        self.d_embed = d.pop()
        self.n_images = n.pop() if n else None
        layers = [c.layer for c in comps if c.layer is not None]
        self.n_layers = n_layers if n_layers is not None else (max(layers) + 1 if layers else 0)

    def __len__(self) -> int:
        return len(self._by_name)

    def __iter__(self) -> Iterator[Component]:
        return iter(self._by_name.values())

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> Component:
        return self._by_name[name]

    @property
    def names(self) -> list[str]:
        return sorted(self._by_name, key=_sort_key)

    @property
    def heads(self) -> list[Component]:
        return sorted((c for c in self if c.kind == "head"), key=lambda c: _sort_key(c.name))

    @property
    def head_layers(self) -> list[int]:
        """Layers whose heads are stored, ascending."""
        return sorted({c.layer for c in self.heads})

    def total(self, idx: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Sum of every term for images `idx`: [image, d_embed] (equals output when complete)."""
        return sum(c.term(idx, self.n_images) for c in self)

    def select(
        self,
        spec: str,
        labels: Mapping[tuple[int, int], str] | None = None,
        normalize: Callable[[str], str] | None = None,
    ) -> list[str]:
        """Component names for an ablation spec (see `parse_ablation_spec`); every name must be
        present in this set, else UserError."""
        names = parse_ablation_spec(
            spec,
            [(c.layer, c.head) for c in self.heads],
            labels or {},
            self.n_layers,
            self.head_layers,
            normalize=normalize,
        )
        missing = [n for n in names if n not in self]
        if missing:
            more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
            raise UserError(
                f"ablation spec {spec!r} needs {', '.join(missing[:3])}{more}, "
                "which this decomposition does not hold"
            )
        return names

    @classmethod
    def from_arrays(
        cls,
        *,
        coord: np.ndarray | None = None,
        basis: np.ndarray | None = None,
        head_layers: Sequence[int] = (),
        mlp: np.ndarray | None = None,
        attn: np.ndarray | None = None,
        attn_layers: Sequence[int] = (),
        embed: np.ndarray | None = None,
        attn_bias: np.ndarray | None = None,
        std: np.ndarray | None = None,
        ln_bias: np.ndarray | None = None,
        n_layers: int | None = None,
    ) -> ComponentSet:
        """Components from the store's arrays (every argument optional):

        coord [image, layer, head, d_head] + basis [layer, head, d_head, d_embed] for the layers
        `head_layers` (heads `L{l}H{h}`); mlp [image, layer, d_embed] for layers 0.. (`L{l}.mlp`);
        attn [image, layer, d_embed] for `attn_layers` (`L{l}.attn`); embed [image, d_embed];
        attn_bias [layer, d_embed] for `head_layers`, scaled per image by 1/std, std [image]
        (`L{l}.attn_bias`); ln_bias [d_embed] (constant).
        """
        comps: list[Component] = []
        if coord is not None:
            if basis is None or coord.ndim != 4 or basis.ndim != 4:
                raise ValueError(
                    "coord [image, layer, head, d_head] needs basis [layer, head, d_head, d_embed]"
                )
            if len(head_layers) != coord.shape[1] or basis.shape[:2] != coord.shape[1:3]:
                raise ValueError("coord, basis and head_layers disagree on layers/heads")
            for li, layer in enumerate(head_layers):
                for h in range(coord.shape[2]):
                    comps.append(
                        Component(
                            f"L{layer}H{h}",
                            "head",
                            layer,
                            h,
                            coord=coord[:, li, h],
                            basis=basis[li, h],
                        )
                    )
        if mlp is not None:
            comps += [
                Component(f"L{l}.mlp", "mlp", l, dense=mlp[:, l]) for l in range(mlp.shape[1])
            ]
        if attn is not None:
            if len(attn_layers) != attn.shape[1]:
                raise ValueError("attn and attn_layers disagree")
            comps += [
                Component(f"L{l}.attn", "attn", l, dense=attn[:, i])
                for i, l in enumerate(attn_layers)
            ]
        if embed is not None:
            comps.append(Component("embed", "embed", dense=embed))
        if attn_bias is not None:
            if std is None or len(head_layers) != attn_bias.shape[0]:
                raise ValueError("attn_bias [layer, d_embed] needs std [image] and head_layers")
            inv = 1.0 / np.asarray(std, np.float64)
            comps += [
                Component(f"L{l}.attn_bias", "attn_bias", l, const=attn_bias[i], scale=inv)
                for i, l in enumerate(head_layers)
            ]
        if ln_bias is not None:
            comps.append(Component("ln_bias", "ln_bias", const=np.asarray(ln_bias)))
        return cls(comps, n_layers=n_layers)


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
    cached; `ablate(names)` returns output' for the eval images [eval_image, d_embed]."""

    def __init__(
        self,
        output: np.ndarray,
        components: ComponentSet,
        fit_idx: np.ndarray,
        eval_idx: np.ndarray,
    ) -> None:
        self.output = output
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
        other = Ablator(self.output, self.components, self.fit_idx, eval_idx)
        other._means = self._means
        return other

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
                x[:, o : o + w] = c.coord[ev]
                x[:, o : o + w] -= self._mean(c)
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
# spec parsing

VALID_FORMS = (
    "valid forms: L10H3,L11H7 | label:NAME | layers:8-11 | mlp | mlp:8-11 | embed | "
    "all-but-last:K | all | none | L3.mlp, L3.attn, L9.attn_bias, ln_bias; combine with +"
)
_HEAD = re.compile(r"L(\d+)H(\d+)")
_LAYER_TERM = re.compile(r"L(\d+)\.(mlp|attn_bias|attn)")
_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


def _bad(atom: str, why: str) -> UserError:
    return UserError(f"bad ablation spec {atom!r}: {why}; {VALID_FORMS}")


def _range(atom: str, text: str, lo: int, hi: int) -> range:
    m = _RANGE.fullmatch(text.strip())
    if not m:
        raise _bad(atom, "a layer range is A or A-B")
    a = int(m[1])
    b = int(m[2]) if m[2] is not None else a
    if a > b or a < lo or b > hi:
        raise _bad(atom, f"layers must lie in {lo}-{hi}, low to high")
    return range(a, b + 1)


def _default_normalize(label: str) -> str:
    return " ".join(str(label).strip().casefold().split())


def parse_ablation_spec(
    text: str,
    available_heads: Collection[tuple[int, int]],
    labels: Mapping[tuple[int, int], str],
    n_layers: int,
    stored_layers: Collection[int] | None = None,
    *,
    normalize: Callable[[str], str] | None = None,
) -> list[str]:
    """Component names (canonical order, no duplicates) for an ablation spec.

    Atoms, joined by `+` or `,`: a head `L10H3`; `label:NAME` (heads whose label matches after
    `normalize`, default case-folding); `layers:A-B` (every stored head of those layers);
    `mlp` or `mlp:A-B`; `embed`; `all-but-last:K` (everything but the heads of the last K layers:
    every MLP, the embedding, and the attention of the other layers — their heads and out_proj
    bias terms where heads are stored, else their whole attention term; the constant ln_bias and
    the last K layers' own out_proj bias terms stay); `all` (every term, ln_bias included);
    `none`; and the canonical names `L3.mlp`, `L3.attn`, `L9.attn_bias`, `ln_bias`.
    Unknown forms, heads or labels raise UserError with one line naming the valid forms.
    """
    heads = {(int(l), int(h)) for l, h in available_heads}
    stored = sorted({l for l, _ in heads} if stored_layers is None else set(stored_layers))
    norm = normalize or _default_normalize
    last = n_layers - 1
    out: list[str] = []
    atoms = [a.strip() for a in re.split(r"[+,]", text or "")]
    if not any(atoms):
        raise _bad(text or "", "empty spec")
    for atom in atoms:
        low = atom.lower()
        if not atom:
            raise _bad(text, "empty item between separators")
        if low == "none":
            continue
        if low in ("embed", "ln_bias"):
            out.append(low)
        elif m := _HEAD.fullmatch(atom):
            key = (int(m[1]), int(m[2]))
            if key not in heads:
                raise _bad(atom, f"not a stored head (stored layers: {_fmt_layers(stored)})")
            out.append(f"L{key[0]}H{key[1]}")
        elif m := _LAYER_TERM.fullmatch(atom):
            l, kind = int(m[1]), m[2]
            if l > last:
                raise _bad(atom, f"the model has layers 0-{last}")
            if kind == "attn" and l in stored:
                raise _bad(atom, f"layer {l}'s heads are stored: name them or use layers:{l}")
            if kind == "attn_bias" and l not in stored:
                raise _bad(atom, f"layer {l}'s bias is inside L{l}.attn (its heads are not stored)")
            out.append(f"L{l}.{kind}")
        elif low.startswith("label:"):
            want = norm(atom[6:])
            hit = sorted(k for k, v in labels.items() if k in heads and norm(v) == want)
            if not hit:
                known = sorted({norm(v) for k, v in labels.items() if k in heads})
                shown = ", ".join(known[:8]) + (" …" if len(known) > 8 else "")
                raise _bad(atom, f"no stored head has this label (labels: {shown or 'none'})")
            out += [f"L{l}H{h}" for l, h in hit]
        elif low.startswith("layers:"):
            if not stored:
                raise _bad(atom, "no heads are stored")
            r = _range(atom, atom[7:], 0, last)
            off = [l for l in r if l not in stored]
            if off:
                raise _bad(atom, f"heads of layer {off[0]} are not stored ({_fmt_layers(stored)})")
            out += [f"L{l}H{h}" for l, h in sorted(heads) if l in r]
        elif low == "mlp" or low.startswith("mlp:"):
            r = range(n_layers) if low == "mlp" else _range(atom, atom[4:], 0, last)
            out += [f"L{l}.mlp" for l in r]
        elif low.startswith("all-but-last:"):
            try:
                k = int(atom[13:])
            except ValueError:
                raise _bad(atom, "K must be a whole number of layers") from None
            if not 1 <= k <= n_layers:
                raise _bad(atom, f"K must lie in 1-{n_layers}")
            out += ["embed"] + [f"L{l}.mlp" for l in range(n_layers)]
            for l in range(n_layers - k):
                if l in stored:
                    out += [f"L{l}H{h}" for ll, h in sorted(heads) if ll == l]
                    out.append(f"L{l}.attn_bias")
                else:
                    out.append(f"L{l}.attn")
        elif low == "all":
            out += ["embed", "ln_bias"] + [f"L{l}.mlp" for l in range(n_layers)]
            out += [f"L{l}H{h}" for l, h in sorted(heads)]
            out += [f"L{l}.attn_bias" if l in stored else f"L{l}.attn" for l in range(n_layers)]
        else:
            raise _bad(atom, "unknown form")
    return sorted(dict.fromkeys(out), key=_sort_key)


def format_ablation_spec(names: Iterable[str]) -> str:
    """A spec that parses back to `names` (canonical order): comma-joined names, or 'none'."""
    names = sorted(dict.fromkeys(names), key=_sort_key)
    return ",".join(names) if names else "none"


def _fmt_layers(layers: Sequence[int]) -> str:
    if not layers:
        return "none"
    if list(layers) == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])
    return ",".join(map(str, layers))


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
        out.append(sorted(names, key=_sort_key))
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
    ablate_names = sorted(dict.fromkeys(ablate_names), key=_sort_key)
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
