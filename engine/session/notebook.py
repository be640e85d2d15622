"""The Python API for notebooks: `from engine import open_store`, thin over `StoreSession`.

    from engine import open_store
    s = open_store("artifacts/demo")
    s.heads()                      # DataFrame: name, layer, head, label, labeller, top_texts
    s.images()                     # DataFrame: image_id, path, class, + the world's factors
    s.contributions(11, 3)         # [image, d_embed] float32: L11H3's direct contributions
    s.coordinates(11, 3), s.basis(11, 3)   # [image, d_head] @ [d_head, d_embed] = the same
    s.textspan(11, 3)              # DataFrame: the head's TextSpan texts
    s.property_neighbours(12, ["L11H3", (11, 5)])   # DataFrame: image_id, score, path, class
    s.topic_segmentation("photo.jpg", "a red shape")  # [grid, grid]
    s.ablate("label:colour")       # engine.session.Ablation (what `engine ablate` computes)
    s.pool_heads(0, ["a red shape"])  # SigLIP: which pool head carries what (DataFrame)

An image is a stored image's id (int), a file path, or a PIL image; heads are (layer, head)
pairs or names like "L11H3". No math here: everything is `StoreSession`'s.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from engine.core.analysis import Ranking
from engine.core.layers import head_name, parse_head_name
from engine.session.ablation import Ablation
from engine.session.query import ImageQuery
from engine.session.session import StoreSession


def open_store(path: str | os.PathLike, *, device: str = "cpu") -> Store:
    """A store opened read-only for a notebook (close it, or use `with`)."""
    return Store(StoreSession.open(path, device=device))


class Store:
    """A store in a notebook: tables as DataFrames, arrays as numpy, analyses as calls."""

    def __init__(self, session: StoreSession):
        self.session = session

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return repr(self.session).replace("StoreSession", "Store", 1)

    @property
    def meta(self):
        return self.session.meta

    @property
    def model_record(self):
        return self.session.model_record

    def model(self):
        """The store's model (`LoadedModel`), verified against the store's weights hash."""
        return self.session.model()

    # ---------------------------------------------------------------- tables

    def heads(self, texts: int = 5) -> pd.DataFrame:
        """One row per stored head: name, layer, head, label, labeller (None before
        `interpret`), top_texts [(text, variance removed)], and the ground truth, ablation and
        segmentation evidence where the store has them (`engine.session.tables.heads_table`)."""
        return self.session.heads_table(texts)

    def images(self) -> pd.DataFrame:
        """One row per stored image: image_id, path, class, and each demo-world factor's value
        where the store has them."""
        df = self.session.reader.images()[["image_id", "path", "class"]]
        fac = self.session.reader.table("image_factors")
        if len(fac):
            wide = fac.pivot(index="image_id", columns="factor", values="value")
            df = df.merge(wide[list(self.meta.factors or wide.columns)].reset_index(),
                          on="image_id", how="left")  # fmt: skip
        return df

    def textspan(self, layer: int, head: int) -> pd.DataFrame:
        """The head's TextSpan texts, best first: rank, text, category, variance_removed,
        score_var (empty before `interpret`)."""
        (layer, head), = self.session.check_heads([(layer, head)])  # fmt: skip
        cols = ["rank", "text", "category", "variance_removed", "score_var"]
        return self.session.reader.textspan(layer, head)[cols].reset_index(drop=True)

    # ---------------------------------------------------------------- arrays

    def contributions(self, layer: int, head: int) -> np.ndarray:
        """The head's direct contribution to every stored image's embedding: [image, d_embed]
        float32 (= coordinates @ basis)."""
        return self.session.contributions(*self._head((layer, head)))

    def coordinates(self, layer: int, head: int) -> np.ndarray:
        """The same in the head's own coordinates: [image, d_coord] float32 (d_head for CLIP;
        d_embed in one shared basis for SigLIP)."""
        return np.array(self.session.reader.coords(*self._head((layer, head))))

    def basis(self, layer: int, head: int) -> np.ndarray:
        """The head's orthonormal basis: [d_head, d_embed] float32 (zero rows past its rank)."""
        return np.array(self.session.reader.basis(*self._head((layer, head))))

    def output(self) -> np.ndarray:
        """Every stored image's embedding (`encode_image`, not normalised): [image, d_embed]."""
        return self.session.reader.output()

    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm embeddings of `texts` by the store's model: [text, d_embed]."""
        return self.session.text_embeddings(list(texts))

    # ---------------------------------------------------------------- analyses

    def query(self, image) -> ImageQuery:
        """A stored image id (int), a file path or a PIL image, as a query."""
        if isinstance(image, ImageQuery):
            return image
        if isinstance(image, int | np.integer):
            return self.session.query_from_store(int(image))
        if isinstance(image, str | os.PathLike):
            from engine.sources import imageio

            try:
                return ImageQuery.from_image(imageio.decode_file(image).image, Path(image).name)
            except imageio.ImageRejected as e:
                from engine.errors import UserError

                raise UserError(f"cannot read {image}: {e}") from None
        if isinstance(image, Image.Image):
            return ImageQuery.from_image(image)
        raise TypeError(f"an image is a stored id, a path or a PIL image, not {type(image)}")

    def property_neighbours(self, image, heads, *, combine: str = "concat", k: int = 8):
        rk = self.session.property_neighbours(self.query(image), self._heads(heads),
                                              combine=combine, k=k)  # fmt: skip
        return self._ranked(rk)

    def head_image_neighbours(self, image, heads, *, k: int = 8) -> dict[str, pd.DataFrame]:
        hs = self._heads(heads)
        rks = self.session.head_image_neighbours(self.query(image), hs, k=k)
        return {head_name(*h): self._ranked(r) for h, r in zip(hs, rks, strict=True)}

    def head_text_neighbours(self, head, text: str, *, k: int = 8) -> pd.DataFrame:
        return self._ranked(self.session.head_text_neighbours(self._head(head), text, k=k))

    def topic_segmentation(self, image, text: str, *, heads=None) -> np.ndarray:
        hs = None if heads is None else self._heads(heads)
        return self.session.topic_segmentation(self.query(image), text, heads=hs)

    def contrastive_segmentation(self, image, text_a: str, text_b: str, *, heads=None):
        hs = None if heads is None else self._heads(heads)
        return self.session.contrastive_segmentation(self.query(image), text_a, text_b, heads=hs)

    def pool_heads(self, image, texts: Sequence[str] = ()) -> pd.DataFrame:
        """A SigLIP store: the reference's per-pooling-head view of `image`, one row per pool
        head: pool_head, norm, share (of the pool heads' summed norms) and one column per text
        (the pool head's part of the embedding · the unit text embedding)."""
        v = self.session.pool_head_view(self.query(image), list(texts))
        df = pd.DataFrame({"pool_head": np.arange(len(v.share)),
                           "norm": np.linalg.norm(v.contrib, axis=1), "share": v.share})  # fmt: skip
        for i, t in enumerate(v.texts):
            df[t] = v.text_scores[:, i]
        return df

    def ablate(self, spec: str, **choices) -> Ablation:
        """`python -m engine ablate --no-write` as a call (same function, same result)."""
        return self.session.ablate(spec, **choices)

    def ablate_neurons(self, spec: str, **choices):
        """`python -m engine ablate --no-write --ablate neurons:…` as a call: MLP neurons'
        second-order effects mean-ablated (`engine.session.neuron_ablation.NeuronAblation`)."""
        return self.session.ablate_neurons(spec, **choices)

    # ---------------------------------------------------------------- helpers

    def _head(self, head) -> tuple[int, int]:
        h = parse_head_name(head) if isinstance(head, str) else head
        return self.session.check_heads([h])[0]

    def _heads(self, heads) -> list[tuple[int, int]]:
        if isinstance(heads, str) or (isinstance(heads, tuple) and len(heads) == 2
                                      and isinstance(heads[0], int | np.integer)):  # fmt: skip
            heads = [heads]
        return [self._head(h) for h in heads]

    def _ranked(self, rk: Ranking) -> pd.DataFrame:
        imgs = self.session.reader.images().set_index("image_id")
        return pd.DataFrame({
            "image_id": rk.index, "score": rk.score,
            "path": imgs["path"].reindex(rk.index).to_numpy(),
            "class": imgs["class"].reindex(rk.index).to_numpy(),
        })  # fmt: skip
