"""The store's MLP neurons (second-order lens) for readers: the table, text search, one neuron's
stored facts, and its spatial map on a query image computed live by the store's model.

Functions of (session, ...) like `engine.session.analyses`; `StoreSession` exposes them as
methods. Reads only `neuron_stats` / `neuron_words` and the lens's constant arrays; the map runs
the store's model on the query once per (image, neuron layer) and keeps the capture.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from engine.errors import UserError
from engine.store import schema

N_WORDS_SHOWN = 5  # words in the table's `words` column
_UNIT = re.compile(r"L(\d+)N(\d+)", re.IGNORECASE)


def neuron_name(layer: int, neuron: int) -> str:
    return f"L{int(layer)}N{int(neuron)}"


def parse_neuron(name: str) -> tuple[int, int] | None:
    """`L4N123` -> (4, 123); anything else -> None."""
    m = _UNIT.fullmatch(str(name).strip())
    return (int(m[1]), int(m[2])) if m else None


def neuron_layers(session) -> list[int]:
    """The store's built neuron layers (build --neurons), [] when none."""
    return [int(x) for x in (session.reader.info.get("neuron_layers") or [])]


def _table(session, name: str) -> pd.DataFrame:
    """A neuron table (empty, with its columns, where `interpret --neurons` never wrote it)."""

    def load():
        r = session.reader
        got = r.query(
            "SELECT count(*) AS n FROM information_schema.tables WHERE table_name = ?", [name]
        )
        if int(got["n"].iloc[0]):
            return r.table(name)
        lines = [x.strip() for x in schema.TABLES[name].strip().splitlines()[1:-1]]
        return pd.DataFrame(columns=[x.split()[0] for x in lines if x and not x.startswith("--")])

    return session._once.get(name, load)


def _stats(session) -> pd.DataFrame:
    return _table(session, "neuron_stats")


def _words(session) -> pd.DataFrame:
    return _table(session, "neuron_words")


def _require(session) -> pd.DataFrame:
    stats = _stats(session)
    if not neuron_layers(session):
        raise UserError(
            f"{session.path} was built without neurons: rebuild it with `python -m engine build "
            "... --neurons L` and run `python -m engine interpret --neurons all`"
        )
    if stats.empty:
        raise UserError(
            f"the neurons of {session.path} are not described yet: run `python -m engine "
            f"interpret --store {session.path} --neurons all`"
        )
    return stats


def neuron_table(session) -> pd.DataFrame:
    """One row per described neuron: layer, neuron, unit (`L4N123`), significance (mean centred
    effect norm, what mean-ablation removes), threshold (top-100th norm), label, words (the
    first positive OMP words), sorted by significance, largest first."""
    stats = _require(session)
    words = _words(session)
    pos = words[words.weight > 0].sort_values(["layer", "neuron", "rank"])
    shown = (
        pos.groupby(["layer", "neuron"])["text"]
        .apply(lambda t: ", ".join(t.iloc[:N_WORDS_SHOWN]))
        .rename("words")
    )
    out = stats[["layer", "neuron", "mean_norm", "threshold", "label"]].rename(
        columns={"mean_norm": "significance"}
    )
    out = out.join(shown, on=["layer", "neuron"])
    out["words"] = out["words"].fillna("")
    out.insert(2, "unit", [neuron_name(l, n) for l, n in zip(out.layer, out.neuron, strict=True)])
    return out.sort_values("significance", ascending=False, kind="stable").reset_index(drop=True)


def _directions(session) -> tuple[np.ndarray, np.ndarray]:
    """(keys [neuron, 2] (layer, neuron), unit directions [neuron, d_embed]) of every row."""

    def load():
        stats = _require(session)
        keys = stats[["layer", "neuron"]].to_numpy(dtype=np.int64)
        d = np.stack([np.asarray(x, np.float32) for x in stats["direction"]])  # [neuron, d_embed]
        d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-30)
        return keys, d

    return session._once.get("neuron_directions", load)


def search_neurons(session, text: str, k: int = 20) -> pd.DataFrame:
    """The k neurons whose principal effect direction is most aligned with `text`'s embedding by
    the store's model (cosine, signed: the direction's sign is fixed by the top images) -> the
    table's rows plus `cosine`, largest first."""
    text = str(text).strip()
    if not text:
        raise UserError("type a text to search the neurons for")
    keys, d = _directions(session)
    t = session.text_embeddings([text])[0]  # [d_embed], unit
    cos = d @ t  # [neuron]
    top = np.argsort(-cos, kind="stable")[: max(1, int(k))]
    table = neuron_table(session).set_index(["layer", "neuron"])
    rows = table.loc[[tuple(keys[i]) for i in top]].reset_index()
    rows.insert(3, "cosine", cos[top].astype(float))
    return rows


@dataclass(frozen=True)
class NeuronFacts:
    """One described neuron's stored facts."""

    layer: int
    neuron: int
    label: str
    significance: float
    threshold: float
    top_norm: float
    top_images: list[int]  # store image indices, largest effect first
    direction: np.ndarray  # [d_embed] unit
    words: pd.DataFrame  # rank, text, category, weight
    labeller: str = "offline"

    @property
    def name(self) -> str:
        return neuron_name(self.layer, self.neuron)


