"""Planning a build: validate the parameters, load the model, choose layers and chunking, key the
staging folder, and lay out the deterministic chunk list over the source's items.

Chunk k covers the SOURCE items [k * chunk, (k + 1) * chunk) (the last one is shorter). It is
computed and written on its own — by this process, a `--shard` process or a Ray actor — and its
good images land at staging rows [k * chunk, k * chunk + n_good_k), one whole Zarr shard. Chunks
therefore never depend on one another; `finalise` compacts the rows when any file was skipped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine import store
from engine.core.layers import parse_layers
from engine.core.pooling import PooledWeights, pooled_bases
from engine.core.types import ViTWeights
from engine.errors import UserError
from engine.model import LoadedModel, load_model, vision_weights
from engine.model.timm_tower import is_timm_tower, pooled_weights
from engine.pipeline.neurons import n_neurons, parse_neuron_layers
from engine.pipeline.pooled_rows import PooledBatchDecomposer
from engine.pipeline.rows import BatchDecomposer
from engine.sources import collection
from engine.store import schema

CHUNKING = "source-range"  # part of the key: chunk k = source items [k*C, (k+1)*C)


@dataclass
class BuildParams:
    model: str
    images: str  # a folder, `synthetic:N[:seed]` or `random:N[:seed]`
    store: str  # artifacts/NAME (the link)
    batch_size: int = 32
    device: str = "cpu"
    layers: str = str(schema.DEFAULT_LAST_LAYERS)  # the layer grammar of engine.core.layers
    random_weights: bool = False
    workers: int = 2
    image_chunk: int | None = None  # images per Zarr chunk; None = schema.image_chunk_for(...)
    force: bool = False  # rebuild even if the published store is up to date
    progress: bool = True
    neurons: str | None = None  # --neurons: MLP layers of the second-order lens (default none)


@dataclass
class BuildPlan:
    """Everything a worker needs to compute chunk k and everything finalise needs to publish."""

    params: BuildParams
    link: Path
    source: collection.Source
    lm: LoadedModel
    layers: list[int]
    chunk: int  # source items (and store rows) per chunk
    key: str  # the staging key
    staging: Path
    weights: ViTWeights | PooledWeights  # the vision tower's weights by name, extracted once
    d_coord: int = 0  # a head's coordinate width (d_head; pooled towers: the pool's rank)
    _arrays: dict | None = None
    _decomposer: BatchDecomposer | PooledBatchDecomposer | None = None
    neuron_layers: list[int] = field(default_factory=list)  # the second-order lens's layers
    n_neurons: int = 0

    @property
    def pooled(self) -> bool:
        """An attention-pooled tower (SigLIP): shared basis, pooled-only arrays."""
        return isinstance(self.weights, PooledWeights)

    def decomposer(self) -> BatchDecomposer | PooledBatchDecomposer:
        """The per-batch decomposition with the heads' bases computed once per process."""
        if self._decomposer is None:
            if self.pooled:
                self._decomposer = PooledBatchDecomposer(self.lm, self.layers, weights=self.weights)
            else:
                self._decomposer = BatchDecomposer(
                    self.lm, self.layers, weights=self.weights, neuron_layers=self.neuron_layers
                )
        return self._decomposer

    @property
    def rest_layers(self) -> list[int]:
        """The layers whose heads are stored summed (attn_rest)."""
        return [l for l in range(self.lm.dims.n_layers) if l not in self.layers]

    def arrays(self) -> dict:
        """The staging Zarr arrays, opened for writing once per process."""
        if self._arrays is None:
            self._arrays = store.open_arrays(self.staging, mode="r+")
        return self._arrays

    @property
    def n_chunks(self) -> int:
        return -(-self.source.n_items // self.chunk)

    def chunk_range(self, k: int) -> range:
        """The source items of chunk k."""
        return range(k * self.chunk, min((k + 1) * self.chunk, self.source.n_items))

    def sizes(self) -> dict[str, int]:
        """Dimension sizes of the staging arrays (one row slot per source item)."""
        d = self.lm.dims
        return schema.array_sizes(
            self.source.n_items, d.n_layers, self.layers, d.n_heads, d.d_head, d.d_embed,
            self.chunk, self.neuron_layers, self.n_neurons,
            d_coord=self.d_coord or d.d_head, pooled=self.pooled,
        )  # fmt: skip


def check_params(params: BuildParams) -> Path:
    """Validate what needs no model; returns the store link."""
    if params.batch_size < 1:
        raise UserError(f"bad --batch-size {params.batch_size}: must be >= 1")
    if params.workers < 1:
        raise UserError(f"bad --workers {params.workers}: must be >= 1")
    link = Path(params.store)
    if link.name.startswith(".") or not link.name:
        raise UserError(f"bad --store {params.store!r}: the store name must not start with '.'")
    if link.exists() and not link.is_symlink():
        raise UserError(f"{link} exists and is not a store link; choose another --store")
    return link


def plan_build(params: BuildParams, *, load_device: str | None = None) -> BuildPlan:
    """Validate, load the model, choose layers and chunk size, and key the staging folder.

    load_device: load the model there instead of `params.device` (a driver that only plans and
    finalises for workers on GPUs); the key still names `params.device`'s type."""
    link = check_params(params)
    source = collection.parse_source(params.images)  # bad input fails before the (slow) model load
    device = load_device or params.device
    lm = load_model(params.model, device=device, random_weights=params.random_weights)
    source.image_size = lm.dims.image_size
    dims = lm.dims
    layers_arg = params.layers
    if str(layers_arg) == str(schema.DEFAULT_LAST_LAYERS) and dims.n_layers < int(layers_arg):
        layers_arg = "all"  # the default on a model shallower than it
    layers = parse_layers(layers_arg, dims.n_layers)
    neuron_layers = parse_neuron_layers(params.neurons, dims.n_layers)
    if is_timm_tower(lm.model):  # SigLIP: heads through the frozen pool, one shared basis
        if neuron_layers:
            raise UserError(
                f"--neurons: the second-order lens reads a class-token tower; {params.model} "
                "pools its tokens with attention (SigLIP)"
            )
        weights = pooled_weights(lm.model)
        d_coord = pooled_bases(weights).width
    else:
        weights, d_coord = vision_weights(lm), dims.d_head
    pooled = isinstance(weights, PooledWeights)
    d_mlp = n_neurons(lm, neuron_layers)
    sizes = schema.array_sizes(
        source.n_items, dims.n_layers, layers, dims.n_heads, dims.d_head, dims.d_embed, 1,
        neuron_layers, d_mlp, d_coord=d_coord, pooled=pooled,
    )  # fmt: skip
    chunk = params.image_chunk or schema.image_chunk_for(sizes, source.n_items)
    if chunk < 1:
        raise UserError(f"bad --image-chunk {chunk}: must be >= 1")
    key_fields = {
        "schema": schema.SCHEMA_VERSION,
        "model_spec": lm.spec,
        "weights_hash": lm.weights_hash,
        "random_weights": bool(params.random_weights),
        "images": source.fingerprint,
        "layers": layers,
        "image_chunk": chunk,
        "chunking": CHUNKING,
        "thumb": schema.THUMB_SIZE,
        "batch_size": params.batch_size,  # batch shapes can change float rounding
        "device": torch.device(params.device).type,
    }
    if neuron_layers:  # only then: a build without neurons keeps its key
        key_fields["neuron_layers"] = neuron_layers
    key = build_key(key_fields)
    staging = store.staging_dir(link, key)
    plan = BuildPlan(params, link, source, lm, layers, chunk, key, staging, weights, d_coord)
    plan.neuron_layers, plan.n_neurons = neuron_layers, d_mlp
    return plan


def build_key(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class BuildResult:
    store: Path
    version: Path | None
    n_images: int
    n_skipped: int
    up_to_date: bool = False
    resumed_chunks: int = 0
    timings: dict = field(default_factory=dict)
    chunks_done: int = 0  # chunks this call computed
    published: bool = True  # False: a shard finished its chunks but others are still missing
    key: str = ""  # the build's staging key
    n_chunks: int = 0
