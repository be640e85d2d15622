"""`StoreSession`: one store opened read-only, and everything computed from it, lazily.

What every consumer used to rebuild for itself lives here once: the store's model (verified
against the store's weights hash), its heads, text embeddings by the store's model, per-head
contributions ready for ranking, the query image's decomposition and per-patch maps, the
complete stored decomposition and the zero-shot tasks. The analyses (`engine.session.analyses`)
and ablation (`engine.session.ablation`) are functions of (session, query, choices); the session
exposes them as methods too. Thread-safe: one session may serve many dashboard users.

Caches. One byte budget (`cache_bytes`, default `engine.store.cache.default_budget`; or a
`heads_cache` shared by every session of a server) holds what grows with the store or the model:
per-head contributions, whole-store results (`_once`: components, tasks, neuron tables and
directions, per-layer neuron paths and coordinates, ...) and query decompositions (`_queries`,
`_neuron_queries`: each holds the image's captured activations, tens to hundreds of MB for a
large model). An entry larger than the whole budget is returned but not kept; whole-store
results of at most SMALL_RESULT_BYTES (metadata, shares, small tables) are kept outside the
budget, never evicted (their keys are few). Entry-bounded, outside the budget: text embeddings
(`_texts`, TEXT_CACHE_ENTRIES × [d_embed] float32, 32 MB at d_embed 512) and map stacks
(`_maps`, MAPS_CACHE_ENTRIES × [layer, head, grid, grid] float32, a few MB): their entries are
small and of a fixed size, so their bound is known. `drop_caches` empties all of them.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engine.core import analysis
from engine.core.layers import head_name
from engine.errors import UserError
from engine.session import ablation as _ablation
from engine.session import analyses as _analyses
from engine.session import neurons as _neurons
from engine.session.model import load_store_model
from engine.session.query import ImageAnalysis, ImageQuery
from engine.store import StoreReader
from engine.store.cache import ByteBudgetCache, nbytes

TEXT_CACHE_ENTRIES = 16384  # text embeddings kept per session ([d_embed] float32 each)
MAPS_CACHE_ENTRIES = 64  # per-patch map stacks [layer, head, grid, grid] kept
SMALL_RESULT_BYTES = 64 * 2**10  # whole-store results this small are always kept
_MISSING = object()


class _Lru:
    """A thread-safe LRU of at most `size` entries; values computed outside the lock."""

    def __init__(self, size: int):
        self.size = size
        self._lock = threading.Lock()
        self._d: OrderedDict = OrderedDict()

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
        value = compute()
        self.put(key, value)
        return value

    def peek(self, key: Hashable) -> Any:
        """The value of `key` (refreshed), or None."""
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
        return None

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.size:
                self._d.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()


class _Scoped:
    """One kind of the session's results inside its byte-budgeted cache (keys prefixed by
    `scope`); results of at most `small` bytes (when `small` > 0) are kept beside it, never
    evicted. `get(key, compute)` like `_Lru`; `clear()` forgets this kind only."""

    def __init__(self, cache: ByteBudgetCache, scope: tuple, small: int = 0):
        self._cache, self.scope, self.small = cache, scope, int(small)
        self._lock = threading.Lock()
        self._small: dict = {}

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._small:
                return self._small[key]
        value = self._cache.lookup((*self.scope, key), _MISSING)
        if value is not _MISSING:
            return value
        value = compute()
        size = nbytes(value)
        if 0 < self.small and size <= self.small:
            with self._lock:
                self._small[key] = value
        else:
            self._cache.put((*self.scope, key), value, size)  # not kept when over the budget
        return value

    def __len__(self) -> int:
        n = len(self.scope)
        return len(self._small) + sum(1 for k in self._cache.keys() if k[:n] == self.scope)

    def clear(self) -> None:
        with self._lock:
            self._small.clear()
        n = len(self.scope)
        self._cache.drop(lambda k: isinstance(k, tuple) and k[:n] == self.scope)


class StoreSession:
    """A store opened read-only, with its model, heads, texts and analyses (lazy, cached).

    `StoreSession.open(path)`; `with` closes it. `reader` is the underlying `StoreReader`
    (one version, resolved at open; `is_stale` says the link has moved on)."""

    def __init__(
        self,
        reader: StoreReader,
        *,
        device: str = "cpu",
        cache_bytes: int | None = None,
        heads_cache: ByteBudgetCache | None = None,
    ):
        """`heads_cache`: a byte-bounded cache shared by several sessions (a server with many
        stores keeps one budget); default: the session's own, of `cache_bytes`."""
        self.reader = reader
        self.device = device
        self._model_lock = threading.Lock()
        self._lm = None
        self._w = None
        self._heads_cache = ByteBudgetCache(cache_bytes) if heads_cache is None else heads_cache
        self._key = str(reader.version_path)  # this version's entries in a shared heads cache
        self._texts = _Lru(TEXT_CACHE_ENTRIES)
        self._maps = _Lru(MAPS_CACHE_ENTRIES)
        # under the byte budget, beside the heads (see the module docstring):
        cache = self._heads_cache
        self._queries = _Scoped(cache, (self._key, "query"))  # decompositions + captures
        self._neuron_queries = _Scoped(cache, (self._key, "neuron_query"))  # engine.session.neurons
        # whole-store results (components, tasks, neuron tables, ...); small ones always kept
        self._once = _Scoped(cache, (self._key, "once"), small=SMALL_RESULT_BYTES)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        device: str = "cpu",
        cache_bytes: int | None = None,
        heads_cache: ByteBudgetCache | None = None,
    ) -> StoreSession:
        """Open the store at `path` (a store link or a version folder) read-only."""
        reader = StoreReader(path, cache_bytes=cache_bytes)
        return cls(reader, device=device, cache_bytes=cache_bytes, heads_cache=heads_cache)

    def drop_caches(self) -> None:
        """Forget what was computed from the store (the model stays loaded)."""
        for c in (self._texts, self._queries, self._neuron_queries, self._maps, self._once):
            c.clear()
        self._heads_cache.drop(lambda key: key[0] == self._key)
        self.reader.cache.clear()

    def close(self) -> None:
        self.drop_caches()
        self.reader.close()

    def __enter__(self) -> StoreSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"StoreSession({str(self.path)!r}: {self.model_record.model_spec}, "
                f"{self.n_images} images, layers {self.layers})")  # fmt: skip

    # ---------------------------------------------------------------- the store's facts

    @property
    def path(self) -> Path:
        return self.reader.path

    @property
    def version_path(self) -> Path:
        return self.reader.version_path

    @property
    def is_stale(self) -> bool:
        return self.reader.is_stale

    @property
    def meta(self):
        """The store's typed metadata record (`engine.store.schema.StoreMeta`)."""
        return self.reader.meta

    @property
    def model_record(self):
        """The store's model as recorded (`engine.store.schema.ModelRecord`)."""
        return self.reader.model_record

    @property
    def info(self):
        return self.reader.info

    @property
    def layers(self) -> list[int]:
        return list(self.reader.layers)

    @property
    def n_heads(self) -> int:
        return self.model_record.n_heads

    @property
    def n_images(self) -> int:
        return int(self.reader.info["n_images"])

    def heads(self) -> list[tuple[int, int]]:
        """THE store's heads: every (layer, head) of its stored layers, layer-major."""
        return [(l, h) for l in self.layers for h in range(self.n_heads)]

    def heads_table(self, texts: int = 5):
        """One row per stored head with its label, TextSpan texts and evidence (a DataFrame;
        `engine.session.tables.heads_table`)."""
        from engine.session.tables import heads_table

        return heads_table(self, texts)

    def head_labels(self) -> dict[tuple[int, int], str]:
        """(layer, head) -> label of the store's interpretation (empty before `interpret`)."""
        return self.reader.head_labels()

    def check_heads(self, heads: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """`heads` as (int, int) pairs, each a stored head (else one UserError naming them)."""
        out = [(int(l), int(h)) for l, h in heads]
        stored = set(self.heads())
        bad = [head_name(*x) for x in out if x not in stored]
        if bad:
            raise UserError(f"{', '.join(bad)} not stored (layers {self.layers}, "
                            f"{self.n_heads} heads each)")  # fmt: skip
        return out

    # ---------------------------------------------------------------- the store's model

    def model(self):
        """The store's model (`engine.model.LoadedModel`), loaded once, verified against the
        store's weights hash (UserError when the weights differ or are not on this machine)."""
        with self._model_lock:
            if self._lm is None:
                self._lm = load_store_model(self.model_record, device=self.device)
            return self._lm

    def vision_weights(self):
        """The vision tower's weights by state-dict name (`engine.core.types.ViTWeights`; a
        pooled store's: `engine.core.pooling.PooledWeights`)."""
        from engine.model import vision_weights
        from engine.session import pooled

        lm = self.model()
        with self._model_lock:
            if self._w is None:
                self._w = pooled.weights(lm) if self.reader.pooled else vision_weights(lm)
            return self._w

    @property
    def pooled(self) -> bool:
        """A store of an attention-pooled tower (SigLIP; `engine.session.pooled`)."""
        return self.reader.pooled

    def text_embeddings(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Unit-norm text embeddings by the store's model -> [text, d_embed] float32 (each text
        embedded once per session, up to TEXT_CACHE_ENTRIES texts kept)."""
        from engine.model import encode_text

        texts = [str(t) for t in texts]
        found = {t: self._texts.peek(t) for t in dict.fromkeys(texts)}
        missing = [t for t, e in found.items() if e is None]
        if missing:
            lm = self.model()
            batch = 256
            starts = range(0, len(missing), batch)
            if progress:
                from tqdm import tqdm

                starts = tqdm(starts, desc="encode texts", unit="batch")
            for i in starts:
                part = missing[i : i + batch]
                emb = encode_text(lm, part).numpy().astype(np.float32)  # [text, d_embed]
                if emb.shape[1] != self.model_record.d_embed:
                    raise UserError(f"text d_embed {emb.shape[1]} differs from the store's "
                                    f"{self.model_record.d_embed}")  # fmt: skip
                for t, e in zip(part, emb, strict=True):
                    e.setflags(write=False)
                    found[t] = e
                    self._texts.put(t, e)
        if not texts:
            return np.zeros((0, self.model_record.d_embed), np.float32)
        return np.stack([found[t] for t in texts])

    # ---------------------------------------------------------------- stored contributions

    def head_contributions(self, layer: int, head: int) -> analysis.HeadContributions:
        """One head's stored contributions over every image, ready for ranking (cached within
        the session's byte budget)."""
        (layer, head), = self.check_heads([(layer, head)])  # fmt: skip

        def read() -> analysis.HeadContributions:
            li = self.layers.index(layer)
            coord = self.reader.coord_array[:, li, head, :]  # [image, d_head] fp16
            return analysis.HeadContributions.from_coords(coord, self.reader.basis(layer, head))

        return self._heads_cache.get((self._key, layer, head), read)

    def contributions(self, layer: int, head: int) -> np.ndarray:
        """One head's stored contributions in embedding space: [image, d_embed] float32."""
        return self.reader.head_out(int(layer), int(head)).astype(np.float32)

    def components(self):
        """The complete stored decomposition: (output [image, d_embed], `ComponentSet`)."""
        from engine.store.decomposition import load_components

        return self._once.get("components", lambda: load_components(self.reader))

    def thumbnails(self, image_ids) -> np.ndarray:
        """uint8 [image, T, T, 3] thumbnails of stored images, in the order given."""
        return self.reader.thumbnails(image_ids)

    # ---------------------------------------------------------------- the query image

    def query_from_store(self, index: int) -> ImageQuery:
        """A stored image as the query: its source file when still readable, else its
        thumbnail; its stored contributions are used for rankings."""
        from engine.sources import imageio

        index = int(index)
        if not 0 <= index < self.n_images:
            raise UserError(f"no stored image #{index} (0..{self.n_images - 1})")
        row = self.reader.images().iloc[index]
        sha = f"store:{self.version_path}:{index}"
        path = str(row["path"] or "")
        if path and Path(path).is_file():
            try:
                img = imageio.decode_file(path).image
                return ImageQuery(img, sha, f"stored image #{index}", index)
            except imageio.ImageRejected:
                pass
        thumb = self.thumbnails([index])[0]
        return ImageQuery(Image.fromarray(thumb), sha, f"stored image #{index} (thumbnail)", index)

    def as_query(self, query) -> Any:
        """A PIL image becomes an `ImageQuery`; a query (anything with .image, .sha and
        .store_index, e.g. the dashboard's) is returned as it is."""
        if isinstance(query, Image.Image):
            return ImageQuery.from_image(query)
        return query

    def query_image(self, query) -> ImageAnalysis:
        """The query image's decomposition by the store's model (cached by its `sha`)."""
        q = self.as_query(query)
        if self.pooled:
            return self._pooled_query(q)[0]

        def compute() -> ImageAnalysis:
            from engine.core.decompose import decompose
            from engine.model import capture

            lm, w = self.model(), self.vision_weights()
            pixels = lm.preprocess(q.image.convert("RGB"))[None]  # [image=1, 3, H, W]
            cap = capture(lm, pixels, self.layers)
            dec = decompose(w, cap, self.layers)
            return ImageAnalysis(
                head_out=dec.head_out[0].float().numpy(),  # [layer, head, d_embed]
                output=dec.output[0].float().numpy(),  # [d_embed]
                layers=list(dec.layers),
                capture=cap,
            )

        return self._queries.get(q.sha, compute)

    def _pooled_query(self, q):
        """(ImageAnalysis, PooledDecomposition) of a query in a pooled store (cached)."""
        from engine.session import pooled

        def compute():
            lm, w = self.model(), self.vision_weights()
            pixels = lm.preprocess(q.image.convert("RGB"))[None]  # [image=1, 3, H, W]
            return pooled.analyse(lm, w, pixels, self.layers)

        return self._queries.get(("pooled", q.sha), compute)

    def pooled_decomposition(self, query):
        """The query's `engine.core.pooling.PooledDecomposition` (a pooled store only): every
        term, the pool's pattern and the per-pool-head split."""
        if not self.pooled:
            raise UserError(f"{self.path}: not a store of an attention-pooled tower")
        return self._pooled_query(self.as_query(query))[1]

    def pool_head_view(self, query, texts: Sequence[str] = ()):
        """The reference's per-pooling-head view: which pool head carries what
        (`engine.session.pooled.PoolHeadView`; a pooled store only)."""
        from engine.session import pooled

        return pooled.pool_head_view(self, query, texts)

    def pool_mlp_share(self) -> dict:
        """||pool_mlp|| / ||output|| over the stored images (mean, median, max; None for a
        class-token store): the embedding's share no head's direct effect explains."""
        from engine.session import pooled

        return self._once.get("pool_mlp_share", lambda: pooled.pool_mlp_share(self.reader))

    def query_head_out(self, query, heads: Sequence[tuple[int, int]]) -> np.ndarray:
        """The query's contributions of `heads` -> [head, d_embed]: the stored ones when the
        image is from the store (exactly what rankings compare against), else live."""
        q = self.as_query(query)
        heads = self.check_heads(heads)
        if getattr(q, "store_index", None) is not None:
            return np.stack([self.head_contributions(l, h).row(q.store_index) for l, h in heads])
        return self.query_image(q).heads_out(heads)

    def maps(self, query, direction: np.ndarray) -> np.ndarray:
        """Per-patch maps of every stored head along `direction [d_embed]` ->
        [layer, head, grid, grid] (each map sums, with the class token's share, to the head's
        contribution · direction)."""
        import torch

        from engine.core.decompose import patch_maps

        q = self.as_query(query)
        d = np.ascontiguousarray(direction, dtype=np.float32)

        def compute() -> np.ndarray:
            a = self.query_image(q)
            if self.pooled:  # per-token contributions weighted by the pool's attention
                from engine.session import pooled

                return pooled.maps(self.vision_weights(), a.capture, self.layers, d)
            return patch_maps(
                self.vision_weights(), a.capture, 0, self.layers, None, torch.from_numpy(d.copy())
            ).numpy()

        return self._maps.get((q.sha, d.tobytes()), compute)

    def head_mask(self, heads: Sequence[tuple[int, int]] | np.ndarray | None) -> np.ndarray:
        """[layer, head] bool mask of the stored heads chosen (all when None)."""
        if heads is None:
            return np.ones((len(self.layers), self.n_heads), bool)
        if isinstance(heads, np.ndarray):
            return heads.astype(bool)
        mask = np.zeros((len(self.layers), self.n_heads), bool)
        for l, h in self.check_heads(heads):
            mask[self.layers.index(l), h] = True
        return mask

    # ---------------------------------------------------------------- analyses (functions)

    def property_heads(self) -> dict[str, list[tuple[int, int]]]:
        return _analyses.property_heads(self)

    def property_neighbours(self, query, heads, *, combine: str = "concat", k: int = 8):
        return _analyses.property_neighbours(self, query, heads, combine=combine, k=k)

    def topic_segmentation(self, query, text: str, *, heads=None) -> np.ndarray:
        return _analyses.topic_segmentation(self, query, text, heads=heads)

    def contrastive_segmentation(self, query, text_a: str, text_b: str, *, heads=None):
        return _analyses.contrastive_segmentation(self, query, text_a, text_b, heads=heads)

    def head_image_neighbours(self, query, heads, *, k: int = 8):
        return _analyses.head_image_neighbours(self, query, heads, k=k)

    def head_text_neighbours(self, head: tuple[int, int], text: str, *, k: int = 8):
        return _analyses.head_text_neighbours(self, head, text, k=k)

    def zeroshot_tasks(self, source: str | None = None, *, progress: bool = False):
        return _ablation.zeroshot_tasks(self, source, progress=progress)

    def ablate(self, spec: str, **choices) -> _ablation.Ablation:
        return _ablation.ablate(self, spec, **choices)

    # ---------------------------------------------------------------- neurons (engine.session.neurons)

    def neuron_table(self):
        return _neurons.neuron_table(self)

    def search_neurons(self, text: str, *, k: int = 20):
        return _neurons.search_neurons(self, text, k)

    def neuron_facts(self, layer: int, neuron: int):
        return _neurons.neuron_facts(self, layer, neuron)

    def neuron_map(self, query, layer: int, neuron: int, direction=None):
        return _neurons.neuron_map(self, query, layer, neuron, direction)

    def neuron_segmentation(self, query, text: str, *, k: int = 10):
        return _neurons.neuron_segmentation(self, query, text, k)

    def ablate_neurons(self, spec: str, **choices):
        from engine.session.neuron_ablation import ablate_neurons

        return ablate_neurons(self, spec, **choices)

    def neuron_ablation_drops(self, layer: int, neuron: int):
        """Recorded `ablate` runs that removed this neuron: per (run, task) its spec, size,
        before / after / drop and random baseline (`engine.store.neuron_ablations`)."""
        from engine.store.neuron_ablations import neuron_ablation_drops

        return neuron_ablation_drops(self.reader, layer, neuron)

    def neuron_ablation_runs(self):
        """Every recorded neuron ablation, the latest first (`engine.store.neuron_ablations`)."""
        from engine.store.neuron_ablations import neuron_ablation_runs

        return neuron_ablation_runs(self.reader)