def neuron_facts(session, layer: int, neuron: int) -> NeuronFacts:
    """The stored facts of neuron `neuron` of layer `layer` (UserError naming the built layers
    when it is not described)."""
    stats = _require(session)
    row = stats[(stats.layer == int(layer)) & (stats.neuron == int(neuron))]
    if row.empty:
        n = int(stats.neuron.max()) + 1
        raise UserError(
            f"{neuron_name(layer, neuron)} is not a described neuron (layers "
            f"{sorted(set(stats.layer.astype(int)))}, neurons 0-{n - 1})"
        )
    r = row.iloc[0]
    words = _words(session)
    w = words[(words.layer == int(layer)) & (words.neuron == int(neuron))].sort_values("rank")
    return NeuronFacts(
        int(layer), int(neuron), str(r.label), float(r.mean_norm), float(r.threshold),
        float(r.top_norm), [int(i) for i in r.top_images], np.asarray(r.direction, np.float32),
        w[["rank", "text", "category", "weight"]].reset_index(drop=True),
        str(r.get("labeller") or "offline"),
    )  # fmt: skip


@dataclass(frozen=True)
class NeuronMap:
    """A neuron's effect on the query image, split over its tokens.

    patches: [grid, grid] each patch's share of effect · direction; cls: the class token's
    share; total: effect · direction (= patches.sum() + cls); norm: ‖effect‖."""

    patches: np.ndarray
    cls: float
    total: float
    norm: float


def _capture(session, query, layer: int):
    """The query's lens inputs for neuron layer `layer`, cached per (image, layer)."""
    import torch

    from engine.model.capture import capture_neurons

    q = session.as_query(query)

    def compute():
        lm, w = session.model(), session.vision_weights()
        pixels = lm.preprocess(q.image.convert("RGB"))[None]  # [image=1, 3, H, W]
        with torch.no_grad():
            cap, ncap = capture_neurons(lm, pixels, [], [layer])
        std = (cap.resid.float().var(-1, unbiased=False) + w.ln_post_eps).sqrt()  # [image]
        later = list(range(layer + 1, w.n_layers))
        return (
            {lp: cap.attn_in[lp].float() for lp in later},
            {lp: ncap.ln_std[lp].float() for lp in later},
            ncap.acts[layer].float(),
            std,
        )

    return session._neuron_queries.get((q.sha, int(layer)), compute)


def _path_maps(session, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """(u [K, neuron, d_head], basis [K, d_head, d_embed]) of built neuron layer `layer`, from the
    store's constant arrays (`neuron_u` stacks each built layer's K = later × head paths in
    order; `neuron_basis` holds every layer after the first built one)."""

    def load():
        built = neuron_layers(session)
        n_layers, n_heads = int(session.info["n_layers"]), session.n_heads
        offset = sum((n_layers - 1 - l) * n_heads for l in built if l < layer)
        k = (n_layers - 1 - layer) * n_heads
        u = session.reader.array("neuron_u")[offset : offset + k]
        basis = session.reader.array("neuron_basis")[layer - built[0] :]  # [later, head, ...]
        return u, basis.reshape(-1, *basis.shape[2:])  # (later, head) row-major -> [K, ...]

    return session._once.get(("neuron_paths", int(layer)), load)


def neuron_map(session, query, layer: int, neuron: int, direction=None) -> NeuronMap:
    """Neuron `neuron` of built layer `layer`: its second-order effect on the query image along
    `direction` [d_embed] (default: its stored principal direction), per patch."""
    import torch

    from engine.core import neuron_maps as nm
    from engine.core import second_order as so

    layer, neuron = int(layer), int(neuron)
    built = neuron_layers(session)
    if layer not in built:
        raise UserError(f"layer {layer}'s neurons were not built (built: {built})")
    u, basis = _path_maps(session, layer)  # [K, neuron, d_head], [K, d_head, d_embed]
    if not 0 <= neuron < u.shape[1]:
        raise UserError(f"no neuron {neuron} in layer {layer} (0-{u.shape[1] - 1})")
    if direction is None:
        direction = neuron_facts(session, layer, neuron).direction
    d = torch.as_tensor(np.asarray(direction, np.float32))
    u_n = torch.as_tensor(np.ascontiguousarray(u[:, neuron : neuron + 1]), dtype=torch.float32)
    basis_t = torch.as_tensor(np.ascontiguousarray(basis), dtype=torch.float32)
    attn_in, ln_std, acts, std = _capture(session, query, layer)
    later = list(range(layer + 1, session.vision_weights().n_layers))
    gains = nm.path_gains(u_n, basis_t, d)  # [K, 1]
    per_token = nm.token_weights(
        session.vision_weights(), attn_in, ln_std, acts[..., neuron : neuron + 1], std, later, gains
    )[0, :, 0]  # [token]
    # the neuron's whole effect (every direction) for its norm: c · u @ basis / std
    w = session.vision_weights()
    c = so.coefficients(w, attn_in, ln_std, acts[..., neuron : neuron + 1], later)[0, ..., 0]
    eff = torch.einsum("k,kd,kde->e", c.reshape(-1), u_n[:, 0], basis_t) / std[0]
    return NeuronMap(
        patches=nm.patch_grid(per_token).numpy(),
        cls=float(per_token[0]),
        total=float(per_token.sum()),
        norm=float(eff.norm()),
    )


def neuron_segmentation(session, query, text: str, k: int = 10) -> tuple[np.ndarray, pd.DataFrame]:
    """The paper's neuron-based segmentation: the k neurons whose direction is nearest `text`,
    each one's per-patch map on the query along the text's embedding, averaged -> ([grid, grid],
    the neurons used: the search rows)."""
    hits = search_neurons(session, text, k)
    t = session.text_embeddings([str(text).strip()])[0]  # [d_embed]
    maps = [neuron_map(session, query, int(l), int(n), t).patches
            for l, n in zip(hits.layer, hits.neuron, strict=True)]  # fmt: skip
    return np.mean(maps, axis=0), hits
