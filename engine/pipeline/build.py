"""Build orchestration: images -> model -> exact decomposition -> store; streaming and resumable.

The work happens in an unpublished staging folder keyed by a hash of (model spec, weights hash,
image-set fingerprint, parameters). Images stream through a bounded thread pool (decode,
preprocess, thumbnail) and are processed in batches; every `image_chunk` good images the chunk's
rows are written to Zarr (one whole shard of head_out) and a chunk record is written atomically.
Only one image chunk is held in memory. Killed at any moment, the same command continues after
the last recorded chunk; the result equals an uninterrupted build's bit for bit. Publication (an
atomic symlink swap, `engine.store.publish`) happens once everything is written.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from engine import store
from engine.core import decompose
from engine.core.layers import parse_layers
from engine.errors import UserError
from engine.model import capture, load_model, vision_weights
from engine.pipeline import provenance
from engine.sources import collection
from engine.store import schema


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


@dataclass
class BuildResult:
    store: Path
    version: Path | None
    n_images: int
    n_skipped: int
    up_to_date: bool = False
    resumed_chunks: int = 0
    timings: dict = field(default_factory=dict)


# ---------------------------------------------------------------- inputs


# ---------------------------------------------------------------- the build


def build_store(params: BuildParams, *, fail_after_chunks: int | None = None) -> BuildResult:
    """Build (or resume, or confirm up to date) the store `params.store`.

    fail_after_chunks: testing hook, raise RuntimeError once that many chunks are recorded.
    """
    t_start = time.perf_counter()
    if params.batch_size < 1:
        raise UserError(f"bad --batch-size {params.batch_size}: must be >= 1")
    if params.workers < 1:
        raise UserError(f"bad --workers {params.workers}: must be >= 1")
    link = Path(params.store)
    if link.name.startswith(".") or not link.name:
        raise UserError(f"bad --store {params.store!r}: the store name must not start with '.'")
    if link.exists() and not link.is_symlink():
        raise UserError(f"{link} exists and is not a store link; choose another --store")

    source = collection.parse_source(params.images)  # bad input fails before the (slow) model load
    lm = load_model(params.model, device=params.device, random_weights=params.random_weights)
    source.image_size = lm.dims.image_size
    dims = lm.dims
    layers_arg = params.layers
    if str(layers_arg) == str(schema.DEFAULT_LAST_LAYERS) and dims.n_layers < int(layers_arg):
        layers_arg = "all"  # the default on a model shallower than it
    layers = parse_layers(layers_arg, dims.n_layers)
    chunk = params.image_chunk or schema.image_chunk_for(len(layers), dims.n_heads, dims.d_embed)
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
        "thumb": schema.THUMB_SIZE,
        "batch_size": params.batch_size,  # batch shapes can change float rounding
        "device": lm.device.type,
    }
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:16]

    if link.is_symlink() and not params.force:
        try:
            with store.open_store(link) as r:
                if r.info.get("build_key") == key:
                    return BuildResult(link, r.version_path, r.info["n_images"], 0, up_to_date=True)
        except UserError:
            pass  # broken link: rebuild

    staging = store.staging_dir(link, key)
    if (staging / schema.STORE_DB).is_file() and not (staging / store.BUILD_DIR).exists():
        version = store.publish(link, staging)  # killed after finishing, before publication
        with store.open_store(version) as r:
            return BuildResult(link, version, r.info["n_images"], r.info.get("n_skipped", 0))
    staging.mkdir(parents=True, exist_ok=True)
    state = store.load_build_state(staging)
    sizes = {
        "image": source.n_items,
        "layer": len(layers),
        "head": dims.n_heads,
        "d_embed": dims.d_embed,
        "y": schema.THUMB_SIZE,
        "x": schema.THUMB_SIZE,
        "rgb": 3,
        "image_chunk": chunk,
    }
    if state is None or not (staging / schema.STORE_ZARR).is_dir():
        store.create_arrays(staging, sizes, attrs={"build_key": key, "layers": layers})
        state = {
            "key": key,
            "started_at": provenance.now(),
            "attempts": 0,
            "run_id": uuid.uuid4().hex,
        }
    state["attempts"] += 1
    store.save_build_state(staging, state)
    arrays = store.open_arrays(staging, mode="r+")

    n_records, cursor, n_done = 0, 0, 0  # resume after the last recorded chunk
    for rec in store.iter_chunk_records(staging):
        n_records, cursor, n_done = n_records + 1, rec["cursor"], n_done + rec["n"]
    resumed = n_records
    weights = vision_weights(lm)
    timings = {"decode_wait_s": 0.0, "compute_s": 0.0, "write_s": 0.0}
    timings["setup_s"] = time.perf_counter() - t_start  # model load, discovery, staging
    t_stream, cpu_stream = time.perf_counter(), time.process_time()
    n_new = 0

    bar = _progress(params.progress, source.n_items, cursor, link.name)
    lookahead = max(2 * params.batch_size, 4 * params.workers)
    with ThreadPoolExecutor(params.workers) as pool:
        stream = collection.ordered_stream(
            pool, lambda i: source.load(i, lm.preprocess), cursor, source.n_items, lookahead
        )
        exhausted = cursor >= source.n_items
        while not exhausted:
            # one image chunk: buffers for `chunk` good images, filled batch by batch
            buf = {
                "head_out": np.zeros((chunk, len(layers), dims.n_heads, dims.d_embed), np.float16),
                "output": np.zeros((chunk, dims.d_embed), np.float32),
                "resid_norm": np.zeros((chunk,), np.float32),
                "ln_scale": np.zeros((chunk,), np.float32),
                "thumbnail": np.zeros((chunk, schema.THUMB_SIZE, schema.THUMB_SIZE, 3), np.uint8),
            }
            metas, skipped, batch, n = [], [], [], 0
            while n + len(batch) < chunk:
                t0 = time.perf_counter()
                try:
                    i, item = next(stream)
                except StopIteration:
                    exhausted = True
                    break
                finally:
                    timings["decode_wait_s"] += time.perf_counter() - t0
                cursor = i + 1
                if bar is not None:
                    bar.update(1)
                if item.reason is not None:
                    skipped.append({"path": item.meta["path"], "reason": item.reason})
                    continue
                batch.append(item)
                if len(batch) == params.batch_size:
                    n = _run_batch(lm, weights, layers, batch, buf, n, timings)
                    metas.extend(it.meta for it in batch)
                    batch = []
            if batch:
                n = _run_batch(lm, weights, layers, batch, buf, n, timings)
                metas.extend(it.meta for it in batch)
            t0 = time.perf_counter()
            if n:
                store.write_rows(arrays, n_done, {k: v[:n] for k, v in buf.items()})
            timings["write_s"] += time.perf_counter() - t0
            if n or skipped:
                record = {"n": n, "cursor": cursor, "images": metas, "skipped": skipped}
                store.save_chunk_record(staging, n_records, record)
                n_records += 1
            n_done += n
            n_new += n
            if cursor >= source.n_items:
                exhausted = True
            if fail_after_chunks is not None and n_records >= fail_after_chunks and not exhausted:
                raise RuntimeError(f"injected failure after {n_records} chunks")
    if bar is not None:
        bar.close()

    if n_done == 0:
        first = next((r["skipped"][0]["reason"] for r in store.iter_chunk_records(staging)), "-")
        raise UserError(
            f"no usable images in {params.images}: all {source.n_items} files were skipped "
            f"(first reason: {first})"
        )
    # ---- finish: shrink arrays to the good images, write the database, publish
    store.resize_images(arrays, n_done)
    stream_s = time.perf_counter() - t_stream  # decode + decompose + write of every chunk
    timings.update(
        stream_s=stream_s,
        images_this_attempt=n_new,
        images_per_s=round(n_new / stream_s, 3) if stream_s > 0 else None,
    )
    timings = {k: round(v, 3) if isinstance(v, float) else v for k, v in timings.items()}
    run_id = state["run_id"]
    meta = {
        "model_spec": lm.spec,
        "arch": lm.arch,
        "weights_hash": lm.weights_hash,
        "layers": layers,
        "n_layers": dims.n_layers,
        "n_heads": dims.n_heads,
        "d_model": dims.d_model,
        "d_head": dims.d_head,
        "d_embed": dims.d_embed,
        "image_size": dims.image_size,
        "thumb_size": schema.THUMB_SIZE,
        "image_chunk": chunk,
        "images_source": source.describe,
        "built_at": provenance.now(),
        "run_id": run_id,
        "code_version": provenance.code_version(),
        "build_key": key,
        "schema_version": schema.SCHEMA_VERSION,
        "factors": list(source.factors) if source.factors else None,
    }
    params_json = {
        "images": params.images,
        "batch_size": params.batch_size,
        "device": params.device,
        "layers": layers,
        "layers_arg": params.layers,
        "random_weights": params.random_weights,
        "workers": params.workers,
        "image_chunk": chunk,
        "build_key": key,
        "attempts": state["attempts"],
    }
    with store.new_database(staging) as db:
        image_set_hash, skipped = _write_images(db, staging, source, run_id)
        meta.update(image_set_hash=image_set_hash, n_skipped=len(skipped))
        db.set_meta(meta)
        db.append("models", _models_row(lm, params))
        run = {
            "run_id": run_id,
            "kind": "build",
            "model_spec": lm.spec,
            "weights_hash": lm.weights_hash,
            "code_version": meta["code_version"],
            "image_set_hash": image_set_hash,
            "parameters": json.dumps(params_json),
            "timings": json.dumps(timings),
            "started_at": pd.Timestamp(state["started_at"]),
            "finished_at": pd.Timestamp(provenance.now()),
            "skipped_files": json.dumps(skipped),
            "host": socket.gethostname(),
        }
        db.append("runs", pd.DataFrame([run]))
    store.finish_staging(staging)
    version = store.publish(link, staging)
    timings["wall_s"] = round(time.perf_counter() - t_start, 3)  # everything, model load included
    timings["finish_s"] = round(timings["wall_s"] - timings["setup_s"] - timings["stream_s"], 3)
    timings["cpu_after_setup_s"] = round(time.process_time() - cpu_stream, 3)  # all threads
    return BuildResult(link, version, n_done, len(skipped), False, resumed, timings)


@torch.no_grad()
def _run_batch(lm, weights, layers, batch, buf, n, timings) -> int:
    """Decompose one batch of items into rows [n, n + len(batch)) of the chunk buffers."""
    t0 = time.perf_counter()
    pixels = torch.stack([it.pixels for it in batch]).to(lm.device)  # [image, 3, H, W]
    cap = capture(lm, pixels, layers)
    dec = decompose.decompose(weights, cap, layers)
    b = len(batch)
    buf["head_out"][n : n + b] = dec.head_out.to(torch.float16).cpu().numpy()
    buf["output"][n : n + b] = dec.output.float().cpu().numpy()
    buf["resid_norm"][n : n + b] = cap.resid.float().norm(dim=-1).cpu().numpy()
    buf["ln_scale"][n : n + b] = dec.resid_std.float().cpu().numpy()
    buf["thumbnail"][n : n + b] = np.stack([it.thumb for it in batch])
    timings["compute_s"] += time.perf_counter() - t0
    return n + b


def _progress(enabled: bool, total: int, initial: int, name: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc=f"build {name}", smoothing=0.1)


def _models_row(lm, params) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "model_spec": lm.spec,
                "arch": lm.arch,
                "weights_hash": lm.weights_hash,
                "random_weights": bool(params.random_weights)
                or lm.weights_hash.startswith("random"),
                **asdict(lm.dims),
            }
        ]
    )


def _write_images(
    db, staging: Path, source: collection.Source, run_id: str
) -> tuple[str, list[dict]]:
    """images, image_factors and skipped_files from the chunk records, one chunk at a time.

    Returns (image-set hash over (path, sha256) in image order, skipped files)."""
    h = hashlib.sha256()
    skipped: list[dict] = []
    offset = 0
    for rec in store.iter_chunk_records(staging):
        imgs = rec["images"]
        ids = np.arange(offset, offset + len(imgs), dtype=np.int32)
        db.append(
            "images",
            pd.DataFrame(
                {
                    "image_id": ids,
                    "path": [m["path"] for m in imgs],
                    "sha256": [m["sha256"] for m in imgs],
                    "width": [m["width"] for m in imgs],
                    "height": [m["height"] for m in imgs],
                    "class": pd.Series([m["class"] for m in imgs], dtype=object),
                }
            ),
        )
        if source.factors and imgs:
            names = list(source.factors)
            codes = np.array([m["codes"] for m in imgs], dtype=np.int64)  # [image, factor]
            values = np.array(
                [[source.factors[f][c] for f, c in zip(names, row, strict=True)] for row in codes],
                dtype=object,
            )  # [image, factor]
            db.append(
                "image_factors",
                pd.DataFrame(
                    {
                        "image_id": np.repeat(ids, len(names)),  # image-major, like reshape(-1)
                        "factor": np.tile(np.array(names, dtype=object), len(imgs)),
                        "value_code": codes.reshape(-1),  # [image * factor]
                        "value": values.reshape(-1),
                    }
                ),
            )
        for m in imgs:
            h.update(f"{m['path']}\t{m['sha256']}\n".encode())
        skipped.extend(rec["skipped"])
        offset += len(imgs)
    db.append(
        "skipped_files",
        pd.DataFrame(
            {
                "run_id": [run_id] * len(skipped),
                "path": [s["path"] for s in skipped],
                "reason": [s["reason"] for s in skipped],
            }
        ),
    )
    return h.hexdigest(), skipped
