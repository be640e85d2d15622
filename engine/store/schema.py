"""THE store schema, declared once: every Zarr array and every DuckDB table.

A store version is a folder holding `store.duckdb` (tables below) and `contrib.zarr/` (a Zarr v3
group with the arrays below, dimension names set). The writer (`engine.store`,
`engine.pipeline.build`), the dashboard and the tests all import these declarations; nothing else
spells a table or an array layout.

The arrays hold the complete decomposition of every image's embedding (see
docs/decomposition.md), with the chosen layers' heads in their own coordinates:

    output[i] = Σ_{l, h} coord[i, l, h] @ basis[l, h] + Σ_l attn_bias[l] / std[i]
                + Σ_l mlp[i, l] + Σ_r attn_rest[i, r] + embed[i] + ln_bias
                [+ Σ_l attn_bias_image[i, l] + pool_mlp[i]]     (attention-pooled towers)

(`l` over the stored layers, `r` over `rest_layers`, fp16 rounding of the per-image terms;
`python -m engine verify --store S` checks it). A store of an attention-pooled tower (SigLIP,
`StoreMeta.pooling == "map"`) holds every head in ONE shared basis `basis[0, 0]` of d_coord
(= d_embed) coordinates, std = 1, attn_bias = 0 and the two pooled-only arrays. Arrays whose first dimension is `image` are
written chunk by chunk by a build; the others (`basis`, `rank`, `attn_bias`, `ln_bias`) depend only
on the weights and are written once. `coord` is chunked for the main read, one (layer, head)
over all images: inner chunks `(image_chunk, 1, 1, d_head)` packed into shards
`(image_chunk, layer, head, d_head)`, so a build writes exactly one whole shard per image chunk
(no read-modify-write) and a reader of one head reads one small inner chunk per shard.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

from engine.errors import UserError

STORE_DB = "store.duckdb"
STORE_ZARR = "contrib.zarr"
# 2: heads in coordinates (coord + basis) and the complete decomposition; 1: head_out [.., d_embed]
SCHEMA_VERSION = 2
THUMB_SIZE = 64  # thumbnails are letterboxed to [THUMB_SIZE, THUMB_SIZE, 3]
DEFAULT_LAST_LAYERS = 4
MAX_IMAGE_CHUNK = 4096
CHUNK_BUDGET = 64 * 2**20  # bytes of one image chunk of all per-image arrays, kept in RAM

ALL = -1  # a chunk/shard extent meaning "the whole dimension"
IMAGE_CHUNK = -2  # a chunk/shard extent meaning "the store's image chunk"


@dataclass(frozen=True)
class ArraySpec:
    """One Zarr array: dimension names, dtype, chunk and shard extents per dimension."""

    name: str
    dims: tuple[str, ...]
    dtype: str
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None
    description: str
    compress: bool = False  # zstd per inner chunk (thumbnails); contributions stay raw
    pooled_only: bool = False  # only in stores of attention-pooled towers (SigLIP)

    def applies(self, sizes: dict[str, int]) -> bool:
        """Does a store of these sizes hold this array? (`sizes["pooled"]`: 1 for a store of an
        attention-pooled tower, 0 for a class-token one.)"""
        return not self.pooled_only or bool(sizes.get("pooled", 0))

    @property
    def per_image(self) -> bool:
        """Rows per image (written chunk by chunk), or a constant of the model (written once)."""
        return self.dims[0] == "image"

    def shape(self, sizes: dict[str, int]) -> tuple[int, ...]:
        """Concrete shape from dimension sizes, e.g. {"image": 5000, "layer": 4, ...}."""
        return tuple(int(sizes[d]) for d in self.dims)

    def _extent(self, spec: tuple[int, ...], sizes: dict[str, int]) -> tuple[int, ...]:
        out = []
        for d, e in zip(self.dims, spec, strict=True):
            if e == ALL:
                out.append(max(1, int(sizes[d])))
            elif e == IMAGE_CHUNK:
                out.append(int(sizes["image_chunk"]))
            else:
                out.append(int(e))
        return tuple(out)

    def chunk_shape(self, sizes: dict[str, int]) -> tuple[int, ...]:
        return self._extent(self.chunks, sizes)

    def shard_shape(self, sizes: dict[str, int]) -> tuple[int, ...] | None:
        return None if self.shards is None else self._extent(self.shards, sizes)

    def bytes_per_image(self, sizes: dict[str, int]) -> int:
        """Bytes one image adds to this array (0 for constants)."""
        if not self.per_image or not self.applies(sizes):
            return 0
        return math.prod(int(sizes[d]) for d in self.dims[1:]) * _itemsize(self.dtype)


def _itemsize(dtype: str) -> int:
    return {"float16": 2, "float32": 4, "int32": 4, "uint8": 1, "int8": 1}[dtype]


# dimension names: layer = a stored layer (its heads in coord), layer_all = every layer of the
# model, rest_layer = a layer whose heads are not stored (summed into attn_rest), d_coord = the
# width of a head's coordinates (d_head for a class-token CLIP tower; the rank of the pool's
# output map, d_embed, for an attention-pooled one), basis_layer / basis_head = layer / head, or
# 1 each when every head shares one basis (`StoreMeta.basis_shared`; pooled towers)
ARRAYS: dict[str, ArraySpec] = {
    a.name: a
    for a in [
        ArraySpec(
            "coord",
            ("image", "layer", "head", "d_coord"),
            "float16",
            (IMAGE_CHUNK, 1, 1, ALL),
            (IMAGE_CHUNK, ALL, ALL, ALL),
            "each stored (layer, head)'s direct contribution in the head's own coordinates: "
            "(value mix / std) @ U S, so that coord @ basis = the contribution to the embedding "
            "(pooled towers: the head's term through the frozen pool, in the shared coordinates)",
        ),
        ArraySpec(
            "basis",
            ("basis_layer", "basis_head", "d_coord", "d_embed"),
            "float32",
            (1, 1, ALL, ALL),
            None,
            "orthonormal rows V^T of the thin SVD U S V^T of each head's map W_O[h] @ P "
            "(rows past the head's rank are zero); pooled towers: ONE basis [1, 1, d_coord, "
            "d_embed] shared by every head, V^T of the pool's output map W_proj^T",
        ),
        ArraySpec(
            "rank",
            ("layer", "head"),
            "int32",
            (ALL, ALL),
            None,
            "rank of each stored head's map (number of non-zero rows of basis)",
        ),
        ArraySpec(
            "attn_bias",
            ("layer", "d_embed"),
            "float32",
            (ALL, ALL),
            None,
            "out_proj bias of each stored layer through ln_post's linear part and proj "
            "(b_out @ P); the image's term is attn_bias / std (pooled towers: zeros, the term "
            "depends on the image and is attn_bias_image)",
        ),
        ArraySpec(
            "ln_bias",
            ("d_embed",),
            "float32",
            (ALL,),
            None,
            "ln_post.bias @ proj, the same for every image (pooled towers: the pool's constant, "
            "final norm's bias through the pool's value map plus the value and proj biases)",
        ),
        ArraySpec(
            "mlp",
            ("image", "layer_all", "d_embed"),
            "float16",
            (IMAGE_CHUNK, ALL, ALL),
            None,
            "each layer's MLP output (class token) through ln_post linearised with std, then proj",
        ),
        ArraySpec(
            "attn_rest",
            ("image", "rest_layer", "d_embed"),
            "float16",
            (IMAGE_CHUNK, ALL, ALL),
            None,
            "attention output (heads summed + out_proj bias) of each layer whose heads are not "
            "stored (the store's rest_layers), through ln_post linearised with std, then proj",
        ),
        ArraySpec(
            "embed",
            ("image", "d_embed"),
            "float16",
            (IMAGE_CHUNK, ALL),
            None,
            "class + position embedding after ln_pre, through ln_post linearised with std, then "
            "proj",
        ),
        ArraySpec(
            "std",
            ("image",),
            "float32",
            (IMAGE_CHUNK,),
            None,
            "ln_post's standard deviation of the final class-token residual (biased variance + "
            "eps): every per-image term is already divided by it (pooled towers: 1; each token's "
            "own deviation is folded into every term through the pool)",
        ),
        ArraySpec(
            "output",
            ("image", "d_embed"),
            "float32",
            (IMAGE_CHUNK, ALL),
            None,
            "image embedding (encode_image, not normalised) = sum of all components",
        ),
        ArraySpec(
            "thumbnail",
            ("image", "y", "x", "rgb"),
            "uint8",
            (1, ALL, ALL, ALL),  # one image per inner chunk: neighbours are read one by one
            (IMAGE_CHUNK, ALL, ALL, ALL),
            f"{THUMB_SIZE}px letterboxed RGB thumbnail",
            compress=True,
        ),
        # ---- the second-order neuron lens (build --neurons; dimensions 0 when not built) ----
        # neuron_layer = a layer whose MLP neurons were built; neuron_path = (neuron layer, later
        # layer, head) triples, each neuron layer's K = later x head paths in row-major order;
        # neuron_k = the largest K; neuron_later = every layer after the first neuron layer
        ArraySpec(
            "neuron_coord",
            ("image", "neuron_path", "neuron"),
            "int8",
            (IMAGE_CHUNK, ALL, ALL),
            None,
            "each neuron's second-order effect in its orthonormal frame Q_n (docs/decomposition.md)"
            ", int8: k = neuron_coord * neuron_scale, effect = k @ Q_n, ||effect|| = ||k||",
        ),
        ArraySpec(
            "neuron_scale",
            ("image", "neuron_layer", "neuron"),
            "float16",
            (IMAGE_CHUNK, ALL, ALL),
            None,
            "int8 scale of each image's neuron coordinates (max |k| / 127)",
        ),
        ArraySpec(
            "neuron_total",
            ("image", "neuron_layer", "d_embed"),
            "float32",
            (IMAGE_CHUNK, ALL, ALL),
            None,
            "the neuron layer's whole write (MLP output minus its bias) through the later heads, "
            "computed without the neuron factorisation: the sum verify --store checks",
        ),
        ArraySpec(
            "neuron_u",
            ("neuron_path", "neuron", "d_head"),
            "float32",
            (ALL, ALL, ALL),
            None,
            "u: gamma * centred w_n in the later head's coordinates (W_v^T U S)",
        ),
        ArraySpec(
            "neuron_basis",
            ("neuron_later", "head", "d_head", "d_embed"),
            "float32",
            (1, 1, ALL, ALL),
            None,
            "orthonormal rows of each later head's map (as basis), for every layer in neuron_later",
        ),
        ArraySpec(
            "neuron_chol",
            ("neuron_layer", "neuron", "neuron_k", "neuron_k"),
            "float32",
            (1, ALL, ALL, ALL),
            None,
            "L_n: Cholesky factor of neuron n's path Gram matrix (zero-padded to neuron_k); "
            "Q_n = L_n^-1 E_n",
        ),
        ArraySpec(
            "attn_bias_image",
            ("image", "layer", "d_embed"),
            "float16",
            (IMAGE_CHUNK, ALL, ALL),
            None,
            "pooled towers: each stored layer's attn.proj bias through the frozen pool (every "
            "token carries it, the pool weighs tokens per image, so the term depends on the image)",
            pooled_only=True,
        ),
        ArraySpec(
            "pool_mlp",
            ("image", "d_embed"),
            "float16",
            (IMAGE_CHUNK, ALL),
            None,
            "pooled towers: the pool's MLP branch mlp(norm(pooled)), nonlinear, ONE term taken "
            "from the model's own forward (what no head's direct effect explains)",
            pooled_only=True,
        ),
    ]
}


def array_sizes(
    n_images: int,
    n_layers: int,
    layers: list[int],
    n_heads: int,
    d_head: int,
    d_embed: int,
    image_chunk: int,
    neuron_layers: list[int] | tuple = (),
    n_neurons: int = 0,
    *,
    d_coord: int | None = None,
    pooled: bool = False,
) -> dict[str, int]:
    """Every dimension size of the schema for a store of these shapes (`neuron_layers`: the
    layers whose `n_neurons` MLP neurons are stored by the second-order lens).

    d_coord: a head's coordinate width (default d_head); pooled: a store of an attention-pooled
    tower (its heads share one basis [1, 1, d_coord, d_embed]; the pooled-only arrays exist)."""
    return {
        **neuron_sizes(n_layers, n_heads, neuron_layers, n_neurons),
        "image": n_images,
        "layer": len(layers),
        "layer_all": n_layers,
        "rest_layer": n_layers - len(layers),
        "head": n_heads,
        "d_head": d_head,
        "d_coord": d_head if d_coord is None else int(d_coord),
        "basis_layer": 1 if pooled else len(layers),
        "basis_head": 1 if pooled else n_heads,
        "pooled": int(bool(pooled)),
        "d_embed": d_embed,
        "y": THUMB_SIZE,
        "x": THUMB_SIZE,
        "rgb": 3,
        "image_chunk": image_chunk,
    }


def neuron_sizes(
    n_layers: int, n_heads: int, neuron_layers: list[int] | tuple, n_neurons: int
) -> dict[str, int]:
    """The neuron lens's dimension sizes (all 0 when no neuron layer is built)."""
    ks = [(n_layers - 1 - int(l)) * n_heads for l in neuron_layers]
    return {
        "neuron_layer": len(ks),
        "neuron": int(n_neurons) if ks else 0,
        "neuron_path": sum(ks),
        "neuron_k": max(ks, default=0),
        "neuron_later": n_layers - 1 - min(neuron_layers) if ks else 0,
    }


