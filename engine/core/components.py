"""The decomposition as named components (math only: numpy, no I/O).

A component is one term of the exact additive decomposition of the image embedding, held in the
cheapest exact form: a head in its own coordinates (term = coord @ basis, coord [image, d_head],
basis [d_head, d_embed] with orthonormal rows in the store), a dense term [image, d_embed] (each
layer's MLP, the attention of a layer whose heads are not stored, the embedding), or a constant
direction const [d_embed] scaled per image (1/std for a stored layer's out_proj bias) or not at
all (ln_post's bias). Names follow `engine.core.ablation_spec`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from engine.core.ablation_spec import parse_ablation_spec, sort_key
from engine.core.layers import head_name, term_name
from engine.errors import UserError

KINDS = ("head", "attn", "attn_bias", "mlp", "embed", "ln_bias", "pool_mlp")

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
        return sorted(self._by_name, key=sort_key)

    @property
    def heads(self) -> list[Component]:
        return sorted((c for c in self if c.kind == "head"), key=lambda c: sort_key(c.name))

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
        normalise: Callable[[str], str] | None = None,
    ) -> list[str]:
        """Component names for an ablation spec (see `parse_ablation_spec`); every name must be
        present in this set, else UserError."""
        names = parse_ablation_spec(
            spec,
            [(c.layer, c.head) for c in self.heads],
            labels or {},
            self.n_layers,
            self.head_layers,
            normalise=normalise,
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
        attn_bias_image: np.ndarray | None = None,
        pool_mlp: np.ndarray | None = None,
    ) -> ComponentSet:
        """Components from the store's arrays (every argument optional):

        coord [image, layer, head, d_head] + basis [layer, head, d_head, d_embed] for the layers
        `head_layers` (heads `L{l}H{h}`); mlp [image, layer, d_embed] for layers 0.. (`L{l}.mlp`);
        attn [image, layer, d_embed] for `attn_layers` (`L{l}.attn`); embed [image, d_embed];
        attn_bias [layer, d_embed] for `head_layers`, scaled per image by 1/std, std [image]
        (`L{l}.attn_bias`); ln_bias [d_embed] (constant). An attention-pooled store (SigLIP):
        attn_bias_image [image, layer, d_embed] for `head_layers` (`L{l}.attn_bias`, per image:
        it replaces attn_bias) and pool_mlp [image, d_embed] (`pool_mlp`, the pool's MLP branch).
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
                            head_name(layer, h),
                            "head",
                            layer,
                            h,
                            coord=coord[:, li, h],
                            basis=basis[li, h],
                        )
                    )
        if mlp is not None:
            comps += [
                Component(term_name(l, "mlp"), "mlp", l, dense=mlp[:, l])
                for l in range(mlp.shape[1])
            ]
        if attn is not None:
            if len(attn_layers) != attn.shape[1]:
                raise ValueError("attn and attn_layers disagree")
            comps += [
                Component(term_name(l, "attn"), "attn", l, dense=attn[:, i])
                for i, l in enumerate(attn_layers)
            ]
        if embed is not None:
            comps.append(Component("embed", "embed", dense=embed))
        if attn_bias_image is not None:
            if len(head_layers) != attn_bias_image.shape[1]:
                raise ValueError("attn_bias_image [image, layer, d_embed] needs head_layers")
            comps += [
                Component(term_name(l, "attn_bias"), "attn_bias", l, dense=attn_bias_image[:, i])
                for i, l in enumerate(head_layers)
            ]
            attn_bias = None  # the per-image term replaces the constant one
        if pool_mlp is not None:
            comps.append(Component("pool_mlp", "pool_mlp", dense=pool_mlp))
        if attn_bias is not None:
            if std is None or len(head_layers) != attn_bias.shape[0]:
                raise ValueError("attn_bias [layer, d_embed] needs std [image] and head_layers")
            inv = 1.0 / np.asarray(std, np.float64)
            comps += [
                Component(term_name(l, "attn_bias"), "attn_bias", l, const=attn_bias[i], scale=inv)
                for i, l in enumerate(head_layers)
            ]
        if ln_bias is not None:
            comps.append(Component("ln_bias", "ln_bias", const=np.asarray(ln_bias)))
        return cls(comps, n_layers=n_layers)