def bytes_per_image(sizes: dict[str, int], names=None) -> int:
    """Uncompressed bytes one image adds to the named arrays (default: all; thumbnails raw)."""
    return sum(ARRAYS[n].bytes_per_image(sizes) for n in (names or ARRAYS))


def image_chunk_for(sizes: dict[str, int], n_images: int | None = None) -> int:
    """Images per chunk: a power of two <= MAX_IMAGE_CHUNK keeping one image chunk of every
    per-image array under CHUNK_BUDGET, and no larger than the collection (a small collection is
    one chunk of exactly its size, not padded to a power of two)."""
    per_image = max(1, bytes_per_image(sizes))
    n = max(1, min(MAX_IMAGE_CHUNK, CHUNK_BUDGET // per_image))
    chunk = 2 ** int(math.log2(n))
    if n_images is not None and 0 < n_images < chunk:
        return int(n_images)
    return chunk


# DuckDB tables. Interpretation tables (textspan .. ground_truth): the interpretation engineer may
# add columns there.
TABLES: dict[str, str] = {
    "store_meta": """
CREATE TABLE store_meta (
    key VARCHAR PRIMARY KEY,
    value JSON
)""",
    "models": """
CREATE TABLE models (
    model_spec VARCHAR PRIMARY KEY,
    arch VARCHAR,
    weights_hash VARCHAR,
    random_weights BOOLEAN,
    tokenizer VARCHAR,
    n_layers INTEGER,
    n_heads INTEGER,
    d_model INTEGER,
    d_head INTEGER,
    d_embed INTEGER,
    image_size INTEGER,
    patch_size INTEGER,
    grid INTEGER
)""",
    "images": """
CREATE TABLE images (
    image_id INTEGER PRIMARY KEY,
    path VARCHAR NOT NULL,
    sha256 VARCHAR NOT NULL,
    width INTEGER,
    height INTEGER,
    class VARCHAR
)""",
    "runs": """
CREATE TABLE runs (
    run_id VARCHAR PRIMARY KEY,
    kind VARCHAR NOT NULL,
    model_spec VARCHAR,
    weights_hash VARCHAR,
    code_version VARCHAR,
    image_set_hash VARCHAR,
    parameters JSON,
    timings JSON,
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    skipped_files JSON,
    host VARCHAR
)""",
    "skipped_files": """
CREATE TABLE skipped_files (
    run_id VARCHAR,
    path VARCHAR,
    reason VARCHAR
)""",
    "image_factors": """
CREATE TABLE image_factors (
    image_id INTEGER,
    factor VARCHAR,
    value_code INTEGER,
    value VARCHAR
)""",
    # ---- interpretation tables ----
    "textspan": """
CREATE TABLE textspan (
    layer INTEGER,
    head INTEGER,
    rank INTEGER,
    text VARCHAR,
    category VARCHAR,
    variance_removed DOUBLE,
    score_var DOUBLE,
    bank VARCHAR,
    run_id VARCHAR
)""",
    "head_labels": """
CREATE TABLE head_labels (
    layer INTEGER,
    head INTEGER,
    label VARCHAR,
    labeller VARCHAR,
    votes JSON,
    run_id VARCHAR
)""",
    "scores": """
CREATE TABLE scores (
    metric VARCHAR,
    scope VARCHAR,
    layer_from INTEGER,
    layer_to INTEGER,
    count INTEGER,
    total INTEGER,
    value DOUBLE,
    labeller VARCHAR,
    run_id VARCHAR
)""",
    "llm_cache": """
CREATE TABLE llm_cache (
    prompt_hash VARCHAR PRIMARY KEY,
    model VARCHAR,
    response VARCHAR,
    created_at TIMESTAMP
)""",
    "ground_truth": """
CREATE TABLE ground_truth (
    layer INTEGER,
    head INTEGER,
    factor VARCHAR,
    eta2 DOUBLE,
    is_dominant BOOLEAN,
    label VARCHAR,
    match BOOLEAN,
    run_id VARCHAR
)""",
    "segmentation_scores": """
CREATE TABLE segmentation_scores (
    run_id VARCHAR,
    scope VARCHAR,          -- head | set | aggregate
    name VARCHAR,           -- L{l}H{h}, the set's name, or 'all stored heads'
    layer INTEGER,
    head INTEGER,
    n_images INTEGER,
    pixel_acc DOUBLE,
    miou DOUBLE,
    map DOUBLE,
    pointing DOUBLE,
    source VARCHAR,         -- world:N:seedS or folder:PATH
    text VARCHAR            -- what the maps were taken along (colour, class, or the text)
)""",
    # ---- causal checks (python -m engine ablate) ----
    "zeroshot_classes": """
CREATE TABLE zeroshot_classes (
    task VARCHAR,           -- a world factor, 'folders', or a mapping file's name
    class_index INTEGER,
    class_name VARCHAR,
    prompts JSON,           -- the prompt ensemble embedded
    embedding FLOAT[]       -- normalised mean of the prompts' unit text embeddings [d_embed]
)""",
    "ablation_runs": """
CREATE TABLE ablation_runs (
    run_id VARCHAR PRIMARY KEY,
    spec VARCHAR,
    ablated JSON,           -- the component names the spec resolved to
    tasks_source VARCHAR,
    n_fit INTEGER,          -- images the means were taken over
    n_eval INTEGER,         -- images evaluated (a disjoint split)
    split DOUBLE,
    seed INTEGER,
    random_draws INTEGER,
    result JSON             -- AblationResult.to_dict(): per task and class, random draws
)""",
    "ablation_results": """
CREATE TABLE ablation_results (
    run_id VARCHAR,
    task VARCHAR,
    n_eval INTEGER,
    before DOUBLE,
    after DOUBLE,
    drop DOUBLE,
    random_mean DOUBLE,
    random_sd DOUBLE,
    random_best DOUBLE
)""",
    "head_effects": """
CREATE TABLE head_effects (
    run_id VARCHAR,
    layer INTEGER,
    head INTEGER,
    task VARCHAR,
    before DOUBLE,
    after DOUBLE,
    drop DOUBLE             -- accuracy lost when this head alone is mean-ablated
)""",
    # ---- unit pages (interpret, engine.pipeline.units; engine.store.unit_tables) ----
    "unit_summary": """
CREATE TABLE unit_summary (
    layer INTEGER,
    head INTEGER,
    unit VARCHAR,           -- L{l}H{h}
    n_images INTEGER,
    total_var DOUBLE,       -- the head's total variance over images (trace of its covariance)
    variance_share DOUBLE,  -- total_var / the embedding's total variance
    embed_var_images INTEGER, -- images that variance was taken over (all, or a chunk sample)
    explained DOUBLE,       -- share of the head's variance along its first principal direction
    mean_proj DOUBLE,       -- mean projection on the direction (>= 0 by the sign convention)
    direction FLOAT[],      -- first principal direction, unit, in embedding space [d_embed]
    k INTEGER,              -- top and bottom images kept
    maps VARCHAR,           -- 'computed', or why the per-patch maps are missing
    texts_along JSON,       -- the bank's texts nearest the direction (list), or NULL
    texts_against JSON,     -- ... nearest its opposite
    run_id VARCHAR,
    -- units of both kinds (interpret: heads; interpret --neurons: neurons, engine.pipeline.
    -- neuron_units). A row is named by `unit`; rows written before `kind` existed are heads.
    kind VARCHAR,           -- head | neuron (NULL: head)
    neuron INTEGER,         -- a neuron's index in its layer (head is then NULL), else NULL
    exact_top BOOLEAN,      -- whether the top-k are certainly the store's top-k (heads: true)
    exact_bottom BOOLEAN,   -- ... the bottom-k
    proj_images BIGINT      -- images the projection histogram counts (heads: every image)
)""",
    "unit_examples": """
CREATE TABLE unit_examples (
    layer INTEGER,
    head INTEGER,
    side VARCHAR,           -- top | bottom (along the direction)
    rank INTEGER,           -- 0 = most extreme
    image_id INTEGER,
    projection DOUBLE,      -- head_out . direction
    map FLOAT[],            -- per-patch terms along the direction [grid*grid] row-major, or NULL
    map_cls DOUBLE,         -- the class token's own term (sum(map) + map_cls = projection)
    run_id VARCHAR,
    kind VARCHAR,           -- head | neuron (NULL: head)
    unit VARCHAR,           -- L{l}H{h} | L{l}N{n}
    neuron INTEGER          -- a neuron's index (head NULL), else NULL
)""",
    "unit_histograms": """
CREATE TABLE unit_histograms (
    layer INTEGER,
    head INTEGER,
    quantity VARCHAR,       -- norm (of head_out / a neuron's centred effect) | projection
    bin INTEGER,
    lo DOUBLE,
    hi DOUBLE,
    count BIGINT,
    run_id VARCHAR,
    kind VARCHAR,           -- head | neuron (NULL: head)
    unit VARCHAR,           -- L{l}H{h} | L{l}N{n}
    neuron INTEGER          -- a neuron's index (head NULL), else NULL
)""",
    "unit_visualisations": """
CREATE TABLE unit_visualisations (
    layer INTEGER,
    head INTEGER,
    unit VARCHAR,             -- L{l}H{h}
    image BLOB,               -- PNG, the model's input size
    objective DOUBLE,         -- head_out . direction on the image
    noise_mean DOUBLE,        -- ... on uniform-noise images: mean and standard deviation
    noise_sd DOUBLE,
    init_mean DOUBLE,         -- ... on unoptimised Fourier images (random phases): mean, sd
    init_sd DOUBLE,
    store_max DOUBLE,         -- the highest projection among the stored images
    method VARCHAR,           -- e.g. maco-1/f
    parameters JSON,          -- steps, lr, views, seed
    run_id VARCHAR,
    kind VARCHAR,             -- head | neuron (NULL: head); objective: the unit's effect . direction
    neuron INTEGER            -- a neuron's index (head NULL), else NULL
)""",
    # ---- groups and shortcuts (ablate with a grouped task; python -m engine spurious) ----
    "ablation_groups": """
CREATE TABLE ablation_groups (
    run_id VARCHAR,         -- an ablation_runs or spurious_runs run
    task VARCHAR,
    grp VARCHAR,            -- the group's name, e.g. 'circle / grey' or 'landbird / water'
    count INTEGER,          -- evaluated images in the group
    before DOUBLE,          -- group accuracy before the ablation (NULL: no image)
    after DOUBLE,
    random_mean DOUBLE      -- mean over the random draws
)""",
    "spurious_runs": """
CREATE TABLE spurious_runs (
    run_id VARCHAR PRIMARY KEY,
    task VARCHAR,
    tasks_source VARCHAR,
    spurious_texts JSON,
    core_texts JSON,
    k INTEGER,              -- --repair K (0: ranking only)
    spec VARCHAR,           -- the repair as an ablation spec ('none' without one)
    n_means INTEGER,        -- fitting half: images the means come from
    n_score INTEGER,        -- fitting half: images every choice is scored on
    n_held_out INTEGER,     -- the other half: the repair's check only
    split DOUBLE,
    seed INTEGER,
    result JSON             -- SpuriousRun.to_dict()
)""",
    "spurious_heads": """
CREATE TABLE spurious_heads (
    run_id VARCHAR,
    rank INTEGER,           -- 1 = the largest worst-group gain when removed alone
    layer INTEGER,
    head INTEGER,
    effect DOUBLE,          -- worst-group accuracy after removing it alone minus before
    worst_after DOUBLE,
    mean_after DOUBLE,
    spurious_share DOUBLE,  -- share of the head's variance along the spurious texts
    core_share DOUBLE,
    alignment DOUBLE        -- spurious_share - core_share
)""",
    # ---- the second-order neuron lens (python -m engine interpret --neurons SPEC) ----
    "neuron_stats": """
CREATE TABLE neuron_stats (
    layer INTEGER,
    neuron INTEGER,
    mean_norm DOUBLE,       -- mean centred effect norm over the store's images
    threshold DOUBLE,       -- the top-th largest centred norm: above it an effect is significant
    top_norm DOUBLE,        -- the largest centred norm
    top_images INTEGER[],   -- image_ids of the top images, largest first
    direction FLOAT[],      -- unit first principal direction over the top images [d_embed]
    label VARCHAR,
    labeller VARCHAR,
    run_id VARCHAR
)""",
    "neuron_words": """
CREATE TABLE neuron_words (
    layer INTEGER,
    neuron INTEGER,
    rank INTEGER,
    text VARCHAR,
    category VARCHAR,
    weight DOUBLE,          -- the OMP coefficient (unit text directions, embedding units)
    bank VARCHAR,
    run_id VARCHAR
)""",
    "neuron_ground_truth": """
CREATE TABLE neuron_ground_truth (
    layer INTEGER,
    neuron INTEGER,
    factor VARCHAR,
    eta2 DOUBLE,
    is_dominant BOOLEAN,
    label VARCHAR,
    match BOOLEAN,
    run_id VARCHAR
)""",
    # ---- neuron ablations (python -m engine ablate --ablate L6N12|neurons:L6:...) ----
    "neuron_ablation_runs": """
CREATE TABLE neuron_ablation_runs (
    run_id VARCHAR PRIMARY KEY,
    spec VARCHAR,
    n_ablated INTEGER,      -- neurons the spec resolved to (neuron_ablation_units)
    tasks_source VARCHAR,
    n_fit INTEGER,          -- images the means were taken over
    n_eval INTEGER,         -- images evaluated (a disjoint split)
    split DOUBLE,
    seed INTEGER,
    random_draws INTEGER,
    baseline VARCHAR,       -- ok | overlapping | identical | none (NULL: no draws)
    baseline_note VARCHAR,  -- why the random baseline says little ('' when sound)
    result JSON             -- NeuronAblation.to_dict(): per task and class, random draws
)""",
    "neuron_ablation_results": """
CREATE TABLE neuron_ablation_results (
    run_id VARCHAR,
    task VARCHAR,
    n_eval INTEGER,
    before DOUBLE,
    after DOUBLE,
    drop DOUBLE,            -- accuracy lost when the run's neurons are mean-ablated together
    random_mean DOUBLE,     -- as many random neurons per layer: mean, sd, best accuracy after
    random_sd DOUBLE,
    random_best DOUBLE
)""",
    "neuron_ablation_units": """
CREATE TABLE neuron_ablation_units (
    run_id VARCHAR,
    layer INTEGER,
    neuron INTEGER          -- one neuron the run ablated (n_ablated rows per run)
)""",
}

INTERPRETATION_TABLES = ("textspan", "head_labels", "scores", "ground_truth")
"""What one `interpret` run writes; a new run replaces all of them (`StoreWriter.replace_interpretation`)."""
UNIT_TABLES = ("unit_summary", "unit_examples", "unit_histograms")
"""What `interpret` also writes for the unit pages (`engine.store.unit_tables`): its heads' rows
replaced each run; `interpret --neurons` replaces its layers' neuron rows (`kind = 'neuron'`)."""
UNIT_KINDS = ("head", "neuron")


def table_columns(table: str) -> list[tuple[str, str]]:
    """(name, SQL type) of each column of a declared table, in order (`StoreWriter.upgrade`)."""
    out = []
    for line in TABLES[table].strip().splitlines()[1:-1]:
        line = line.split("--", 1)[0].strip().rstrip(",").strip()
        if line:
            name, typ = line.split(None, 1)
            out.append((name, typ))
    return out


# ---------------------------------------------------------------- typed records of the tables

META_VERSION = 3
"""Version of the `StoreMeta` record. Rows without a `meta_version` key (version 0) were written
before the record was typed. Every older version is read through `META_UPGRADES`, which says
exactly what each step fills in; within a version every field is written and a missing one is an
error. A new field: add it to `StoreMeta`, bump META_VERSION, add the step that says what older
stores hold for it."""


@dataclass(frozen=True)
class StoreMeta:
    """The `store_meta` table as one typed record: facts of the store itself, each persisted once.

    Written whole, from one place (`StoreWriter.set_meta`), by every writer (`finalise`,
    `random_store`); read back with `from_rows` (a missing key is an error naming it). The model's
    facts (spec, weights hash, dimensions) are the `models` table's (`ModelRecord`), not repeated
    here; `rest_layers` is derived from `layers` and the model's `n_layers`, never stored.
    """

    schema_version: int  # the store format (SCHEMA_VERSION when written)
    layers: tuple[int, ...]  # absolute indices of the layers whose heads are stored in `coord`
    image_chunk: int  # images per chunk of the per-image arrays
    thumb_size: int
    images_source: str  # what the images came from (a folder, synthetic:N, random data)
    built_at: str
    run_id: str  # the build's run (its `runs` row)
    code_version: str | None
    build_key: str | None  # the build's staging key (None: not written by `build`)
    factors: tuple[str, ...] | None  # demo-world factor names (None: not a world store)
    image_set_hash: str | None
    n_skipped: int
    reconstruction_error: float | None  # worst per-batch relative error, before fp16 storage
    reconstruction_tolerance: float | None
    random_data: bool  # random arrays (engine.store.random_store), not a model's decomposition
    pooling: str  # how the tower makes its embedding: POOLINGS ("class_token", "map")
    d_coord: int | None  # a head's coordinate width (None: a store before v3, = the model's d_head)
    basis_shared: bool  # every head in ONE basis `basis[0, 0]` (pooled towers), else per head
    # MLP layers whose neurons' second-order effects are stored (build --neurons; () = none)
    neuron_layers: tuple[int, ...] = ()

    def to_rows(self) -> dict[str, str]:
        """key -> JSON value, every field plus `meta_version` (what `store_meta` holds)."""
        rows = {k: json.dumps(list(v) if isinstance(v, tuple) else v)
                for k, v in asdict(self).items()}  # fmt: skip
        rows["meta_version"] = json.dumps(META_VERSION)
        return rows

    @classmethod
    def from_rows(cls, rows: dict[str, str], where: str = "store") -> StoreMeta:
        """The record from `store_meta` rows (key -> JSON text); a missing key is a UserError."""
        values = {k: json.loads(v) for k, v in rows.items()}
        version = int(values.pop("meta_version", 0))
        if version > META_VERSION:
            raise UserError(f"{where}: store metadata version {version} is not readable by this "
                            f"version (reads up to {META_VERSION}); update the engine")  # fmt: skip
        for step in range(version, META_VERSION):
            values = META_UPGRADES[step](values)
        missing = [f.name for f in fields(cls) if f.name not in values]
        if missing:
            raise UserError(f"{where}: store_meta lacks {', '.join(missing)} (a broken store; "
                            "rebuild it)")  # fmt: skip
        return cls(**{f.name: _typed(f.name, values[f.name]) for f in fields(cls)})


# keys written into store_meta before the record was typed, now facts of `models` or derived
LEGACY_META_KEYS = ("model_spec", "arch", "weights_hash", "rest_layers", "n_layers", "n_heads",
                    "d_model", "d_head", "d_embed", "image_size", "patch_size", "grid",
                    "interpretation")  # fmt: skip


def _upgrade_legacy_meta(values: dict) -> dict:
    """Rows of a store written before META_VERSION 1: builds wrote every field but
    `random_data` (they are not random data); `random_store` wrote neither provenance nor
    reconstruction fields (there was no build, no model run)."""
    out = {k: v for k, v in values.items() if k not in LEGACY_META_KEYS}
    random = bool(out.get("random_data", False))
    out["random_data"] = random
    if random:
        for k in ("code_version", "build_key", "factors", "image_set_hash",
                  "reconstruction_error", "reconstruction_tolerance"):  # fmt: skip
            out.setdefault(k, None)
        out.setdefault("n_skipped", 0)
    return out


def _upgrade_neuron_layers(values: dict) -> dict:
    """Version 1 -> 2: stores written before `build --neurons` hold no neuron layer."""
    return {**values, "neuron_layers": values.get("neuron_layers") or []}


def _upgrade_pooling(values: dict) -> dict:
    """Version 2 -> 3: stores before it are all of class-token towers (attention-pooled ones
    were refused): heads in their own bases, d_head wide (the models row's d_head)."""
    out = dict(values)
    out.setdefault("pooling", "class_token")
    out.setdefault("d_coord", None)
    out.setdefault("basis_shared", False)
    return out


META_UPGRADES = {0: _upgrade_legacy_meta, 1: _upgrade_neuron_layers, 2: _upgrade_pooling}
"""version -> the step to version + 1"""

POOLINGS = ("class_token", "map")
"""`StoreMeta.pooling`: the class token through ln_post and proj (CLIP), or timm's attention
pooling (`map`: SigLIP / SigLIP 2, engine.core.pooling)."""

TOKENIZER_SINCE = 3
"""The metadata version from which the models row records `tokenizer`."""
LEGACY_TOKENIZER = "open_clip (not recorded: a store before metadata version 3)"
"""`ModelRecord.tokenizer` of a store written before the models row recorded it (its text
embeddings were open_clip's own tokenizer's: the stand-in did not exist)."""


def meta_version_of(rows: dict[str, str]) -> int:
    """The metadata version of `store_meta` rows (0: before the record was typed)."""
    return int(json.loads(rows["meta_version"])) if "meta_version" in rows else 0


def _typed(name: str, v):
    if name in ("layers", "factors", "neuron_layers"):
        return None if v is None else tuple(str(x) if name == "factors" else int(x) for x in v)
    return v


@dataclass(frozen=True)
class ModelRecord:
    """The `models` table's one row: the model a store was built with (typed; read with
    `from_row`, where a missing or NULL column is an error)."""

    model_spec: str
    arch: str
    weights_hash: str  # `engine.model.load_model`'s hash; `random:seedN` at random init
    random_weights: bool
    tokenizer: str  # what made the store's text embeddings (engine.model.tokenizers)
    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_embed: int
    image_size: int
    patch_size: int
    grid: int

    @classmethod
    def from_row(
        cls, row: dict, where: str = "store", meta_version: int = META_VERSION
    ) -> ModelRecord:
        """`meta_version`: the store's (`meta_version_of`); before TOKENIZER_SINCE the row has
        no tokenizer."""
        if meta_version < TOKENIZER_SINCE and row.get("tokenizer") is None:
            row = {**row, "tokenizer": LEGACY_TOKENIZER}
        missing = [f.name for f in fields(cls) if row.get(f.name) is None]
        if missing:
            raise UserError(f"{where}: the models table lacks {', '.join(missing)} (a broken "
                            "store; rebuild it)")  # fmt: skip
        out = {}
        for f in fields(cls):
            v = row[f.name]
            v = v.item() if hasattr(v, "item") else v
            out[f.name] = {"str": str, "bool": bool, "int": int}[f.type](v)
        return cls(**out)

    def as_row(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RunRecord:
    """One `runs` row: a build, interpret, ablate or segeval run over the store (provenance)."""

    run_id: str
    kind: str
    model_spec: str
    weights_hash: str
    code_version: str
    image_set_hash: str | None
    parameters: dict
    timings: dict
    started_at: str
    finished_at: str
    host: str
    skipped_files: list = ()  # build: the files skipped (also in `skipped_files`)

    def as_row(self) -> dict:
        row = asdict(self)
        for k in ("parameters", "timings", "skipped_files"):
            row[k] = json.dumps(list(row[k]) if k == "skipped_files" else row[k], default=str)
        return row


INTERPRETATION_META_KEY = "interpretation"
"""`store_meta` key of the latest interpretation's parameters (absent before `interpret`)."""

NEURON_TABLES = ("neuron_stats", "neuron_words", "neuron_ground_truth")
"""What one `interpret --neurons` run writes, for its neuron layers (replacing their rows)."""
NEURON_ABLATION_TABLES = (
    "neuron_ablation_runs",
    "neuron_ablation_results",
    "neuron_ablation_units",
)
"""What one `ablate` of neurons appends (`StoreWriter.add_neuron_ablation`); older stores get the
tables on their first recorded neuron ablation."""
